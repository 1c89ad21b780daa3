"""Which layer may import which (issue 14, point 2): the rules, in one table, checked over
every module's imports, so the layering cannot erode silently. README, "How it is built",
draws the same picture.

Layers, lowest first; a module may import its own layer and those its row names:

- vocabulary (``clearing``, ``limits``, ``codes``, ``errors``): the names every layer shares.
- core: the ledger core and the summariser, compiled and twin, and their dispatchers.
- domain: the deterministic engine and the state it derives. Core and domain do no I/O:
  no LMDB, gRPC, Prometheus or logging.
- storage: the journal and checkpoints on LMDB, backups, verification.
- runtime: the service that replays, answers and journals; configuration, TLS, metrics.
- settlement: the nightly settlement, from the journal.
- server: the gRPC servicers; they reach the engine through the service, never the core.
- tools: the command line, the client, the demo; ``loadgen`` is a tool outside the package.

Outside ``clearing.core`` nobody imports a twin (compiled or Python) or the gap set: only
the dispatchers (``ledger``, ``summary``) and the summary vector's ``layouts``.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
VOCABULARY = {"clearing", "clearing.limits", "clearing.codes", "clearing.errors"}
EVERY_LAYER = {"vocabulary", "core", "domain", "storage", "runtime", "settlement", "server"}
MAY_IMPORT = {
    "vocabulary": set(),
    "core": {"vocabulary"},
    "domain": {"vocabulary", "core"},
    "storage": {"vocabulary", "domain"},
    "runtime": {"vocabulary", "core", "domain", "storage"},
    "settlement": {"vocabulary", "core", "domain", "storage", "runtime"},
    "server": {"vocabulary", "domain", "runtime", "settlement", "wire"},
    "tools": EVERY_LAYER | {"wire"},
    "loadgen": EVERY_LAYER | {"wire", "tools"},
}
NO_IO = ("lmdb", "grpc", "prometheus_client", "structlog", "socket", "threading", "subprocess")
NO_IO_LAYERS = {"vocabulary", "core", "domain"}
CORE_INSIDES = (
    "clearing.core._ledger", "clearing.core.ledger_py", "clearing.core._summary",
    "clearing.core.summary_py", "clearing.core.terminal_gaps",
)  # fmt: skip


PACKAGES = {"core", "domain", "storage", "runtime", "settlement", "server", "tools", "v1"}


def layer_of(name: str) -> str:
    """The layer of a module, or of a name imported from one (``clearing.codes.TapStatus``)."""
    parts = name.split(".")
    if parts[0] == "loadgen":
        return "loadgen"
    assert parts[0] == "clearing", name
    if len(parts) == 1 or parts[1] not in PACKAGES:
        return "tools" if parts[1:2] == ["__main__"] else "vocabulary"
    return "wire" if parts[1] == "v1" else parts[1]


def _modules() -> dict[str, pathlib.Path]:
    found = {}
    for package in ("clearing", "loadgen"):
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            if not name.startswith("clearing.v1"):  # generated stubs
                found[name] = path
    return found


def _imports(name: str, path: pathlib.Path) -> set[str]:
    """Every module ``name`` imports, anywhere in it but under ``if TYPE_CHECKING``."""
    tree = ast.parse(path.read_text())
    skipped = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for node in ast.walk(block)
    }
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            out.add(base)
            out |= {f"{base}.{alias.name}" for alias in node.names}  # `from clearing import x`
    return out


def _hits(imported: set[str], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(m for m in imported for f in forbidden if m == f or m.startswith(f + "."))


MODULES = _modules()
LAYERS = {name: layer_of(name) for name in MODULES}


def test_a_module_outside_the_layer_packages_is_vocabulary_on_purpose():
    loose = {n for n in MODULES if n.startswith("clearing") and layer_of(n) == "vocabulary"}
    assert loose == VOCABULARY


@pytest.mark.parametrize("name", sorted(MODULES))
def test_a_module_imports_only_the_layers_below_it(name):
    own = LAYERS[name]
    allowed = MAY_IMPORT[own] | {own}
    crossing = sorted(
        f"{imported} ({layer_of(imported)})"
        for imported in _imports(name, MODULES[name])
        if imported.split(".")[0] == "clearing" and layer_of(imported) not in allowed
    )
    assert crossing == [], f"{name} is in {own}, which may import only {sorted(allowed)}"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if LAYERS[n] in NO_IO_LAYERS))
def test_vocabulary_core_and_domain_do_no_io(name):
    assert _hits(_imports(name, MODULES[name]), NO_IO) == []


@pytest.mark.parametrize("name", sorted(n for n in MODULES if LAYERS[n] != "core"))
def test_only_the_core_sees_its_twins(name):
    assert _hits(_imports(name, MODULES[name]), CORE_INSIDES) == []


def test_the_rules_see_imports():
    """The checker itself: it finds plain, from- and relative imports, and would fail."""
    name = "clearing.server.tap_service"
    imported = _imports(name, MODULES[name])
    assert {"grpc", "clearing.runtime.service", "clearing.errors.RequestRejected"} <= imported
    assert layer_of("clearing.core.ledger") not in MAY_IMPORT[LAYERS[name]]
    tree = "from ..storage import journal\nimport clearing.core._ledger\n"
    probe = ROOT / "build" / "layer_probe.py"
    probe.parent.mkdir(exist_ok=True)
    probe.write_text(tree)
    assert _imports("clearing.domain.probe", probe) >= {
        "clearing.storage.journal",
        "clearing.core._ledger",
    }
