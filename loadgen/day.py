"""Day mode: the whole plan at its model times, the day compressed into ``duration_s``.

Every event goes out at its time, unless an earlier event on one of its cards (or
an earlier batch of its bus: a bus uploads its batches in order) is still
unanswered: then it goes out as soon as that one is answered, and nothing else
waits for it. So the server sees every card's events in the plan's order (a top-up
before the purchase it pays for, a ride before its transfer). With ``drive_clock``
the server's clock is set every four model minutes to that tick's end, and a loss
report or a replacement (whose time decides which later rides the card still
pays) goes out alone, after everything before it is answered, at the tick's clock.
The same plan on the same server state then gets the same answers, whatever the
scheduling. Latency runs from each call's send; how far sends fell behind the
day's schedule (waiting on a card, or a generator or server that cannot keep the
pace) is a figure of its own.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import numpy as np

from clearing.tools.client import bearer
from clearing.v1 import admin_pb2
from loadgen.model import TAP_DTYPE
from loadgen.plan import DayPlan

if TYPE_CHECKING:
    from loadgen.run import Runner

DAY_MS = 86_400_000
# With a driven clock the server's clock moves once every four model minutes (about
# 0.08 s of a 30 s day), to the end of those four minutes: less than the 300 s a tap
# may be ahead of the clock (SPEC §5 IN_FUTURE), so a move still in flight is harmless.
TICK_MS = 4 * 60_000
CLOCK_END_MARGIN_MS = 60_000  # the server clock stops this far before the day's end
DAY_LATE_SHARE = 0.10  # a day this much longer than --duration is reported


async def run_day(runner: Runner, started: float) -> None:
    opts, plan = runner.opts, runner.plan
    per_ms = opts.duration_s / DAY_MS  # wall seconds per model millisecond
    events = [(b.send_ms, 0, i) for i, b in enumerate(plan.validator_batches)]
    events += [(b.send_ms, 1, i) for i, b in enumerate(plan.single_taps)]
    events += [(op.send_ms, 2, i) for i, op in enumerate(plan.card_ops)]
    events.sort()
    loop = asyncio.get_running_loop()
    latest: dict[int, asyncio.Future] = {}  # card id, or -terminal id -> its latest event
    unanswered: set[asyncio.Future] = set()
    tasks: set[asyncio.Task] = set()
    clock_ms = -1
    clock_set: asyncio.Task | None = None
    for send_ms, kind, i in events:
        if opts.drive_clock:  # the tick's end: nothing sent in it is in the future
            wanted = min((send_ms // TICK_MS + 1) * TICK_MS, DAY_MS - CLOCK_END_MARGIN_MS)
            if wanted > clock_ms:
                # One move in flight at a time, not waited for: until it lands the clock
                # is the last tick's end, less than the allowed skew behind this tick.
                if clock_set is not None:
                    await clock_set
                clock_ms = wanted
                clock_set = asyncio.create_task(_set_clock(runner, wanted))
        due = started + send_ms * per_ms
        await _until(due)
        alone = kind == 2 and plan.card_ops[i].method != "TopUp"
        if alone:  # everything before it answered, the clock at the tick's end
            if unanswered:
                await asyncio.wait(list(unanswered))
            if clock_set is not None:
                await clock_set
        keys = keys_of(plan, kind, i)
        after = [f for k in keys if (f := latest.get(k)) is not None and not f.done()]
        done = loop.create_future()
        for key in keys:
            latest[key] = done
        unanswered.add(done)
        done.add_done_callback(unanswered.discard)
        task = asyncio.create_task(_event(runner, kind, i, due, after, done))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        if alone:
            await done
    if unanswered:
        await asyncio.wait(list(unanswered))
    if clock_set is not None:
        await clock_set
    await asyncio.gather(*tasks)  # each ends with its answer: nothing is left behind
    late = time.perf_counter() - started - opts.duration_s
    if late > DAY_LATE_SHARE * opts.duration_s:
        runner.warnings.append(
            f"the day took {late:.1f} s longer than the {opts.duration_s:g} s asked for: "
            "the server (or this generator, see its CPU) could not keep the pace"
        )


def keys_of(plan: DayPlan, kind: int, i: int) -> set[int]:
    """What an event must wait its turn on: its cards, and a validator's batches on the
    one before (its terminal id, negated). POS taps do not queue on their terminal: a
    busy shop's till would then set the pace of a day compressed 2,880 times."""
    if kind == 2:
        op = plan.card_ops[i]
        return {op.card_id, op.new_card_id} if op.new_card_id else {op.card_id}
    batch = (plan.validator_batches if kind == 0 else plan.single_taps)[i]
    if kind == 1:  # a single tap: its card is the first 8 bytes
        return {int.from_bytes(batch.packed_taps[:8], "big")}
    cards = set(np.frombuffer(batch.packed_taps, dtype=TAP_DTYPE)["card"].tolist())
    cards.add(-batch.terminal_id)
    return cards


async def _until(due: float) -> None:
    delay = due - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)


async def _event(
    runner: Runner,
    kind: int,
    i: int,
    due: float,
    after: list[asyncio.Future],
    done: asyncio.Future,
) -> None:
    """Send one event once the events it waits on are answered; ``done`` when answered."""
    from loadgen.run import latency_us

    plan, tally = runner.plan, runner.tally
    try:
        if after:
            await asyncio.wait(after)
        tally.schedule_lag.record_value(latency_us(due))
        if kind == 0:
            batch = plan.validator_batches[i]
            tally.taps_offered += batch.count
            runner.lane(batch.terminal_id, from_send=True).send(batch, due, done)
            await done
        elif kind == 1:
            await runner.single(plan.single_taps[i], due, from_send=True)
        else:
            await runner.card_op(i, plan.card_ops[i])
    except Exception as exc:  # the tally counts it; the day goes on
        tally.failed(type(exc).__name__, 0, repr(exc))
    finally:
        if not done.done():
            done.set_result(None)


async def _set_clock(runner: Runner, model_ms: int) -> None:
    """The server's manual clock to ``model_ms`` of the plan's day. Never past the day's
    end while it is being sent: late uploads belong to this day (and the stamps of
    entries accepted in one millisecond run a millisecond each past the clock: margin)."""
    await runner.stubs.admin.SetClock(
        admin_pb2.SetClockRequest(now_ms=runner.plan.base_ms + model_ms),
        metadata=bearer(runner.city.admin_token),
    )
