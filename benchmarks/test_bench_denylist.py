"""Serving the deny list over gRPC: a 10,000-change delta and a 200,000-card full list.

The server is a real ``clearing serve`` in a subprocess (``test_bench_cards.
ServerProcess``: the same process layout as the card benchmark; the client's
parsing of the reply does not share the server's CPU or event loop). Its
state is built for real, through the journal, untimed:

* the configuration seeds 200,000 cards with a balance of 0 (``[seed]``), so
  none is listed (``min_boarding_balance_fen`` is 0: only a balance below 0
  lists a card), and makes every card type pay the full fare
  (``concession_bp`` 10,000 for all four types);
* one validator rides every card once: 200 packed batches of 1,000 taps over
  one ``StreamTaps`` stream, 200 fen each. Every card goes 0 -> -200 and is
  listed ``LOW_BALANCE``: 200,000 changes, version 200,000, 200,000 entries.

Measured from the client, each a ``GetDenyList`` call with a validator's
token, reply parsed:

(a) a delta of 10,000 changes: ``since_version = version - 10,000``;
(b) the full list (``since_version = 0``), as served from the servicer's
    cache of the packed list, which it keeps for the current version;
(c) the full list on the first call at a new version (the cache is cold):
    before each round one card is taken off the list and put back (a
    ``TopUp`` of 300 fen to +100, then a 200 fen tap to -100), which moves
    the version by 2 and keeps 200,000 entries. Reported beside it: the very
    first ``GetDenyList`` of the run (full, right after the taps), once.

Targets: delta <= 50 ms, full list <= 500 ms (both, cached or not).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time

import pytest
from conftest import Stopwatch, figure, filesystem_of, report, scratch_root
from test_bench_cards import ServerProcess, bench_config

from clearing.codes import TapStatus
from clearing.tools.client import Stubs, bearer, channel, signed_batch, unpack_results
from clearing.v1 import cards_pb2, denylist_pb2
from tests.conftest import TOKENS, VALIDATOR, terminal_key, terminal_token

LISTED = 200_000
FIRST_CARD_ID = 6_300_000_000_000_000
BATCH = 1_000
FARE_FEN = 200
DELTA_CHANGES = 10_000
ROUNDS = 10
UNCACHED_ROUNDS = 6
DELTA_TARGET_MS = 50.0
FULL_TARGET_MS = 500.0
CALL_TIMEOUT_S = 30.0

VALIDATOR_AUTH = bearer(terminal_token(VALIDATOR))
HALL = bearer(TOKENS["hall"])
ENTRY_BYTES = 9  # card_id u64 BE, reason u8


class DenyCity:
    """The server with 200,000 listed cards, and the client that asks it."""

    def __init__(self, root: str) -> None:
        config = bench_config(
            os.path.join(root, "data"),
            seed={"cards": LISTED, "first_card_id": FIRST_CARD_ID, "opening_balance_fen": 0},
            rules={
                "concession_bp": dict.fromkeys(("ADULT", "STUDENT", "ELDERLY", "DISABLED"), 10_000)
            },
        )
        self.root = root
        self.server = ServerProcess(root, config)
        self.loop = asyncio.new_event_loop()
        self.chan = None
        self.stubs: Stubs | None = None
        self.terminal_seq = 0
        self.bumps = 0
        self.build_seconds = 0.0
        self.first_full_seconds = 0.0  # the very first full list: built at this version

    def start(self) -> None:
        self.server.start()
        self.loop.run_until_complete(self._open())

    async def _open(self) -> None:
        self.chan = channel(self.server.target)
        self.stubs = Stubs(self.chan)
        await self.chan.channel_ready()

    def close(self) -> None:
        if self.chan is not None:
            self.loop.run_until_complete(self.chan.close())
        self.loop.close()
        self.server.stop()

    # Building the state (untimed) ---------------------------------------------------------

    def _batch(self, card_ids: range | list[int]):
        now_ms = int(time.time() * 1000) - 60_000  # a minute ago: neither late nor in future
        taps = []
        for card_id in card_ids:
            self.terminal_seq += 1
            taps.append((card_id, self.terminal_seq, FARE_FEN, now_ms, 11))
        return signed_batch(VALIDATOR, terminal_key(VALIDATOR), taps)

    def build(self) -> None:
        started = time.perf_counter()
        batches = [
            self._batch(range(first, first + BATCH))
            for first in range(FIRST_CARD_ID, FIRST_CARD_ID + LISTED, BATCH)
        ]
        self.loop.run_until_complete(self._stream(batches))
        self.build_seconds = time.perf_counter() - started

    async def _stream(self, batches) -> None:
        async def requests():
            for batch in batches:
                yield batch

        call = self.stubs.taps.StreamTaps(requests(), metadata=VALIDATOR_AUTH)
        replies = 0
        async for reply in call:
            statuses = {result[0] for result in unpack_results(reply)}
            assert statuses == {TapStatus.OK}, f"taps not all OK: {statuses}"
            replies += 1
        assert replies == len(batches)

    def bump(self) -> None:
        """Take one card off the list and put it back: version + 2, still 200,000 listed."""
        self.loop.run_until_complete(self._bump())

    async def _bump(self) -> None:
        self.bumps += 1
        card_id = FIRST_CARD_ID + self.bumps
        reply = await self.stubs.cards.TopUp(
            cards_pb2.TopUpRequest(
                request_id=f"bench-deny-{self.bumps}", card_id=card_id, amount_fen=300
            ),
            metadata=HALL,
        )
        assert reply.status == cards_pb2.CardReply.OK, reply.message
        assert reply.card.balance_fen == 300 - FARE_FEN
        result = await self.stubs.taps.SubmitTaps(self._batch([card_id]), metadata=VALIDATOR_AUTH)
        assert unpack_results(result)[0][0] == TapStatus.OK

    # The measured call --------------------------------------------------------------------

    def get(self, since_version: int) -> denylist_pb2.DenyList:
        return self.loop.run_until_complete(
            self.stubs.deny.GetDenyList(
                denylist_pb2.GetDenyListRequest(since_version=since_version),
                metadata=VALIDATOR_AUTH,
                timeout=CALL_TIMEOUT_S,
            )
        )


@pytest.fixture(scope="module")
def city():
    root = tempfile.mkdtemp(prefix="clearing-bench-deny-", dir=scratch_root())
    city = DenyCity(root)
    try:
        city.start()
        city.build()
        started = time.perf_counter()
        _check_full(city.get(0))
        city.first_full_seconds = time.perf_counter() - started
        print(
            f"\n[bench] denylist: server SERVING {city.server.start_seconds:.1f} s after spawn "
            f"(seeding {LISTED:,} cards); {LISTED:,} taps streamed in "
            f"{city.build_seconds:.2f} s (untimed); journal on {filesystem_of(root)}",
            flush=True,
        )
        yield city
    finally:
        city.close()
        shutil.rmtree(root, ignore_errors=True)


def _check_full(reply: denylist_pb2.DenyList) -> None:
    assert reply.full and reply.full_count == LISTED, (reply.full, reply.full_count)
    assert len(reply.packed_full_list) == LISTED * ENTRY_BYTES


def _ms(seconds: float) -> float:
    return seconds * 1_000


def test_denylist_a_delta_10k(benchmark, city):
    version = city.get(0).version
    assert version >= LISTED
    since = version - DELTA_CHANGES
    watch = Stopwatch()
    replies = []

    def target():
        replies.append(watch.time(lambda: city.get(since)))

    city.get(since)  # warm-up
    benchmark.pedantic(target, rounds=ROUNDS, iterations=1)
    reply = replies[-1]
    assert not reply.full and len(reply.changes) == DELTA_CHANGES
    assert [c.version for c in reply.changes] == list(range(since + 1, version + 1))
    median_ms = _ms(watch.median_seconds)
    report(
        f"denylist (a) GetDenyList delta of {DELTA_CHANGES:,} changes",
        figure("denylist", "delta 10k", median_ms, "ms", at_most=DELTA_TARGET_MS),
        figure("denylist", "delta 10k reply", reply.ByteSize(), "bytes"),
        note=f"median of {len(watch.seconds)} calls, min {_ms(min(watch.seconds)):.1f} ms; "
        f"{reply.ByteSize() / DELTA_CHANGES:.1f} bytes a change; version {version:,}",
    )


def test_denylist_b_full_cached(benchmark, city):
    _check_full(city.get(0))  # the cache holds the current version
    watch = Stopwatch()
    replies = []

    def target():
        replies.append(watch.time(lambda: city.get(0)))

    benchmark.pedantic(target, rounds=ROUNDS, iterations=1)
    reply = replies[-1]
    _check_full(reply)
    report(
        f"denylist (b) GetDenyList full list of {LISTED:,} cards, cached",
        figure(
            "denylist", "full 200k cached", _ms(watch.median_seconds), "ms", at_most=FULL_TARGET_MS
        ),
        figure("denylist", "full 200k reply", reply.ByteSize(), "bytes"),
        note=f"median of {len(watch.seconds)} calls, min {_ms(min(watch.seconds)):.1f} ms; "
        f"version {reply.version:,}",
    )


def test_denylist_c_full_uncached(benchmark, city):
    watch = Stopwatch()
    replies = []
    versions = []

    def setup():
        city.bump()

    def target():
        replies.append(watch.time(lambda: city.get(0)))

    benchmark.pedantic(target, setup=setup, rounds=UNCACHED_ROUNDS, iterations=1)
    for reply in replies:
        _check_full(reply)
        versions.append(reply.version)
    assert len(set(versions)) == len(versions), "every round must be at a new version"
    median_ms = _ms(watch.median_seconds)
    report(
        f"denylist (c) GetDenyList full list of {LISTED:,} cards, first call at a new version",
        figure("denylist", "full 200k uncached", median_ms, "ms", at_most=FULL_TARGET_MS),
        figure(
            "denylist",
            "full 200k, very first call",
            _ms(city.first_full_seconds),
            "ms",
            at_most=FULL_TARGET_MS,
        ),
        note=f"median of {len(watch.seconds)} rounds, each the first call after a version bump: "
        f"{', '.join(f'{_ms(s):.0f}' for s in watch.seconds)} ms; the very first call is the "
        "first GetDenyList the server answered after the 200,000 taps",
    )
