"""Sending a planned day to a server: paced by the day, at a fixed rate, or flat out.

- ``day``: the whole plan, every kind of event at its model time, the day
  compressed into ``duration_s`` (the demo); with ``drive_clock`` the
  server's manual clock follows the day, so taps land on their business day.
  How the day is paced so that a seed gives the same answers: ``loadgen.day``.
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

from clearing.server.tap_service import batch_mac
from clearing.tools.client import Stubs, bearer
from clearing.v1 import cards_pb2, taps_pb2
from loadgen.city import City, Terminal
from loadgen.day import DAY_MS as DAY_MS  # re-exported: callers plan days with it
from loadgen.day import run_day
from loadgen.plan import CardOp, DayPlan, TapBatch
from loadgen.tally import LATENCY_US_MAX, Tally

CALL_TIMEOUT_S = 30.0
# Unary calls in flight on the channel at once. Beyond a few hundred on one HTTP/2
# connection the server answers the excess CANCELLED; real terminals are many clients
# with a call or two each. In rate and max modes waiting here counts in the latency (it
# runs from the due time); in day mode latency runs from the send, after this gate.
UNARY_IN_FLIGHT_MAX = 100
PLAN_SHORT_SLACK_S = 0.5  # a plan that ends this much before --duration is reported


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
    """One validator's stream: batches go out when sent, answers come back in order
    and are matched to their due times (open loop) or to their sends (day mode)."""

    def __init__(self, runner: Runner, terminal: Terminal, *, from_send: bool = False) -> None:
        self.runner, self.terminal, self.from_send = runner, terminal, from_send
        self.queue: asyncio.Queue[_Sent | None] = asyncio.Queue()
        self.pending: deque[_Sent] = deque()
        self.broken = False
        self.task = asyncio.create_task(self._run())

    def send(self, batch: TapBatch, due: float, done: asyncio.Future | None = None) -> None:
        if self.broken:
            self.runner.tally.failed("STREAM_BROKEN", batch.count)
            _finish(done)
        else:
            self.queue.put_nowait(_Sent(batch, due, done))

    async def _requests(self) -> AsyncIterator[taps_pb2.TapBatch]:
        while (item := await self.queue.get()) is not None:
            if self.from_send:  # day mode: the latency of this call, from now
                item = item._replace(due=time.perf_counter())
            self.pending.append(item)
            yield signed(self.terminal, item.batch)

    async def _run(self) -> None:
        call = self.runner.stubs.taps.StreamTaps(
            self._requests(), metadata=bearer(self.terminal.token)
        )
        try:
            async for reply in call:
                item = self.pending.popleft()
                self.runner.answered(item.batch, reply, item.due)
                _finish(item.done)
        except grpc.aio.AioRpcError as exc:
            self.broken = True
            for item in self.pending:
                self.runner.tally.failed(exc.code().name, item.batch.count)
                _finish(item.done)
            while not self.queue.empty():
                left = self.queue.get_nowait()
                if left is not None:
                    self.runner.tally.failed(exc.code().name, left.batch.count)
                    _finish(left.done)

    async def close(self) -> None:
        self.queue.put_nowait(None)
        await self.task


class _Sent(NamedTuple):
    batch: TapBatch
    due: float  # perf_counter seconds the latency runs from
    done: asyncio.Future | None  # day mode: set once answered (or failed)


def _finish(done: asyncio.Future | None) -> None:
    if done is not None and not done.done():
        done.set_result(None)


class Runner:
    def __init__(self, stubs: Stubs, city: City, plan: DayPlan, tally: Tally, opts: Options):
        self.stubs, self.city, self.plan, self.tally, self.opts = stubs, city, plan, tally, opts
        self.terminals = city.terminals
        self.tokens = dict(city.halls) | dict(city.agents)
        self.lanes: dict[int, Lane] = {}
        self.tasks: set[asyncio.Task] = set()
        self.unary_gate = asyncio.Semaphore(UNARY_IN_FLIGHT_MAX)
        self.request_prefix = f"loadgen-{plan.base_ms}"
        self.warnings: list[str] = []  # what makes the figures mean less than they seem

    # Answers ----------------------------------------------------------------------------

    def answered(self, batch: TapBatch, reply: taps_pb2.TapBatchResult, due: float) -> None:
        self.tally.batch_latency.record_value(latency_us(due))
        self.tally.batch(batch.packed_taps, reply.packed_results, reply.journal_seq)

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def single(self, batch: TapBatch, due: float, *, from_send: bool = False) -> None:
        terminal = self.terminals[batch.terminal_id]
        self.tally.taps_offered += batch.count
        try:
            async with self.unary_gate:
                if from_send:  # day mode: this call's latency, not the gate's queue
                    due = time.perf_counter()
                reply = await self.stubs.taps.SubmitTaps(
                    signed(terminal, batch), metadata=bearer(terminal.token), timeout=CALL_TIMEOUT_S
                )
        except grpc.aio.AioRpcError as exc:
            self.tally.failed(exc.code().name, batch.count, exc.details() or "")
            return
        self.tally.single_latency.record_value(latency_us(due))
        self.tally.batch(batch.packed_taps, reply.packed_results, reply.journal_seq)

    async def card_op(self, index: int, op: CardOp) -> None:
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
            other: cards_pb2.ReplaceCardRequest | cards_pb2.CardRequest
            if op.method == "ReplaceCard":
                other = cards_pb2.ReplaceCardRequest(
                    request_id=request_id, card_id=op.card_id, new_card_id=op.new_card_id
                )
            else:
                other = cards_pb2.CardRequest(request_id=request_id, card_id=op.card_id)
            call = getattr(cards, op.method)
            reply = await call(other, metadata=metadata, timeout=CALL_TIMEOUT_S)
            self.tally.card_ops[f"{op.method}:{cards_pb2.CardReply.Status.Name(reply.status)}"] += 1
        except grpc.aio.AioRpcError as exc:  # applied or not: that card's balance is unknown
            self.tally.failed(exc.code().name, 0, exc.details() or "")
            self.tally.uncertain_cards.add(op.card_id)

    def lane(self, terminal_id: int, *, from_send: bool = False) -> Lane:
        lane = self.lanes.get(terminal_id)
        if lane is None:
            terminal = self.terminals[terminal_id]
            lane = self.lanes[terminal_id] = Lane(self, terminal, from_send=from_send)
        return lane

    def _short(self, what: str, started: float, ran_out: float) -> None:
        """Warn when the plan ran out before --duration: the offered rate is then lower."""
        if ran_out < started + self.opts.duration_s - PLAN_SHORT_SLACK_S:
            self.warnings.append(
                f"the plan's {what} ran out after {ran_out - started:.1f} s of the "
                f"{self.opts.duration_s:g} s asked for: the offered rate is lower than asked "
                "(raise --scale for a longer plan)"
            )

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
            self.lane(batch.terminal_id).send(batch, due)
            sent += batch.count
        else:
            self._short("validator batches", started, started + sent / self.opts.rate_taps_s)

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
                    lambda i, b, due: self.single(b, due),
                )
            )
        if self.opts.ops_rate > 0:
            self._spawn(
                self._pace(
                    self.plan.card_ops,
                    self.opts.ops_rate,
                    started,
                    end,
                    lambda i, op, due: self.card_op(i, op),
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
        what = "single taps" if items is self.plan.single_taps else "card operations"
        self._short(what, started, started + len(items) / rate)

    async def _flat_out(self, started: float) -> None:
        self._side_pacers(started)
        by_terminal: dict[int, list[TapBatch]] = {}
        for batch in self.plan.validator_batches:
            by_terminal.setdefault(batch.terminal_id, []).append(batch)
        queue = deque(by_terminal.items())
        end = started + self.opts.duration_s
        await asyncio.gather(*(self._stream_worker(queue, end) for _ in range(self.opts.streams)))
        if not queue:
            self._short("validator batches", started, time.perf_counter())

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
        await run_day(self, started)
