"""Which module may import which (issue 14, point 2, the first step): the rules, in one
place, checked over every module's imports, so the layering cannot erode silently.

- The domain (the engine and what it derives, the cores and their twins, entry types,
  codes, limits) does no I/O: no LMDB, gRPC, Prometheus or logging, and nothing of
  storage, configuration files, TLS, the service or the server.
- Servicers reach the engine through the service, never the ledger core or the
  settlement summariser themselves.
- Settlement, metrics and tools read the summary vector's layout
  (``clearing.tapsum_layout``) and call the dispatcher (``clearing.tapsum``), never a
  twin directly.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOMAIN = {
    "clearing.business_day", "clearing.cardbook", "clearing.cards", "clearing.checkpoint_record",
    "clearing.codes", "clearing.core", "clearing.core_py", "clearing.days", "clearing.denylist",
    "clearing.engine", "clearing.entries", "clearing.errors", "clearing.gaps", "clearing.limits",
    "clearing.registry", "clearing.tapsum", "clearing.tapsum_layout", "clearing.tapsum_py",
}  # fmt: skip
NOT_IN_DOMAIN = (
    "lmdb", "grpc", "prometheus_client", "structlog", "clearing.checkpoints", "clearing.journal",
    "clearing.config", "clearing.tls", "clearing.service", "clearing.server",
    "clearing.metrics", "clearing.settlement",
)  # fmt: skip
TWINS = ("clearing.core_py", "clearing._core", "clearing.tapsum_py", "clearing._tapsum")


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


@pytest.mark.parametrize("name", sorted(DOMAIN))
def test_the_domain_does_no_io_and_knows_no_runtime(name):
    assert name in MODULES, f"{name} is listed in DOMAIN but does not exist"
    assert _hits(_imports(name, MODULES[name]), NOT_IN_DOMAIN) == []


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.startswith("clearing.server")))
def test_servicers_do_not_reach_into_the_cores(name):
    forbidden = (*TWINS, "clearing.core", "clearing.tapsum")
    assert _hits(_imports(name, MODULES[name]), forbidden) == []


@pytest.mark.parametrize(
    "name",
    sorted(
        n for n in MODULES if n.startswith(("clearing.settlement", "clearing.metrics", "loadgen"))
    ),
)
def test_readers_of_summaries_use_the_layout_and_the_dispatcher(name):
    assert _hits(_imports(name, MODULES[name]), TWINS) == []


def test_the_rules_see_imports():
    """The checker itself: it finds plain, from- and relative imports."""
    imported = _imports("clearing.server.taps", MODULES["clearing.server.taps"])
    assert {"grpc", "clearing.service", "clearing.errors.RequestRejected"} <= imported
