"""Sending a planned day to a server: paced by the day, at a fixed rate, or flat out.

- ``day``: the whole plan, every kind of event at its model time, the day
  compressed into ``duration_s`` (the demo); with ``drive_clock`` the
  server's manual clock follows the day, so taps land on their business day.
- ``rate``: open loop. Validator batches are due at a fixed offered rate of
  taps; each batch's latency runs from the moment it was DUE, so a slow
  server cannot hide its queueing by slowing the sender down.
- ``max``: ``streams`` concurrent StreamTaps streams, each keeping ``window``
  batches in flight; latency from each batch's send.

In ``rate`` and ``max`` single POS and billing taps and card operations go
out on their own open-loop pacers (``pos_rate``, ``ops_rate``).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import NamedTuple

import grpc

from clearing.client import Stubs, bearer
from clearing.server.taps import batch_mac
from clearing.v1 import admin_pb2, cards_pb2, taps_pb2
from loadgen.city import City, Terminal
from loadgen.plan import CardOp, DayPlan, TapBatch
from loadgen.tally import LATENCY_US_MAX, Tally

DAY_MS = 86_400_000
CLOCK_LEAD_MS = 60_000  # day mode: the server clock runs this far ahead of the plan
CLOCK_END_MARGIN_MS = 60_000  # ... but stops this far before the day's end
CALL_TIMEOUT_S = 30.0
# Unary calls in flight on the channel at once. Beyond a few hundred on one HTTP/2
# connection the server answers the excess CANCELLED; real terminals are many clients
# with a call or two each. Waiting here counts in the latency (it runs from the due time).
UNARY_IN_FLIGHT_MAX = 100


class Options(NamedTuple):
    mode: str  # day | rate | max
    duration_s: float
    rate_taps_s: float = 0.0
    streams: int = 8
    window: int = 8
    pos_rate: float = 0.0
    ops_rate: float = 0.0
    drive_clock: bool = False


def latency_us(due: float) -> int:
    """Microseconds since ``due``, clamped to what the histograms hold (an answer
    later than that still counts, as the slowest)."""
    return min(LATENCY_US_MAX, max(1, int((time.perf_counter() - due) * 1e6)))


def signed(terminal: Terminal, batch: TapBatch) -> taps_pb2.TapBatch:
    mac = batch_mac(terminal.key, terminal.terminal_id, batch.packed_taps)
    return taps_pb2.TapBatch(
        terminal_id=terminal.terminal_id, packed_taps=batch.packed_taps, mac=mac
    )


class Lane:
    """One validator's stream in the open-loop modes: batches go out when due,
    answers come back in order and are matched to their due times."""

    def __init__(self, runner: Runner, terminal: Terminal) -> None:
        self.runner, self.terminal = runner, terminal
        self.queue: asyncio.Queue[tuple[TapBatch, float] | None] = asyncio.Queue()
        self.pending: deque[tuple[TapBatch, float]] = deque()
        self.broken = False
        self.task = asyncio.create_task(self._run())

    def send(self, batch: TapBatch, due: float) -> None:
        if self.broken:
            self.runner.tally.failed("STREAM_BROKEN", batch.count)
        else:
            self.queue.put_nowait((batch, due))

    async def _requests(self) -> AsyncIterator[taps_pb2.TapBatch]:
        while (item := await self.queue.get()) is not None:
            self.pending.append(item)
            yield signed(self.terminal, item[0])

    async def _run(self) -> None:
        call = self.runner.stubs.taps.StreamTaps(
            self._requests(), metadata=bearer(self.terminal.token)
        )
        try:
            async for reply in call:
                batch, due = self.pending.popleft()
                self.runner.answered(batch, reply, due)
        except grpc.aio.AioRpcError as exc:
            self.broken = True
            for batch, _ in self.pending:
                self.runner.tally.failed(exc.code().name, batch.count)
            while not self.queue.empty():
                item = self.queue.get_nowait()
                if item is not None:
                    self.runner.tally.failed(exc.code().name, item[0].count)

    async def close(self) -> None:
        self.queue.put_nowait(None)
        await self.task


class Runner:
    def __init__(self, stubs: Stubs, city: City, plan: DayPlan, tally: Tally, opts: Options):
        self.stubs, self.city, self.plan, self.tally, self.opts = stubs, city, plan, tally, opts
        self.terminals = city.terminals
        self.tokens = dict(city.halls) | dict(city.agents)
        self.lanes: dict[int, Lane] = {}
        self.tasks: set[asyncio.Task] = set()
        self.clock_model_ms = -1
        self.unary_gate = asyncio.Semaphore(UNARY_IN_FLIGHT_MAX)
        self.request_prefix = f"loadgen-{plan.base_ms}"

    # Answers ----------------------------------------------------------------------------

    def answered(self, batch: TapBatch, reply: taps_pb2.TapBatchResult, due: float) -> None:
        self.tally.batch_latency.record_value(latency_us(due))
        self.tally.batch(batch.packed_taps, reply.packed_results, reply.journal_seq)

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _single(self, batch: TapBatch, due: float) -> None:
        terminal = self.terminals[batch.terminal_id]
        self.tally.taps_offered += batch.count
        try:
            async with self.unary_gate:
                reply = await self.stubs.taps.SubmitTaps(
                    signed(terminal, batch), metadata=bearer(terminal.token), timeout=CALL_TIMEOUT_S
                )
        except grpc.aio.AioRpcError as exc:
            self.tally.failed(exc.code().name, batch.count, exc.details() or "")
            return
        self.tally.single_latency.record_value(latency_us(due))
        self.tally.batch(batch.packed_taps, reply.packed_results, reply.journal_seq)

    async def _card_op(self, index: int, op: CardOp) -> None:
        async with self.unary_gate:
            await self._card_op_call(index, op)

    async def _card_op_call(self, index: int, op: CardOp) -> None:
        cards = self.stubs.cards
        request_id = f"{self.request_prefix}-{index}"
        metadata = bearer(self.tokens[op.channel])
        try:
            if op.method == "TopUp":
                request = cards_pb2.TopUpRequest(
                    request_id=request_id, card_id=op.card_id, amount_fen=op.amount_fen
                )
                reply = await cards.TopUp(request, metadata=metadata, timeout=CALL_TIMEOUT_S)
                status = cards_pb2.CardReply.Status.Name(reply.status)
                if not reply.duplicate:
                    self.tally.top_up(op.card_id, status, op.amount_fen)
                return
            if op.method == "ReplaceCard":
                request = cards_pb2.ReplaceCardRequest(
                    request_id=request_id, card_id=op.card_id, new_card_id=op.new_card_id
                )
            else:
                request = cards_pb2.CardRequest(request_id=request_id, card_id=op.card_id)
            call = getattr(cards, op.method)
            reply = await call(request, metadata=metadata, timeout=CALL_TIMEOUT_S)
            self.tally.card_ops[f"{op.method}:{cards_pb2.CardReply.Status.Name(reply.status)}"] += 1
        except grpc.aio.AioRpcError as exc:  # applied or not: that card's balance is unknown
            self.tally.failed(exc.code().name, 0, exc.details() or "")
            self.tally.uncertain_cards.add(op.card_id)

    def _lane(self, terminal_id: int) -> Lane:
        lane = self.lanes.get(terminal_id)
        if lane is None:
            lane = self.lanes[terminal_id] = Lane(self, self.terminals[terminal_id])
        return lane

    # Pacing ----------------------------------------------------------------------------

    async def run(self) -> float:
        """Send, wait for every answer; returns the seconds it took."""
        started = time.perf_counter()
        if self.opts.mode == "max":
            await self._flat_out(started)
        elif self.opts.mode == "rate":
            await self._at_rate(started)
        else:
            await self._the_day(started)
        for lane in self.lanes.values():
            await lane.close()
        while self.tasks:  # pacers may still be spawning: wait until nothing is left
            for outcome in await asyncio.gather(*list(self.tasks), return_exceptions=True):
                if isinstance(outcome, BaseException):
                    self.tally.failed(type(outcome).__name__, 0, repr(outcome))
        return time.perf_counter() - started

    async def _until(self, due: float) -> None:
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)

    async def _at_rate(self, started: float) -> None:
        self._side_pacers(started)
        end = started + self.opts.duration_s
        sent = 0
        for batch in self._rate_batches():
            due = started + sent / self.opts.rate_taps_s
            if due >= end:
                break
            await self._until(due)
            self.tally.taps_offered += batch.count
            self._lane(batch.terminal_id).send(batch, due)
            sent += batch.count

    def _rate_batches(self) -> list[TapBatch]:
        """The batches of the busiest validators, in plan order: at least ``streams`` of
        them, and as many more as the offered taps need. (A depot uploads for its buses
        on a few long streams; a stream each for hundreds of buses costs the server more.)"""
        counts: dict[int, int] = {}
        for batch in self.plan.validator_batches:
            counts[batch.terminal_id] = counts.get(batch.terminal_id, 0) + batch.count
        needed = self.opts.rate_taps_s * self.opts.duration_s
        chosen: set[int] = set()
        planned = 0
        for terminal_id in sorted(counts, key=lambda t: (-counts[t], t)):
            if len(chosen) >= self.opts.streams and planned >= needed:
                break
            chosen.add(terminal_id)
            planned += counts[terminal_id]
        return [b for b in self.plan.validator_batches if b.terminal_id in chosen]

    def _side_pacers(self, started: float) -> None:
        end = started + self.opts.duration_s
        if self.opts.pos_rate > 0:
            self._spawn(
                self._pace(
                    self.plan.single_taps,
                    self.opts.pos_rate,
                    started,
                    end,
                    lambda i, b, due: self._single(b, due),
                )
            )
        if self.opts.ops_rate > 0:
            self._spawn(
                self._pace(
                    self.plan.card_ops,
                    self.opts.ops_rate,
                    started,
                    end,
                    lambda i, op, due: self._card_op(i, op),
                )
            )

    async def _pace(
        self, items: list, rate: float, started: float, end: float, make: Callable
    ) -> None:
        for i, item in enumerate(items):
            due = started + i / rate
            if due >= end:
                return
            await self._until(due)
            self._spawn(make(i, item, due))

    async def _flat_out(self, started: float) -> None:
        self._side_pacers(started)
        by_terminal: dict[int, list[TapBatch]] = {}
        for batch in self.plan.validator_batches:
            by_terminal.setdefault(batch.terminal_id, []).append(batch)
        queue = deque(by_terminal.items())
        end = started + self.opts.duration_s
        await asyncio.gather(*(self._stream_worker(queue, end) for _ in range(self.opts.streams)))

    async def _stream_worker(self, queue: deque, end: float) -> None:
        """Take a terminal's batches, pipeline them on its stream, then the next terminal."""
        while queue and time.perf_counter() < end:
            terminal_id, batches = queue.popleft()
            terminal = self.terminals[terminal_id]
            window = asyncio.Semaphore(self.opts.window)
            pending: deque[tuple[TapBatch, float]] = deque()

            async def requests(batches=batches, window=window, pending=pending, terminal=terminal):
                for batch in batches:
                    await window.acquire()
                    if time.perf_counter() >= end:
                        return
                    self.tally.taps_offered += batch.count
                    pending.append((batch, time.perf_counter()))
                    yield signed(terminal, batch)

            call = self.stubs.taps.StreamTaps(requests(), metadata=bearer(terminal.token))
            try:
                async for reply in call:
                    batch, sent = pending.popleft()
                    window.release()
                    self.answered(batch, reply, sent)
            except grpc.aio.AioRpcError as exc:
                for batch, _ in pending:
                    self.tally.failed(exc.code().name, batch.count)

    async def _the_day(self, started: float) -> None:
        """Every event at its model time, the day compressed into ``duration_s``."""
        per_ms = self.opts.duration_s / DAY_MS  # wall seconds per model millisecond
        events = [(b.send_ms, 0, i) for i, b in enumerate(self.plan.validator_batches)]
        events += [(b.send_ms, 1, i) for i, b in enumerate(self.plan.single_taps)]
        events += [(op.send_ms, 2, i) for i, op in enumerate(self.plan.card_ops)]
        events.sort()
        for send_ms, kind, i in events:
            if self.opts.drive_clock:
                await self._drive_clock(send_ms)
            due = started + send_ms * per_ms
            await self._until(due)
            if kind == 0:
                batch = self.plan.validator_batches[i]
                self.tally.taps_offered += batch.count
                self._lane(batch.terminal_id).send(batch, due)
            elif kind == 1:
                self._spawn(self._single(self.plan.single_taps[i], due))
            else:
                self._spawn(self._card_op(i, self.plan.card_ops[i]))

    async def _drive_clock(self, send_ms: int) -> None:
        """Keep the server's manual clock just ahead of the plan (a minute of model time)."""
        if send_ms < self.clock_model_ms:
            return
        # Never past the day's end while it is being sent: late uploads belong to this day
        # (and stamps of entries sent in one millisecond run ahead of the clock: margin).
        self.clock_model_ms = min(send_ms + CLOCK_LEAD_MS, DAY_MS - CLOCK_END_MARGIN_MS)
        await self.stubs.admin.SetClock(
            admin_pb2.SetClockRequest(now_ms=self.plan.base_ms + self.clock_model_ms),
            metadata=bearer(self.city.admin_token),
        )
