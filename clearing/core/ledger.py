"""Chooses the ledger core: the compiled one, or its plain-Python twin.

``CLEARING_CORE=python`` forces the reference twin, ``CLEARING_CORE=c`` insists
on the compiled module; unset, the compiled module is used when it is built.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, cast

from clearing.core.wire import check_wire
from clearing.errors import ConfigError

_choice = os.environ.get("CLEARING_CORE", "").strip().lower()

if TYPE_CHECKING or _choice == "python":
    # Type checkers see the twin: it states the interface both implement (and
    # mypy.stubtest holds the compiled module to its own stub).
    from clearing.core.ledger_py import Ledger
elif _choice in ("", "c", "cython"):
    try:
        from clearing.core._ledger import WIRE, Ledger
    except ImportError as exc:
        if _choice:
            raise ConfigError(
                "CLEARING_CORE=c but clearing.core._ledger is not built: run `make install`"
            ) from exc
        from clearing.core.ledger_py import Ledger
    else:
        check_wire("clearing.core._ledger", WIRE)
else:
    raise ConfigError(f"CLEARING_CORE must be 'c' or 'python', not {_choice!r}")

IMPLEMENTATIONS = ("c", "python")


def ledger_class(name: str) -> type[Ledger]:
    """The Ledger class of one implementation by name (tests run both)."""
    if name == "python":
        from clearing.core.ledger_py import Ledger as PyLedger

        return PyLedger
    from clearing.core._ledger import Ledger as CLedger

    return cast("type[Ledger]", CLedger)


__all__ = ["IMPLEMENTATIONS", "Ledger", "ledger_class"]
