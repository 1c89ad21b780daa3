"""requirements/*.txt (the hash locks `make install` and `make install-prod` use) agree
with the pins in pyproject.toml, and the production lock holds no development tool."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENT = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def _name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503 normalisation


def _pins(requirements: list[str]) -> dict[str, str]:
    pins = {}
    for requirement in requirements:
        name, version = requirement.split("==")
        pins[_name(name)] = version
    return pins


def _lock(name: str) -> tuple[dict[str, str], list[str]]:
    """Pinned versions, and the requirements that carry no --hash."""
    pins: dict[str, str] = {}
    unhashed: list[str] = []
    current = None
    for line in (ROOT / "requirements" / name).read_text().splitlines():
        match = REQUIREMENT.match(line)
        if match:
            if current is not None:
                unhashed.append(current)
            current = _name(match.group(1))
            pins[current] = match.group(2)
        elif line.strip().startswith("--hash=sha256:") and current is not None:
            current = None
    if current is not None:
        unhashed.append(current)
    return pins, unhashed


PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
RUNTIME = _pins(PYPROJECT["project"]["dependencies"])
DEV = _pins(PYPROJECT["project"]["optional-dependencies"]["dev"])
BUILD = _pins(PYPROJECT["build-system"]["requires"])


@pytest.mark.parametrize("lock", ["prod.txt", "dev.txt", "build.txt"])
def test_every_locked_requirement_has_a_hash(lock):
    pins, unhashed = _lock(lock)
    assert pins
    assert unhashed == []


@pytest.mark.parametrize(
    ("lock", "wanted"),
    [("prod.txt", RUNTIME), ("dev.txt", {**RUNTIME, **DEV, **BUILD}), ("build.txt", BUILD)],
)
def test_locks_hold_the_pyproject_pins(lock, wanted):
    pins, _ = _lock(lock)
    assert {name: pins.get(name) for name in wanted} == wanted


def test_production_lock_has_no_development_tool():
    prod, _ = _lock("prod.txt")
    tools = (set(DEV) | {"cython", "grpcio-tools", "wheel"}) - set(RUNTIME)
    assert tools & set(prod) == set()
    assert {"pytest", "ruff", "atheris", "hypothesis", "pytest-benchmark"} <= tools


def test_the_three_locks_agree_on_every_version():
    locks = {name: _lock(name)[0] for name in ("prod.txt", "dev.txt", "build.txt")}
    dev = locks["dev.txt"]
    for name in ("prod.txt", "build.txt"):
        assert {k: v for k, v in locks[name].items() if dev.get(k) != v} == {}, name
