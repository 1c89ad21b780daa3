"""Differential test: the compiled core must agree with the Python twin, tap for tap.

Hypothesis draws a configuration, a set of cards (some hot-listed, various types
and balances), terminals of every class with effective-dated merchant rules,
then a run of batches over small card-id and sequence pools (so duplicates,
conflicts and unknown cards happen), interleaved with card state changes,
balance adjustments and new rule versions. Both cores get exactly the same
calls; their answers (packed results byte for byte, or the type of the exception
raised) and the resulting state must be identical. Somewhere in the run the
compiled core is replaced by a fresh one restored from its snapshot, which must
not change anything after.

Times, windows and rule dates sit on a coarse grid (``TICK``, with the odd
±1 ms) so that the exact edges of the SPEC's inequalities (a transfer gap equal
to the window, a ride at ``blocked_at + liability``, a tap at a rule's
``effective_from``, a tap at ``now - max_late``) come up often, not by luck.
"""

from __future__ import annotations

import importlib.util

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from clearing.codes import CardState, CardType, ChargedTo, TapStatus, TerminalClass
from clearing.core.ledger import ledger_class
from clearing.core.terminal_gaps import gap_ranges
from clearing.limits import (
    INT64_MAX,
    INT64_MIN,
    RESULT_STRUCT,
    TAP_STRUCT,
    TERMINAL_SEQ_AHEAD_MAX,
    UINT32_MAX,
    UINT64_MAX,
)

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("clearing.core._ledger") is None,
    reason="clearing.core._ledger is not built",
)

NOW = 1_760_000_000_000
TICK = 600_000  # ten minutes: the time grid

CARD_POOL = [1, 2, 3, 4, 5, 6, 7, 8, 0, UINT64_MAX]  # not all of them get issued
AHEAD = TERMINAL_SEQ_AHEAD_MAX
# Small numbers, the first refused on a fresh terminal and beyond: SEQUENCE_TOO_FAR_AHEAD.
SEQ_POOL = [1, 2, 3, 5, 8, 13, AHEAD, AHEAD + 1, 2**63, UINT64_MAX - 1, UINT64_MAX]
ROUTE_POOL = [0, 1, 2, 3, UINT32_MAX]
PARTIES = 4
# The engine's card history and low-balance watch, where the twin has them.
HISTORY = hasattr(ledger_class("python"), "card_taps")

