"""The settlement files, rendered to bytes deterministically.

Nothing in them depends on when or where the run happened, so running a date
again yields the same bytes: the manifest's SHA-256 (journaled) pins them all.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterable
from operator import add
from typing import Any

from clearing import tapsum_py as v
from clearing.codes import TapStatus
from clearing.settlement.exceptions import ExceptionRow
from clearing.settlement.figures import ISSUER_ID, SummaryRow

FORMAT = "clearing-settlement-1"
SUMMARY_HEADER = (
    "party_id,role,count,list_fen,discount_fen,gross_fen,fee_fen,net_fen,direction,bank_account"
)
PAYMENTS_HEADER = "instruction_id,business_date,party_id,role,direction,amount_fen,bank_account"
EXCEPTIONS_HEADER = "kind,reason,party_id,terminal_id,count,amount_fen,detail"
FILE_NAMES = ("summary.csv", "payments.csv", "exceptions.csv", "report.html", "manifest.json")


def _csv(header: str, rows: Iterable[Iterable[Any]]) -> bytes:
    out = io.StringIO()
    out.write(header + "\n")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerows(rows)
    return out.getvalue().encode()


def summary_csv(rows: list[SummaryRow]) -> bytes:
    total = ["TOTAL", ""] + [sum(row[i] for row in rows) for i in range(2, 8)] + ["", ""]
    return _csv(SUMMARY_HEADER, [*rows, total])


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
            r.bank_account,
        )
        for r in rows
        if r.net_fen != 0 and r.party_id != ISSUER_ID
    ]


def payments_csv(instructions: list[tuple]) -> bytes:
    return _csv(PAYMENTS_HEADER, instructions)


def exceptions_csv(rows: list[ExceptionRow]) -> bytes:
    return _csv(EXCEPTIONS_HEADER, rows)


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
