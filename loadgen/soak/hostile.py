"""Hostile input: mutated tap batches, fuzzed messages for every method, raw bytes.

Only defined statuses may come back, the server's memory must stay bounded,
and the journal afterwards must verify, replay to the same answers and hold
no more entries than requests were accepted.
"""

from __future__ import annotations

import os
import random

import grpc

from clearing.codes import ChargedTo, TapStatus
from clearing.limits import INT64_MAX, INT64_MIN, TAP_STRUCT, UINT64_MAX
from clearing.server.tap_service import batch_mac
from clearing.tools.client import Stubs, bearer, channel, unpack_results
from clearing.v1 import taps_pb2
from loadgen.soak.audit import audit
from loadgen.soak.city import (
    CITY_WORDS,
    FUZZ_TERMINALS,
    FUZZ_TOKENS,
    NOW_MS,
    POS,
    VALIDATOR,
    VALIDATOR_2,
    terminal_key,
    terminal_token,
)
from loadgen.soak.common import CARDS, journal_last_seq, served_balances, soak_city
from loadgen.soak.fuzz import fuzz_methods
from loadgen.soak.record import ClientLog
from loadgen.soak.result import ScenarioResult
from loadgen.soak.server import ServerProcess

DAY_MS = 86_400_000
BATCH_CODES = {  # what a hostile batch may be answered with, besides OK
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
}
AMOUNTS = [0, -1, 1, 200, 99_999, 100_000, 100_001, INT64_MAX, INT64_MIN]
TIMES = [NOW_MS, NOW_MS - DAY_MS, NOW_MS + DAY_MS, NOW_MS - 8 * DAY_MS, 0, INT64_MAX, INT64_MIN]
RSS_GROWTH_BYTES_MAX = 64 * 2**20  # past warm-up; a leak per request shows far above this
HOSTILE_CARDS = [*CARDS[:3], 0, 1, UINT64_MAX]


def _tap(rng: random.Random, seq: int, cards: list[int]) -> bytes:
    card = rng.choice([*cards, rng.randrange(2**64)])
    amount = rng.choice(AMOUNTS) if rng.random() < 0.7 else rng.randrange(INT64_MIN, INT64_MAX)
    occurred = rng.choice(TIMES) + rng.randrange(-400_000, 400_000) if rng.random() < 0.8 else 0
    occurred = max(INT64_MIN, min(INT64_MAX, occurred))  # ±24 h of skew, and far beyond
    return TAP_STRUCT.pack(card, seq, amount, occurred, rng.randrange(2**32))


def hostile_batch(
    rng: random.Random, seqs: dict[int, int], cards: list[int]
) -> tuple[taps_pb2.TapBatch, int]:
    """A mutated batch and the terminal whose token sends it: extreme amounts and
    times, sequence 0 and repeats, torn or one byte over whole taps, MACs that are
    wrong, empty or under another terminal's id."""
    terminal = rng.choice([VALIDATOR, VALIDATOR_2, POS])
    packed = b""
    for _ in range(rng.randrange(0, 6)):
        seqs[terminal] += 1
        seq = 0 if rng.random() < 0.05 else seqs[terminal] - rng.choice([0, 0, 0, 1, 5])
        packed += _tap(rng, max(seq, 0), cards)
    mutation = rng.random()
    if mutation < 0.08 and packed:
        packed = packed[: rng.randrange(len(packed))]  # torn
    elif mutation < 0.12:
        packed += b"\x00"  # one byte over a whole tap
    claimed = terminal if rng.random() < 0.9 else rng.choice([VALIDATOR, POS, 999, 0])
    mac = batch_mac(terminal_key(terminal), claimed, packed)
    if rng.random() < 0.1:
        mac = bytes(rng.randrange(256) for _ in range(rng.choice([0, 16, 32])))
    return taps_pb2.TapBatch(terminal_id=claimed, packed_taps=packed, mac=mac), terminal


def answer_problems(results: list[tuple[int, ...]]) -> list[str]:
    """What is wrong with an accepted batch's answers (empty: nothing)."""
    problems = []
    for status, to, duplicate, charged, discount, _, _ in results:
        if status not in set(TapStatus) or duplicate not in (0, 1):
            problems.append(f"undefined result {status}/{duplicate}")
        elif status == TapStatus.OK and (charged < 0 or discount < 0):
            problems.append(f"OK with negative money {charged}/{discount}")
        elif status != TapStatus.OK and (charged, discount, to) != (
            0,
            0,
            ChargedTo.CHARGED_TO_NONE,
        ):
            problems.append(f"a rejection that charged {charged}")
    return problems


async def send_hostile_batches(stubs: Stubs, cases: int, seed: int) -> tuple[int, list[str]]:
    """(batches accepted, problems) after ``cases`` hostile batches."""
    rng = random.Random(seed)
    seqs = {VALIDATOR: 0, VALIDATOR_2: 0, POS: 0}
    accepted, problems = 0, []
    for _ in range(cases):
        batch, sender = hostile_batch(rng, seqs, HOSTILE_CARDS)
        try:
            reply = await stubs.taps.SubmitTaps(
                batch, metadata=bearer(terminal_token(sender)), timeout=10
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in BATCH_CODES:
                problems.append(f"batch answered {exc.code().name}: {exc.details()}")
            continue
        accepted += 1
        problems += answer_problems(unpack_results(reply))
    return accepted, problems


async def hostile_input(root: str, cases: int, seed: int) -> ScenarioResult:
    result = ScenarioResult("hostile input (fuzz, forged batches)", runs=2 * cases)
    base = os.path.join(root, "hostile")
    server = ServerProcess(base, soak_city(os.path.join(base, "data")))
    await server.start()
    fuzz = {"words": CITY_WORDS, "terminals": FUZZ_TERMINALS}
    await fuzz_methods(server.target, FUZZ_TOKENS, cases=max(50, cases // 10), seed=seed, **fuzz)
    rss_before, seq_before = server.rss_bytes(), await journal_last_seq(server)
    async with channel(server.target) as chan:
        accepted, problems = await send_hostile_batches(Stubs(chan), cases, seed)
    tally = await fuzz_methods(server.target, FUZZ_TOKENS, cases=cases, seed=seed + 1, **fuzz)
    growth = server.rss_bytes() - rss_before
    journaled = await journal_last_seq(server) - seq_before
    result.violations += problems + tally.undefined
    accepted_all = accepted + sum(tally.ok_by_method.values())
    result.check(journaled <= accepted_all, f"{journaled} entries for {accepted_all} accepted")
    result.check(growth < RSS_GROWTH_BYTES_MAX, f"the server grew {growth >> 20} MiB")
    await served_balances(server.target, CARDS[:3])  # still serving
    result.check(server.terminate() == 0, "the stop did not exit 0")
    found = audit(server.data_dir, ClientLog())  # verifies, replays, checks the float
    result.take(found, "after the fuzz")
    result.note = (
        f"{accepted} batches and {sum(tally.ok_by_method.values())} fuzzed calls accepted; "
        f"RSS {growth / 2**20:+.1f} MiB"
    )
    return result
