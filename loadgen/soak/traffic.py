"""The soak's two clients, logging every request as acknowledged, refused or unknown.

- a validator streaming batches (``StreamTaps``, several in flight);
- a hall desk topping up cards while a second validator submits batches one
  call at a time, with now and then a batch under a bad MAC (it must be refused).

Both retry, with even odds, what an earlier round left unknown (a terminal
re-sends a batch it has no answer for), and stop at the first call whose
answer was lost: the server is gone.
"""

from __future__ import annotations

import asyncio
import collections
import random
from dataclasses import dataclass, field

import grpc

from clearing.tools.client import Stubs, bearer, channel, signed_batch, unpack_results
from clearing.v1 import cards_pb2
from loadgen.soak.city import NOW_MS, TOKENS, VALIDATOR, VALIDATOR_2, terminal_key, terminal_token
from loadgen.soak.record import ClientLog, Standing, standing_of

CALL_SECONDS_MAX = 10.0  # a call slower than this is an unknown outcome
STREAM_WINDOW_BATCHES = 8  # batches in flight on the stream (group commits form)
UNARY_WORKERS = 3  # concurrent unary callers
BAD_MAC_ODDS = 0.05
TOP_UP_ODDS = 0.35


@dataclass
class Traffic:
    cards: list[int]
    seed: int
    batch_taps: int = 20
    log: ClientLog = field(default_factory=ClientLog)
    next_seq: dict[int, int] = field(default_factory=lambda: {VALIDATOR: 1, VALIDATOR_2: 1})
    top_ups_sent: int = 0
    violations: list[str] = field(default_factory=list)  # what the clients saw go wrong
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def new_batch(self, terminal_id: int) -> list[tuple[int, ...]]:
        first = self.next_seq[terminal_id]
        self.next_seq[terminal_id] = first + self.batch_taps
        return [
            (self.rng.choice(self.cards), seq, 200, NOW_MS, 1 + seq % 7)
            for seq in range(first, first + self.batch_taps)
        ]

    def batches(self, terminal_id: int, stop: asyncio.Event):
        """Unknown batches to retry (each with even odds), then new ones until stopped."""
        for taps in self.log.unknown_batches(terminal_id, self.batch_taps):
            if self.rng.random() < 0.5 and not stop.is_set():
                yield taps
        while not stop.is_set():
            yield self.new_batch(terminal_id)

    def top_up_request(self) -> tuple[str, int, int]:
        unknown = [r for r, t in self.log.top_ups.items() if t.standing == Standing.UNKNOWN]
        if unknown and self.rng.random() < 0.5:
            request_id = self.rng.choice(unknown)
            record = self.log.top_ups[request_id]
            return request_id, record.card_id, record.amount_fen
        self.top_ups_sent += 1
        amount = self.rng.randrange(100, 3_000)
        return f"soak-{self.seed}-{self.top_ups_sent}", self.rng.choice(self.cards), amount

    async def run(self, target: str, stop: asyncio.Event) -> None:
        """Both clients, until ``stop`` or until the server is gone."""
        async with channel(target) as chan:
            stubs = Stubs(chan)
            batches = self.batches(VALIDATOR_2, stop)  # shared: each retry is sent once
            tasks = [stream_client(stubs, self, stop)]
            tasks += [unary_client(stubs, self, batches, stop) for _ in range(UNARY_WORKERS)]
            await asyncio.gather(*tasks)


async def stream_client(stubs: Stubs, traffic: Traffic, stop: asyncio.Event) -> None:
    call = stubs.taps.StreamTaps(metadata=bearer(terminal_token(VALIDATOR)))
    in_flight: collections.deque = collections.deque()
    slots = asyncio.Semaphore(STREAM_WINDOW_BATCHES)
    key = terminal_key(VALIDATOR)

    async def write() -> None:
        for taps in traffic.batches(VALIDATOR, stop):
            await slots.acquire()
            in_flight.append(taps)
            await call.write(signed_batch(VALIDATOR, key, taps))
        await call.done_writing()

    writer = asyncio.create_task(write())
    try:
        async for reply in call:
            traffic.log.batch(VALIDATOR, in_flight.popleft(), Standing.ACKED, unpack_results(reply))
            slots.release()
    except grpc.aio.AioRpcError as exc:
        standing = standing_of(exc.code())
        for taps in in_flight:  # sent, never answered
            traffic.log.batch(VALIDATOR, taps, max(standing, Standing.UNKNOWN))
        in_flight.clear()
    finally:
        for taps in in_flight:  # the stream ended with these unanswered
            traffic.log.batch(VALIDATOR, taps, Standing.UNKNOWN)
        in_flight.clear()
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
        call.cancel()


async def unary_client(stubs: Stubs, traffic: Traffic, batches, stop: asyncio.Event) -> None:
    while not stop.is_set():
        roll = traffic.rng.random()
        if roll < TOP_UP_ODDS:
            alive = await _top_up(stubs, traffic)
        elif roll < TOP_UP_ODDS + BAD_MAC_ODDS:
            alive = await _submit(stubs, traffic, traffic.new_batch(VALIDATOR_2), bad_mac=True)
        else:
            alive = await _submit(stubs, traffic, next(batches), bad_mac=False)
        if not alive:
            return


async def _submit(stubs: Stubs, traffic: Traffic, taps, *, bad_mac: bool) -> bool:
    batch = signed_batch(VALIDATOR_2, terminal_key(VALIDATOR_2), taps)
    if bad_mac:
        batch.mac = bytes(32)
    metadata = bearer(terminal_token(VALIDATOR_2))
    try:
        reply = await stubs.taps.SubmitTaps(batch, metadata=metadata, timeout=CALL_SECONDS_MAX)
    except grpc.aio.AioRpcError as exc:
        standing = standing_of(exc.code())
        traffic.log.batch(VALIDATOR_2, taps, standing)
        return standing == Standing.REFUSED
    if bad_mac:
        traffic.violations.append(f"a batch under a bad MAC was acknowledged: {taps[0][1]}")
    traffic.log.batch(VALIDATOR_2, taps, Standing.ACKED, unpack_results(reply))
    return True


async def _top_up(stubs: Stubs, traffic: Traffic) -> bool:
    request_id, card_id, amount = traffic.top_up_request()
    request = cards_pb2.TopUpRequest(request_id=request_id, card_id=card_id, amount_fen=amount)
    try:
        reply = await stubs.cards.TopUp(
            request, metadata=bearer(TOKENS["hall"]), timeout=CALL_SECONDS_MAX
        )
    except grpc.aio.AioRpcError as exc:
        standing = standing_of(exc.code())
        traffic.log.top_up(request_id, card_id, amount, standing)
        return standing == Standing.REFUSED
    answer = (reply.status, reply.journal_seq)
    traffic.log.top_up(request_id, card_id, amount, Standing.ACKED, answer)
    return True
