"""A settlement in a few lines of text, for the terminal."""

from __future__ import annotations

from clearing.settlement.report import money
from clearing.settlement.runner import Settled


def describe(settled: Settled) -> str:
    m = settled.manifest
    totals, issuer, taps = m["totals"], m["issuer"], m["counts"]["taps"]
    lines = [
        f"business date {settled.business_date}: settled (journal entry {settled.settled_seq})",
        f"  entries      {settled.first_seq}..{settled.last_seq}",
        f"  taps         {taps['taps']:,} ({taps['ok']:,} OK, {taps['rejected']:,} rejected, "
        f"{taps['duplicates']:,} resubmitted, {taps['late']:,} late)",
        f"  gross        {money(totals['gross_fen'])} CNY, fees {money(totals['fee_fen'])}",
        f"  top-ups      {money(totals['topups_fen'])} CNY",
        f"  pay          {money(totals['paid_fen'])} CNY, collect {money(totals['collected_fen'])}",
        f"  float        {money(issuer['float_opening_fen'])} -> "
        f"{money(issuer['float_closing_fen'])} ({money(issuer['float_change_fen'])})",
        f"  issuer net   {money(issuer['net_fen'])} CNY",
        f"  exceptions   {m['counts']['exceptions']:,} rows"
        + _to_review(m["counts"].get("exceptions_to_review")),
        f"  files        {settled.directory}",
        f"  manifest     sha256 {settled.manifest_sha256}",
    ]
    return "\n".join(lines)


def _to_review(count: int | None) -> str:
    # None: a day settled before exceptions were marked for action.
    return "" if count is None else f", {count:,} need action (first in exceptions.csv)"
