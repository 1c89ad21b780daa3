"""Duplicate storm: the same batches and top-ups sent 1–5 times by several clients
at once, some first under a deadline too short to be met and then retried.

Each must be applied exactly once, every answer to it must be the same (bar the
duplicate flag), and the repeats must journal nothing.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections import defaultdict

import grpc

from clearing.tools.client import Stubs, bearer, channel, signed_batch, unpack_results
from clearing.v1 import cards_pb2
from loadgen.soak.audit import audit
from loadgen.soak.city import NOW_MS, TOKENS, VALIDATOR, VALIDATOR_2, terminal_key, terminal_token
from loadgen.soak.common import CARDS, soak_city
from loadgen.soak.record import ClientLog, Standing, comparable
from loadgen.soak.result import ScenarioResult
from loadgen.soak.server import ServerProcess

CLIENTS = 4  # each on its own connection
SENDS_MAX = 5  # each request goes out 1..SENDS_MAX times
IN_FLIGHT_PER_CLIENT = 16
EXPIRED_ODDS = 0.2  # a send first goes out with a deadline it cannot meet
EXPIRED_DEADLINE_SECONDS = 0.001
BATCH_TAPS = 10


def _plan(rng: random.Random, batches: int) -> list[tuple]:
    """("taps", terminal, taps) and ("top_up", request_id, card, amount) items."""
    items: list[tuple] = []
    seqs = {VALIDATOR: 1, VALIDATOR_2: 1}
    for b in range(batches):
        terminal = (VALIDATOR, VALIDATOR_2)[b % 2]
        first = seqs[terminal]
        seqs[terminal] += BATCH_TAPS
        taps = tuple(
            (rng.choice(CARDS), s, rng.choice([200, 150, 100]), NOW_MS, 3)
            for s in range(first, first + BATCH_TAPS)
        )
        items.append(("taps", terminal, taps))
        if b % 3 == 0:
            items.append(("top_up", f"storm-{b}", rng.choice(CARDS), rng.randrange(100, 2_000)))
    return items


async def _send(stubs: Stubs, item: tuple, timeout: float) -> tuple:
    if item[0] == "taps":
        _, terminal, taps = item
        reply = await stubs.taps.SubmitTaps(
            signed_batch(terminal, terminal_key(terminal), taps),
            metadata=bearer(terminal_token(terminal)),
            timeout=timeout,
        )
        return tuple(unpack_results(reply))
    _, request_id, card_id, amount = item
    reply = await stubs.cards.TopUp(
        cards_pb2.TopUpRequest(request_id=request_id, card_id=card_id, amount_fen=amount),
        metadata=bearer(TOKENS["hall"]),
        timeout=timeout,
    )
    return (reply.status, reply.journal_seq, reply.amount_fen, int(reply.duplicate))


async def _client(target: str, sends: list[tuple], answers: dict, rng: random.Random) -> int:
    """Send this client's share; returns how many first went out under an expired deadline."""
    expired = 0
    slots = asyncio.Semaphore(IN_FLIGHT_PER_CLIENT)
    async with channel(target) as chan:
        stubs = Stubs(chan)

        async def one(index: int, item: tuple, expire: bool) -> None:
            nonlocal expired
            async with slots:
                if expire:
                    try:
                        await _send(stubs, item, EXPIRED_DEADLINE_SECONDS)
                    except grpc.aio.AioRpcError as exc:
                        if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                            raise
                        expired += 1
                answers[index].append(await _send(stubs, item, 30.0))

        await asyncio.gather(*(one(i, item, rng.random() < EXPIRED_ODDS) for i, item in sends))
    return expired


async def duplicate_storm(root: str, batches: int, seed: int) -> ScenarioResult:
    result = ScenarioResult("duplicate storm and retries", runs=1)
    rng = random.Random(seed)
    base = os.path.join(root, "storm")
    server = ServerProcess(base, soak_city(os.path.join(base, "data")))
    await server.start()
    server.terminate()
    seq_before = audit(server.data_dir, ClientLog()).last_seq
    items = _plan(rng, batches)
    shares: list[list[tuple]] = [[] for _ in range(CLIENTS)]
    sends = 0
    for index, item in enumerate(items):
        for _ in range(rng.randrange(1, SENDS_MAX + 1)):
            shares[rng.randrange(CLIENTS)].append((index, item))
            sends += 1
    for share in shares:
        rng.shuffle(share)
    answers: dict[int, list[tuple]] = defaultdict(list)
    await server.start()
    expired = await asyncio.gather(
        *(_client(server.target, share, answers, random.Random(seed + n)) for n, share in
          enumerate(shares))
    )  # fmt: skip
    result.check(server.terminate() == 0, "the stop did not exit 0")
    log = _check_answers(items, answers, result)
    found = audit(server.data_dir, log)
    result.take(found, "after the storm")
    result.check(
        found.last_seq - seq_before == len(items),
        f"{found.last_seq - seq_before} entries for {len(items)} distinct requests",
    )
    result.runs = sends
    result.note = f"{len(items)} distinct requests, {sum(expired)} sent first past a deadline"
    return result


def _check_answers(items: list[tuple], answers: dict, result: ScenarioResult) -> ClientLog:
    """Every answer to one request is the same but for the duplicate flag, and at most
    one of them (the application) is not flagged. Returns the log for the audit."""
    log = ClientLog()
    for index, item in enumerate(items):
        got = answers[index]
        if item[0] == "taps":
            same = {tuple(comparable(r) for r in answer) for answer in got}
            fresh = [sum(not r[2] for r in answer) for answer in got]
            result.check(len(same) == 1, f"batch {index} answered {len(same)} ways")
            result.check(sum(fresh) <= len(item[2]), f"batch {index} applied more than once")
            log.batch(item[1], item[2], Standing.ACKED, list(got[0]))
        else:
            same = {answer[:3] for answer in got}
            result.check(len(same) == 1, f"top-up {item[1]} answered {len(same)} ways")
            result.check(sum(not a[3] for a in got) <= 1, f"top-up {item[1]} applied twice")
            log.top_up(item[1], item[2], item[3], Standing.ACKED, got[0][:2])
    return log
