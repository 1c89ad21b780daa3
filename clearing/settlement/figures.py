"""From a day's raw totals to SPEC §8's figures: party rows, the issuer, invariants.

Pure functions over integers: fees are rounded half-even on daily totals,
every total is checked to fit int64, and the invariants are computed from two
independent sources (the day's entries and the ledger's own day closes).
"""

from __future__ import annotations

from operator import add
from typing import NamedTuple

from clearing.core import layouts as v
from clearing.domain.entries import DayCloseEntry, PartyRecord
from clearing.errors import SettlementError
from clearing.limits import BP_SCALE, INT64_MAX, INT64_MIN
from clearing.settlement.daybook import DayBook

ISSUER_ID = "issuer"
TAP_ROLES = ("OPERATOR", "MERCHANT", "UTILITY")  # paid for taps on their terminals


class SummaryRow(NamedTuple):
    party_id: str
    role: str
    count: int  # type: ignore[assignment]  # shadows tuple.count; read as row.count
    list_fen: int
    discount_fen: int
    gross_fen: int
    fee_fen: int
    net_fen: int
    direction: str
    bank_account: str


class Figures(NamedTuple):
    rows: list[SummaryRow]  # every party and the issuer, by party_id
    issuer: dict[str, int]  # the issuer's breakdown
    totals: list[int]  # Σ of every tap summary vector
    invariants: dict[str, bool]


def half_even(amount_fen: int, bp: int) -> int:
    """Banker's rounding of amount × bp / 10,000 (SPEC §2), for amount ≥ 0."""
    assert amount_fen >= 0 and bp >= 0
    quotient, remainder = divmod(amount_fen * bp, BP_SCALE)
    if 2 * remainder > BP_SCALE or (2 * remainder == BP_SCALE and quotient % 2 == 1):
        quotient += 1
    return quotient


def direction(net_fen: int) -> str:
    """What the issuer does with a party's net: pays it to the party or collects it."""
    return "PAY" if net_fen > 0 else "COLLECT" if net_fen < 0 else "NONE"


def issuer_direction(net_fen: int) -> str:
    """The issuer's own row: it cannot pay or collect from itself. A positive net is
    what it keeps of the day (RECEIVE), a negative one what it must put in (FUND)."""
    return "RECEIVE" if net_fen > 0 else "FUND" if net_fen < 0 else "NONE"


# SPEC §8's formula for the issuer's net, one signed term per line:
# net = float change − hall top-ups + balance refunds − hot-list loss + fees − commission.
ISSUER_NET_TERMS = (
    (+1, "float_change_fen", "Change in card float (closing − opening)"),
    (-1, "hall_topups_fen", "Hall top-ups (cash the issuer already holds)"),
    (+1, "balance_refunds_fen", "Balances refunded at card closing"),
    (-1, "hot_list_loss_fen", "Hot-list loss: rides paid, charged to no card"),
    (+1, "fee_income_fen", "Fees kept from operators, merchants, utilities"),
    (-1, "commission_expense_fen", "Commission paid to agents"),
)
ISSUER_NET_FORMULA = (
    "issuer net = change in float − hall top-ups + balance refunds − hot-list loss"
    " + fee income − commission expense"
)


# The same net as the money the settlement moves: what it collects from agents less
# what it pays operators, merchants and utilities (Σ COLLECT − Σ PAY in payments.csv).
PAYMENTS_NET_FORMULA = (
    "issuer net = agent top-ups − agent commission − gross to operators, merchants and"
    " utilities + their fees = collected − paid"
)


def payments_net_terms(issuer: dict[str, int], tap_gross_fen: int) -> list[tuple[str, int]]:
    """(label, signed fen) of PAYMENTS_NET_FORMULA; they sum to the net by its definition
    (−Σ of the other parties' nets)."""
    return [
        ("Agent top-ups (collected from agents)", issuer.get("agent_topups_fen", 0)),
        ("Commission agents keep", -issuer.get("commission_expense_fen", 0)),
        ("Gross owed to operators, merchants, utilities", -tap_gross_fen),
        ("Fees kept from them", issuer.get("fee_income_fen", 0)),
    ]


def issuer_net_terms(issuer: dict[str, int]) -> list[tuple[str, str, int]]:
    """(label, field, signed fen) per term of the formula; they sum to the net exactly
    when the invariant ``issuer_net_matches_its_breakdown`` holds."""
    return [(label, key, sign * issuer.get(key, 0)) for sign, key, label in ISSUER_NET_TERMS]


def compute(
    book: DayBook, opening: DayCloseEntry | None, closing: DayCloseEntry, bracketed: bool
) -> Figures:
    """``bracketed``: the day's entries lie between its two closes with nothing else."""
    totals = [0] * v.SUMMARY_LEN
    by_party: dict[str, list[int]] = {}
    for (_, party_id, _), vector in book.taps.items():
        totals = list(map(add, totals, vector))
        before = by_party.get(party_id)
        by_party[party_id] = vector if before is None else list(map(add, before, vector))
    unknown = (set(by_party) | set(book.topups)) - set(book.view.parties)
    if unknown:
        raise SettlementError(f"money moved through unknown parties: {sorted(unknown)}")
    rows = [_party_row(p, by_party.get(p.party_id), book) for p in book.view.parties.values()]
    issuer = _issuer(rows, book, totals, opening, closing)
    # The row keeps the gRPC enum's PAY/COLLECT/NONE; summary.csv writes issuer_direction.
    rows.append(_row(ISSUER_ID, "ISSUER", 0, 0, 0, 0, 0, issuer["net_fen"], ""))
    rows.sort(key=lambda row: row.party_id)
    for row in rows:
        _check_int64(row.party_id, *row[2:8])
    _check_int64("issuer", *issuer.values())
    invariants = _invariants(rows, issuer, totals, book, bracketed)
    failed = [name for name, held in invariants.items() if not held]
    if failed:
        raise SettlementError(f"invariants failed: {', '.join(failed)}")
    return Figures(rows, issuer, totals, invariants)