EXTREMES = {  # limits no sane configuration has, where the int64 edges show
    "max_tap_fen": [1, INT64_MAX // 10_000 // 2, INT64_MAX],
    "max_late_ms": [0, -1, INT64_MAX, INT64_MIN],
    "max_clock_skew_ms": [-1, INT64_MAX, INT64_MIN],
    "transfer_window_ms": [-1, INT64_MAX],
    "transfer_discount_fen": [INT64_MAX],
    "liability_window_ms": [-TICK, INT64_MAX, INT64_MIN],
}


def int64(value: int) -> int:
    return max(INT64_MIN, min(INT64_MAX, value))


def ticks(draw, low: int, high: int) -> int:
    """A multiple of TICK, now and then off by one millisecond."""
    return draw(st.integers(low, high)) * TICK + draw(st.sampled_from([0, 0, 0, 0, -1, 1]))


@st.composite
def configs(draw) -> dict:
    # Hypothesis favours the first of sampled values and small integers: the
    # ordinary values come first, and zero (which hides a rate) is not the default.
    cfg = {
        "max_tap_fen": draw(st.sampled_from([100_000, 5_000, 200_000])),
        "max_late_ms": draw(st.integers(6, 24)) * TICK,
        "max_clock_skew_ms": draw(st.integers(0, 3)) * TICK,
        "transfer_window_ms": draw(st.integers(1, 6)) * TICK,
        "transfer_discount_fen": draw(st.sampled_from([100, 50, 300, 1, 0])),
        "liability_window_ms": draw(st.integers(1, 6)) * TICK,
        "concession_bp": [
            draw(st.sampled_from([10_000, 5_000, 7_500, 3_333, 1, 0, 20_000])) for _ in range(4)
        ],
        # 0: no bound, as a journal written before it replays (issue 12)
        "terminal_seq_ahead_max": draw(st.sampled_from([AHEAD, AHEAD, 0])),
    }
    if draw(st.sampled_from([False, False, True])):
        for name in draw(st.lists(st.sampled_from(sorted(EXTREMES)), min_size=1, max_size=2)):
            cfg[name] = draw(st.sampled_from(EXTREMES[name]))
    return cfg


# How a tap's time is drawn, per terminal class (Hypothesis favours the first).
TIME_KINDS = {
    TerminalClass.VALIDATOR: ["near"] * 3
    + ["transfer"] * 3
    + ["liability"] * 2
    + ["limit", "wild"],
    TerminalClass.POS: ["near"] * 4 + ["rule"] * 4 + ["limit", "wild"],
    TerminalClass.BILLING: ["near"] * 6 + ["limit"] * 2 + ["wild"] * 2,
}


def occurred_at(
    draw, kinds: list[str], now: int, cfg: dict, ride: int | None, blocked: int | None,
    rule_times: list[int],
) -> int:  # fmt: skip
    """A tap time: near now, or at (or 1 ms off) an edge of a SPEC inequality."""
    kind = draw(st.sampled_from(kinds))
    jitter = draw(st.sampled_from([0, -1, 1]))
    if kind == "transfer" and ride is not None:  # the transfer window's far end
        return int64(ride + cfg["transfer_window_ms"] + jitter)
    if kind == "liability" and blocked is not None:  # the liability window's end
        return int64(blocked + cfg["liability_window_ms"] + jitter)
    if kind == "rule" and rule_times:  # a merchant rule version's start
        return draw(st.sampled_from(rule_times)) + jitter
    if kind == "limit":  # the late and the future limits
        edge = draw(st.sampled_from([-cfg["max_late_ms"], cfg["max_clock_skew_ms"]]))
        return int64(now + edge + jitter)
    if kind == "wild":
        return draw(st.sampled_from([INT64_MIN, INT64_MAX, 0, -1]))
    return now - ticks(draw, -1, 12)


def list_amount(draw, cfg: dict) -> int:
    pick = draw(st.integers(0, 5))  # Hypothesis favours 0: make it the ordinary case
    if pick <= 2:
        return draw(st.sampled_from([200, 1_005, 125, 350, 4_999, 100]))
    if pick <= 4:
        return draw(st.integers(1, 5_000))
    limit = cfg["max_tap_fen"]
    return draw(
        st.sampled_from([0, -1, 1, 125, 1_005, limit, int64(limit + 1), INT64_MAX, INT64_MIN])
    )


class Pair:
    """The compiled core and the twin, driven in lockstep."""

    def __init__(self) -> None:
        self.c = ledger_class("c")()
        self.py = ledger_class("python")()
        self.configured: dict = {}
        assert self.c.implementation == "c" and self.py.implementation == "python"

    def call(self, method: str, *args, **kwargs):
        if method == "configure":
            self.configured = kwargs
        outcomes = []
        for ledger in (self.c, self.py):
            try:
                outcomes.append(("returned", getattr(ledger, method)(*args, **kwargs)))
            except (AssertionError, KeyError, OverflowError) as exc:
                outcomes.append(("raised", type(exc)))
        assert outcomes[0] == outcomes[1], (method, args, kwargs, outcomes)
        kind, value = outcomes[0]
        if kind == "raised":
            event(f"{method} raised {value.__name__}")
        elif method == "apply_batch":  # coverage statistics: --hypothesis-show-statistics
            for status, charged_to, duplicate, _, discount, *_ in RESULT_STRUCT.iter_unpack(value):
                event("DUPLICATE" if duplicate else TapStatus(status).name)
                if charged_to == ChargedTo.ISSUER_LOSS:
                    event("OK charged to ISSUER_LOSS")
                if status == TapStatus.OK and discount > 0:
                    event("OK with a discount")
        elif method == "take_low_balance_crossings" and value:
            event("a card fell below the boarding minimum")
        return outcomes[0]

    def restore_c(self) -> None:
        blob = self.c.snapshot()
        fresh = ledger_class("c")()
        # As Engine.restore: the journaled configuration first (terminal_seq_ahead_max
        # is not in a snapshot), then the snapshot.
        fresh.configure(**self.configured)
        fresh.restore(blob)
        assert fresh.snapshot() == blob
        self.c = fresh

    def check_state(self, terminals: list[int]) -> None:
        for card_id in CARD_POOL:
            self.call("card", card_id)
        for terminal_id in terminals:
            self.call("terminal_status", terminal_id)
            self.call("terminal_seqs", terminal_id)
            self.call("terminal_gaps", terminal_id, 1_000)
            gaps = self.py.terminal_gaps(terminal_id, 1_000)  # the ranges are the scan's
            assert gaps == gap_ranges(self.py.terminal_seqs(terminal_id), 1_000)
        self.call("card_count")
        self.call("tap_record_count")
        self.call("total_balance_fen")
        if HISTORY:
            for card_id in CARD_POOL:
                for limit in (1, 3, 1_000, -1):
                    self.call("card_taps", card_id, limit)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_compiled_core_matches_python_twin(data):
    draw = data.draw
    pair = Pair()
    cfg = draw(configs(), label="config")
    pair.call("configure", **cfg)
    floors = [0, 500, -300, 5_000, INT64_MIN, INT64_MAX]
    if HISTORY:
        pair.call("set_min_boarding_balance", draw(st.sampled_from(floors)))
    now = NOW
    # Times that the edges are measured from, learnt from the calls and results.
    last_ride: dict[int, int] = {}
    blocked_at: dict[int, int] = {}
    rule_times: dict[int, list[int]] = {}  # party -> effective_from of its versions

    # Cards: a few ids stay unissued, so that UNKNOWN_CARD happens.
    issued = draw(st.lists(st.sampled_from(CARD_POOL), unique=True, min_size=5), label="cards")
    for card_id in issued:
        card_type = draw(st.sampled_from(list(CardType)))
        pair.call("issue_card", card_id, card_type, draw(st.integers(0, 5_000)))
        funds = draw(st.one_of(*[st.integers(-500, 100_000)] * 9, st.just(0)))
        pair.call("adjust_balance", card_id, funds)
        state = draw(st.sampled_from([CardState.ACTIVE] * 3 + list(CardState)))
        if state != CardState.ACTIVE:
            blocked = now - ticks(draw, -2, 12)
            blocked_at[card_id] = blocked
            pair.call("set_card_state", card_id, state, blocked)

    # Terminals of each class; parties with several effective-dated rule versions.
    terminals: list[int] = []
    terminal_party: dict[int, int] = {}
    terminal_class_of: dict[int, TerminalClass] = {}
    for terminal_class in TerminalClass:
        for k in range(draw(st.integers(1, 3))):
            terminal_id = terminal_class * 1_000 + k if k < 2 else UINT32_MAX - terminal_class
            party = draw(st.integers(0, PARTIES))
            pair.call("set_terminal", terminal_id, terminal_class, party)
            terminals.append(terminal_id)
            terminal_party[terminal_id] = party
            terminal_class_of[terminal_id] = terminal_class
    for party in range(PARTIES):
        for _ in range(draw(st.integers(0, 3))):
            effective_from = draw(st.one_of(st.just(NOW + ticks(draw, -12, 6)), st.just(0)))
            if effective_from:  # "from the epoch" is no edge worth aiming at
                rule_times.setdefault(party, []).append(effective_from)
            bp = draw(st.sampled_from([8_800, 6_800, 9_500, 7_777, 10_000, 0, 12_345]))
            pair.call("add_merchant_rule", party, effective_from, bp)

    journal_seq = 0
    sent_by: dict[int, list[bytes]] = {}
    next_seq: dict[int, int] = {}
    seq0_odds = draw(st.sampled_from([0] * 9 + [30]))  # sometimes a malformed tap slips in
    restore_at = draw(st.integers(0, 14), label="restore_at")
    for step in range(draw(st.integers(3, 14), label="steps")):
        if step == restore_at:
            pair.restore_c()
        action = draw(st.integers(0, 11))
        if action == 9:
            card_id = draw(st.sampled_from(issued))
            state = draw(st.sampled_from(list(CardState)))
            blocked = draw(
                st.one_of(
                    st.just(now - ticks(draw, -2, 12)), st.sampled_from([0, INT64_MAX, INT64_MIN])
                )
            )
            blocked_at[card_id] = blocked
            pair.call("set_card_state", card_id, state, blocked)
            continue
        if action == 10:
            card_id = draw(st.sampled_from(CARD_POOL))
            delta = draw(
                st.one_of(
                    *[st.integers(-20_000, 20_000)] * 9, st.sampled_from([INT64_MAX, INT64_MIN])
                )
            )
            pair.call("adjust_balance", card_id, delta)
            continue
        if action == 8 and HISTORY:
            pair.call("set_min_boarding_balance", draw(st.sampled_from(floors)))
            continue
        if action == 11:
            party, effective_from = draw(st.integers(0, PARTIES)), now - ticks(draw, 0, 12)
            rule_times.setdefault(party, []).append(effective_from)
            pair.call("add_merchant_rule", party, effective_from, 9_000)
            continue
        # A batch over small pools; some taps are re-sent, from this batch or an earlier one.
        terminal_id = draw(st.sampled_from(terminals))
        sent = sent_by.setdefault(terminal_id, [])
        taps: list[bytes] = []
        # The terminal's highest so far (read off the twin, then followed through the
        # batch as the rule goes): the edge of SEQUENCE_TOO_FAR_AHEAD is measured from it.
        highest = pair.py.terminal_status(terminal_id)[0]
        for _ in range(draw(st.integers(1, 25))):
            if (sent or taps) and draw(st.integers(0, 6)) == 6:
                taps.append(draw(st.sampled_from(sent + taps)))
                continue
            pick = draw(st.integers(0, 10))
            if pick <= 7:  # the terminal's next number, now and then after a gap
                seq = next_seq.get(terminal_id, 1) + draw(st.sampled_from([0, 0, 0, 1, 5]))
                next_seq[terminal_id] = seq + 1
            elif pick <= 9:  # an old number (a conflict, or a duplicate by chance) or a huge one
                seq = draw(st.sampled_from(SEQ_POOL))
            else:  # at the edge of the numbers accepted, or just past it
                seq = min(highest + AHEAD + draw(st.sampled_from([0, 1, -1, 2])), UINT64_MAX)
            if seq - highest <= AHEAD or not pair.configured["terminal_seq_ahead_max"]:
                highest = max(highest, seq)
            if seq0_odds and draw(st.integers(0, seq0_odds)) == seq0_odds:
                seq = 0
            validator = terminal_class_of[terminal_id] == TerminalClass.VALIDATOR
            riders = sorted(last_ride) if validator else []
            card_id = draw(st.sampled_from(riders or CARD_POOL))
            if riders and draw(st.booleans()):
                card_id = draw(st.sampled_from(CARD_POOL))
            occurred = occurred_at(
                draw,
                TIME_KINDS[terminal_class_of[terminal_id]],
                now,
                cfg,
                last_ride.get(card_id),
                blocked_at.get(card_id),
                rule_times.get(terminal_party[terminal_id], []),
            )
            route = draw(st.sampled_from(ROUTE_POOL))
            taps.append(TAP_STRUCT.pack(card_id, seq, list_amount(draw, cfg), occurred, route))
        sent.extend(taps)
        packed = b"".join(taps)
        journal_seq += 1
        pair.call("first_invalid_tap", packed)
        _, repeated = pair.call("repeated_results", terminal_id, packed)
        kind, results = pair.call("apply_batch", terminal_id, packed, now, journal_seq)
        if repeated is not None:  # a replayed batch: exactly what applying it answers
            event("a whole batch repeated")
            assert (kind, results) == ("returned", repeated)
        elif kind == "returned" and packed:
            # once applied, the same batch again repeats only if nothing in it conflicted
            _, again = pair.call("repeated_results", terminal_id, packed)
            conflicted = any(
                r[0] == TapStatus.ID_CONFLICT for r in RESULT_STRUCT.iter_unpack(results)
            )
            assert (again is None) == conflicted
            if again is not None:
                assert all(r[2] == 1 for r in RESULT_STRUCT.iter_unpack(again))
        if HISTORY:  # drained after every batch, so none is pending at a restore
            pair.call("take_low_balance_crossings")
        if kind == "returned":
            pair.call("count_statuses", results)
            if terminal_class_of[terminal_id] == TerminalClass.VALIDATOR:
                for t, r in zip(taps, RESULT_STRUCT.iter_unpack(results), strict=True):
                    if r[0] == TapStatus.OK and not r[2]:
                        last_ride[TAP_STRUCT.unpack(t)[0]] = TAP_STRUCT.unpack(t)[3]
        now += ticks(draw, 0, 3)
        if draw(st.integers(0, 3)) == 3:
            pair.check_state(terminals)

    pair.check_state(terminals)
    if draw(st.booleans()):
        pair.restore_c()
        pair.check_state(terminals)
