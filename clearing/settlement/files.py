"""The settlement files, rendered to bytes deterministically.

Nothing in them depends on when or where the run happened, so running a date
again yields the same bytes: the manifest's SHA-256 (journaled) pins them all.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterable, Sequence
from decimal import Decimal
from operator import add
from typing import Any, cast

from clearing.codes import TapStatus
from clearing.core import layouts as v
from clearing.settlement.exception_rows import ExceptionRow, action
from clearing.settlement.figures import ISSUER_ID, TAP_ROLES, SummaryRow, issuer_direction
from clearing.settlement.workbook import Sheet, workbook

# 2: issuer direction RECEIVE/FUND, TOTAL rows by kind, text quoted, yuan and action columns.
FORMAT = "clearing-settlement-2"
SUMMARY_HEADER = (
    "party_id,role,count,list_fen,discount_fen,gross_fen,fee_fen,net_fen,direction,bank_account"
)
PAYMENTS_HEADER = (
    "instruction_id,business_date,party_id,role,direction,amount_fen,amount_yuan,bank_account"
)
EXCEPTIONS_HEADER = "action,kind,reason,party_id,terminal_id,count,amount_fen,amount_yuan,detail"
TOP_UP_ROLES = ("AGENT", "HALL")  # count, gross and fee are top-ups and commission (SPEC §8)


def yuan(fen: int) -> Decimal:
    """Exact CNY with two decimals (5105 -> 51.05): written bare, like the fen beside it."""
    return Decimal(fen).scaleb(-2)


def _csv(header: str, rows: Iterable[Iterable[Any]]) -> bytes:
    # Every text field quoted, numbers bare: a bank account or terminal id is text to
    # any reader that honours quotes (LibreOffice's "quoted field as text", pandas'
    # dtype=str), and a party id like "1e5" is never read as a number.
    out = io.StringIO()
    out.write(header + "\n")
    writer = csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_NONNUMERIC)
    writer.writerows(rows)
    return out.getvalue().encode()


def _subtotal(scope: str, rows: list[SummaryRow]) -> list[Any]:
    sums = [sum(cast(int, row[i]) for row in rows) for i in range(2, 8)]  # the six counts
    return ["TOTAL", scope, *sums, "", ""]


def summary_csv(rows: list[SummaryRow]) -> bytes:
    return _csv(SUMMARY_HEADER, summary_table(rows))


def summary_table(rows: list[SummaryRow]) -> list[list[Any]]:
    """Party rows, then totals that add like with like: TAPS over operators, merchants
    and utilities (taps and their money), TOP_UPS over agents and halls (top-ups and
    commission), and ALL carrying only Σ net over every row, the issuer's included (0)."""
    body = [
        r._replace(direction=issuer_direction(r.net_fen)) if r.party_id == ISSUER_ID else r
        for r in rows
    ]
    totals = [
        _subtotal("TAPS", [r for r in rows if r.role in TAP_ROLES]),
        _subtotal("TOP_UPS", [r for r in rows if r.role in TOP_UP_ROLES]),
        ["TOTAL", "ALL", "", "", "", "", "", sum(r.net_fen for r in rows), "", ""],
    ]
    return [list(r) for r in body] + totals


def payments(business_date: str, rows: list[SummaryRow]) -> list[tuple]:
    """One instruction per non-zero net, from the issuer's side: PAY to, COLLECT from.

    The issuer's own row balances them and is not an instruction.
    """
    compact = business_date.replace("-", "")
    return [
        (
            f"{compact}-{r.party_id}",
            business_date,
            r.party_id,
            r.role,
            r.direction,
            abs(r.net_fen),
            yuan(abs(r.net_fen)),
            r.bank_account,
        )
        for r in rows
        if r.net_fen != 0 and r.party_id != ISSUER_ID
    ]


def payments_csv(instructions: list[tuple]) -> bytes:
    return _csv(PAYMENTS_HEADER, instructions)


def exceptions_csv(rows: list[ExceptionRow]) -> bytes:
    return _csv(EXCEPTIONS_HEADER, exceptions_table(rows))


def exceptions_table(rows: list[ExceptionRow]) -> list[tuple[Any, ...]]:
    """Rows needing action (action REVIEW) come first; terminal ids are written as text."""
    return [
        (
            action(x.kind, x.reason),
            x.kind,
            x.reason,
            x.party_id,
            str(x.terminal_id),
            x.count,
            x.amount_fen,
            yuan(x.amount_fen),
            x.detail,
        )
        for x in rows
    ]


def _with_yuan(name: str, header: str, rows: Iterable[Sequence[Any]]) -> Sheet:
    """The table with a ``*_yuan`` column after each ``*_fen`` one that lacks it."""
    names = header.split(",")
    add = [
        i for i, c in enumerate(names)
        if c.endswith("_fen") and c[:-4] + "_yuan" not in names
    ]  # fmt: skip
    out_names = [
        y for i, c in enumerate(names) for y in ([c, c[:-4] + "_yuan"] if i in add else [c])
    ]
    out_rows = [
        [y for i, v in enumerate(row) for y in ([v, _yuan_or_blank(v)] if i in add else [v])]
        for row in rows
    ]
    return name, out_names, out_rows


def _yuan_or_blank(fen: Any) -> Any:
    return yuan(fen) if isinstance(fen, int) else ""


def workbook_xlsx(
    rows: list[SummaryRow], instructions: list[tuple], exceptions: list[ExceptionRow]
) -> bytes:
    """settlement.xlsx: the three CSVs' rows, typed for people (workbook.py)."""
    tables = (
        ("summary", SUMMARY_HEADER, summary_table(rows)),
        ("payments", PAYMENTS_HEADER, instructions),
        ("exceptions", EXCEPTIONS_HEADER, exceptions_table(exceptions)),
    )
    return workbook([_with_yuan(*table) for table in tables])


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def taps_by_hour(taps: dict[tuple[int, str, str], list[int]]) -> dict[str, list[int]]:
    """OK taps by local hour of occurrence, per terminal class."""
    hours: dict[str, list[int]] = {}
    for (_, _, terminal_class), t in taps.items():
        into = hours.get(terminal_class, [0] * 24)
        hours[terminal_class] = list(map(add, into, t[v.HOURS : v.HOURS + 24]))
    return dict(sorted(hours.items()))


def tap_counts(totals: list[int], tap_count: int) -> dict[str, Any]:
    rejected = {s.name: totals[v.REJECTED + s] for s in TapStatus if s != TapStatus.OK}
    return {
        "taps": tap_count,
        "ok": totals[v.OK_COUNT],
        "rejected": sum(rejected.values()),
        "rejected_by_status": rejected,
        "duplicates": totals[v.DUP_COUNT],
        "late": totals[v.LATE_COUNT],
        "hot_list_loss": totals[v.LOSS_COUNT],
    }


def manifest_json(manifest: dict[str, Any]) -> bytes:
    return (json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()