def _row(party_id, role, count, list_fen, discount, gross, fee, net, bank) -> SummaryRow:
    return SummaryRow(
        party_id, role, count, list_fen, discount, gross, fee, net, direction(net), bank
    )


def _party_row(party: PartyRecord, taps: list[int] | None, book: DayBook) -> SummaryRow:
    role, bank = party.role, party.bank_account
    if role in ("AGENT", "HALL"):
        flow = book.topups.get(party.party_id)
        count, topups = (flow.count, flow.fen) if flow else (0, 0)
        if role == "HALL":  # the cash is already the issuer's
            return _row(party.party_id, role, count, 0, 0, topups, 0, 0, bank)
        commission = half_even(topups, party.commission_bp)
        return _row(
            party.party_id, role, count, 0, 0, topups, commission, -(topups - commission), bank
        )
    t = taps or [0] * v.SUMMARY_LEN
    count, gross = t[v.OK_COUNT], t[v.OK_CHARGED]
    if role == "UTILITY":
        fee = count * party.fee_per_bill_fen
    elif role in TAP_ROLES:
        fee = half_even(gross, party.fee_bp)
    else:  # an unknown role holding taps fails the gross invariant below
        fee = 0
    return _row(
        party.party_id, role, count, t[v.OK_LIST], t[v.OK_DISCOUNT], gross, fee, gross - fee, bank
    )


def _issuer(
    rows: list[SummaryRow],
    book: DayBook,
    totals: list[int],
    opening: DayCloseEntry | None,
    closing: DayCloseEntry,
) -> dict[str, int]:
    float_opening = opening.float_fen if opening is not None else 0
    by_role: dict[str, list[SummaryRow]] = {}
    for row in rows:
        by_role.setdefault(row.role, []).append(row)
    return {
        "net_fen": -sum(row.net_fen for row in rows),
        "hall_topups_fen": sum(row.gross_fen for row in by_role.get("HALL", [])),
        "agent_topups_fen": sum(row.gross_fen for row in by_role.get("AGENT", [])),
        "fee_income_fen": sum(r.fee_fen for role in TAP_ROLES for r in by_role.get(role, [])),
        "commission_expense_fen": sum(row.fee_fen for row in by_role.get("AGENT", [])),
        "hot_list_loss_fen": totals[v.LOSS_CHARGED],
        "hot_list_loss_count": totals[v.LOSS_COUNT],
        "deposits_taken_fen": book.deposits_taken.fen,
        "deposits_refunded_fen": book.deposits_refunded.fen,
        "balance_refunds_fen": book.balance_refunds.fen,
        "closing_refunds_paid_fen": book.balance_refunds.fen + book.deposits_refunded.fen,
        "float_opening_fen": float_opening,
        "float_closing_fen": closing.float_fen,
        "float_change_fen": closing.float_fen - float_opening,
    }


def _invariants(
    rows: list[SummaryRow],
    issuer: dict[str, int],
    totals: list[int],
    book: DayBook,
    bracketed: bool,
) -> dict[str, bool]:
    """SPEC §8's checks, each from sources that could disagree."""
    i = issuer
    all_topups = i["hall_topups_fen"] + i["agent_topups_fen"]
    tap_gross = sum(row.gross_fen for row in rows if row.role in TAP_ROLES)
    taps_seen = (
        totals[v.OK_COUNT]
        + totals[v.DUP_COUNT]
        + totals[v.BAD]
        + sum(totals[v.REJECTED : v.REJECTED + v.STATUS_COUNT])
    )
    return {
        "sum_of_nets_is_zero": sum(row.net_fen for row in rows) == 0,
        "issuer_net_matches_its_breakdown": i["net_fen"]
        == sum(fen for *_, fen in issuer_net_terms(i)),
        "float_change_matches_movements": i["float_change_fen"]
        == all_topups - totals[v.CARD_CHARGED] - i["balance_refunds_fen"],
        "gross_equals_charged_of_ok_taps": tap_gross == totals[v.OK_CHARGED],
        "charges_split_between_cards_and_loss": totals[v.OK_CHARGED]
        == totals[v.CARD_CHARGED] + totals[v.LOSS_CHARGED],
        "every_entry_counted_once": sum(book.kinds.values()) == book.last_seq - book.first_seq + 1,
        "every_tap_counted_once": taps_seen == book.tap_count,
        "every_tap_result_consistent": totals[v.BAD] == 0,
        "closes_bracket_the_day": bracketed,
    }


def _check_int64(what: str, *amounts: int) -> None:
    for amount in amounts:
        if not INT64_MIN <= amount <= INT64_MAX:
            raise SettlementError(f"{what}: a total of {amount} fen does not fit int64")
