"""Chooses the batch summariser: compiled ``_tapsum`` or its plain-Python twin.

Follows the ledger core's choice (``CLEARING_CORE``, see ``clearing.core``).
"""

from __future__ import annotations

from clearing.core import Ledger
from clearing.tapsum_layout import SUMMARY_LEN

if Ledger.__module__ == "clearing._core":
    from clearing._tapsum import summarise
else:
    from clearing.tapsum_py import summarise  # type: ignore[assignment]


def summariser(name: str):
    """The ``summarise`` function of one implementation by name (tests run both)."""
    if name == "python":
        from clearing.tapsum_py import summarise as py_summarise

        return py_summarise
    from clearing._tapsum import summarise as c_summarise

    return c_summarise


__all__ = ["SUMMARY_LEN", "summarise", "summariser"]
