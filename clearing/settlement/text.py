"""A settlement in a few lines of text, for the terminal."""

from __future__ import annotations

from clearing.settlement.runner import Settled


def cny(fen: int) -> str:
    """Integer fen as CNY with two decimals, without floats."""
    sign = "-" if fen < 0 else ""
    yuan, cents = divmod(abs(fen), 100)
    return f"{sign}{yuan:,}.{cents:02d}"


def describe(settled: Settled) -> str:
    m = settled.manifest
    totals, issuer, taps = m["totals"], m["issuer"], m["counts"]["taps"]
    lines = [
        f"business date {settled.business_date}: settled (journal entry {settled.settled_seq})",
        f"  entries      {settled.first_seq}..{settled.last_seq}",
        f"  taps         {taps['taps']:,} ({taps['ok']:,} OK, {taps['rejected']:,} rejected, "
        f"{taps['duplicates']:,} resubmitted, {taps['late']:,} late)",
        f"  gross        {cny(totals['gross_fen'])} CNY, fees {cny(totals['fee_fen'])}",
        f"  top-ups      {cny(totals['topups_fen'])} CNY",
        f"  pay          {cny(totals['paid_fen'])} CNY, collect {cny(totals['collected_fen'])}",
        f"  float        {cny(issuer['float_opening_fen'])} -> {cny(issuer['float_closing_fen'])}"
        f" ({cny(issuer['float_change_fen'])})",
        f"  issuer net   {cny(issuer['net_fen'])} CNY",
        f"  exceptions   {m['counts']['exceptions']:,} rows",
        f"  files        {settled.directory}",
        f"  manifest     sha256 {settled.manifest_sha256}",
    ]
    return "\n".join(lines)
