"""Chooses the batch summariser: compiled ``_summary`` or its plain-Python twin.

Follows the ledger core's choice (``CLEARING_CORE``, see ``clearing.core.ledger``).
"""

from __future__ import annotations

from collections.abc import Callable

from clearing.core.layouts import SUMMARY_LEN
from clearing.core.ledger import Ledger
from clearing.core.wire import check_wire

if Ledger.__module__ == "clearing.core._ledger":
    from clearing.core._summary import WIRE, summarise

    check_wire("clearing.core._summary", WIRE)
else:
    from clearing.core.summary_py import summarise


def summariser(name: str) -> Callable[[bytes, bytes, int, int, int], list[int]]:
    """The ``summarise`` function of one implementation by name (tests run both)."""
    if name == "python":
        from clearing.core.summary_py import summarise as py_summarise

        return py_summarise
    from clearing.core._summary import summarise as c_summarise

    return c_summarise


__all__ = ["SUMMARY_LEN", "summarise", "summariser"]
