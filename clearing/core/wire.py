"""The wire's numbers as a compiled module was built with them (its ``WIRE``, declared
once in ``ext/clearing/core/wire.pxi``), checked against ``clearing.limits`` and
``clearing.codes`` when the module is chosen: a build out of step with the Python side
must not rate a single tap."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from clearing import codes, limits
from clearing.errors import ConfigError


def expected_wire() -> dict[str, Any]:
    """What ``WIRE`` must hold: the sizes and codes as the Python side defines them."""
    return {
        "TAP_BYTES": limits.TAP_BYTES,
        "RESULT_BYTES": limits.RESULT_BYTES,
        "STATUS_COUNT": codes.STATUS_COUNT,
        "TapStatus": {s.name: int(s) for s in codes.TapStatus},
        "ChargedTo": {c.name: int(c) for c in codes.ChargedTo},
        "TerminalClass": {c.name: int(c) for c in codes.TerminalClass},
        "CardState": {s.name: int(s) for s in (codes.CardState.ACTIVE, codes.CardState.LOST)},
    }


def check_wire(module: str, wire: Mapping[str, Any]) -> None:
    """ConfigError naming every number ``module`` was built with that differs."""
    expected = expected_wire()
    wrong = [
        f"{name}: built {wire.get(name)!r}, expected {value!r}"
        for name, value in expected.items()
        if wire.get(name) != value
    ]
    wrong += [f"{name}: built but unknown here" for name in wire if name not in expected]
    if wrong:
        raise ConfigError(
            f"{module} was built from other sizes or codes than clearing.limits and "
            f"clearing.codes ({'; '.join(wrong)}): rebuild it (`make install`)"
        )
