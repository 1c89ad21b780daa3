"""One load-generator session against a running server, start to verdict."""

from __future__ import annotations

import asyncio
import gc
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from clearing.runtime.config import Config
from clearing.tools.client import Stubs, bearer, channel
from clearing.v1 import admin_pb2
from loadgen.check import balances, scrape, verdict
from loadgen.city import City, city_of
from loadgen.draws import local_ms_of_day
from loadgen.model import plan_day
from loadgen.plan import DayPlan
from loadgen.report import results
from loadgen.run import DAY_MS, Options, Runner
from loadgen.tally import TAP_DTYPE, Tally

STATUS_READS_IN_FLIGHT = 64
PROGRESS_REFRESH_S = 0.2
PAST_MARGIN_MS = 600_000  # without a driven clock the planned day ends this long before now


class Session:
    def __init__(
        self,
        target: str,
        config: Config,
        opts: Options,
        *,
        scale: float,
        seed: int,
        batch_taps: int = 500,
        sample: int = 500,
        metrics_url: str | None = None,
        base_ms: int | None = None,
        console: Console | None = None,
        positions: bool = True,
    ) -> None:
        """``positions``: ask the server (AdminService) where each terminal's sequence
        numbers stand; off for a bare TapService, whose numbers then start at 1."""
        self.target, self.opts = target, opts
        self.positions = positions
        self.city: City = city_of(config)
        self.timezone = config.server.timezone  # the model's hours are the city's
        self.scale, self.seed, self.batch_taps, self.sample = scale, seed, batch_taps, sample
        self.metrics_url = metrics_url
        self.base_ms = base_ms
        self.console = console or Console(stderr=True)

    def parameters(self) -> dict:
        """What this run was asked to do, for the table and the JSON."""
        return {
            "target": self.target,
            "mode": self.opts.mode,
            "duration_s": self.opts.duration_s,
            "streams": self.opts.streams,
            "window": self.opts.window,
            "rate_taps_s": self.opts.rate_taps_s,
            "pos_rate": self.opts.pos_rate,
            "ops_rate": self.opts.ops_rate,
            "batch_taps": self.batch_taps,
            "scale": self.scale,
            "seed": self.seed,
            "drive_clock": self.opts.drive_clock,
        }

    async def run(self) -> dict:
        async with channel(self.target) as chan:
            stubs = Stubs(chan)
            plan = await self._plan(stubs)
            gc.collect()
            gc.freeze()  # the plan's million objects: never scanned again (no GC pauses)
            tally = Tally(self._sample(plan))
            hall_token = self.city.halls[0][1]
            cards = sorted(tally.sampled_set)
            served_before = await scrape(self.metrics_url) if self.metrics_url else None
            with self._step(f"reading {len(cards):,} sampled balances"):
                before = await balances(stubs, hall_token, cards)
            runner = Runner(stubs, self.city, plan, tally, self.opts)
            cpu_before = time.process_time()  # this process: the generator, gRPC's threads
            with self._progress(tally, plan):
                seconds = await runner.run()
            cpu_s = time.process_time() - cpu_before
            served = None
            if self.metrics_url:
                assert served_before is not None
                served = (await scrape(self.metrics_url)).minus(served_before)
            after = await balances(stubs, hall_token, cards)
        problems = verdict(tally, served, before, after)
        out = results(tally, seconds, self.opts, problems, cpu_s=cpu_s, warnings=runner.warnings)
        out["parameters"] = self.parameters()
        return out

    async def _plan(self, stubs: Stubs) -> DayPlan:
        seq_base = await self._positions(stubs) if self.positions else {}
        base_ms = self.base_ms
        if base_ms is None:  # the whole day in the recent past: every tap is in time
            base_ms = int(time.time() * 1000) - DAY_MS - PAST_MARGIN_MS
        with self._step(f"planning the day (scale {self.scale:g}, seed {self.seed})"):
            return await asyncio.to_thread(
                plan_day,
                self.city,
                scale=self.scale,
                seed=self.seed,
                base_ms=base_ms,
                batch_taps=self.batch_taps,
                seq_base=seq_base,
                local0_ms=local_ms_of_day(base_ms, self.timezone),
            )

    async def _positions(self, stubs: Stubs) -> dict[int, int]:
        """Terminal positions, with a line that counts them in (one call a terminal: on
        a large journal this has taken tens of seconds)."""
        total = len(self.city.terminals)
        what = f"reading the positions of {total:,} terminals (GetTerminalStatus)"
        if not self.console.is_terminal:
            with self._step(what):
                return await terminal_positions(stubs, self.city)
        progress = Progress(
            TextColumn(what), BarColumn(), TextColumn("{task.completed:,}/{task.total:,}"),
            TimeElapsedColumn(), console=self.console,
        )  # fmt: skip
        task = progress.add_task("positions", total=total)
        with progress:
            return await terminal_positions(stubs, self.city, lambda: progress.advance(task))

    @contextmanager
    def _step(self, what: str) -> Iterator[None]:
        """One start-up step: a spinner on a terminal, a line before and after elsewhere."""
        started = time.perf_counter()
        if self.console.is_terminal:
            with self.console.status(what + " ..."):
                yield
        else:
            self.console.print(f"loadgen: {what} ...")
            yield
        self.console.print(f"loadgen: {what}: {time.perf_counter() - started:.1f} s")

    def _sample(self, plan: DayPlan) -> set[int]:
        """Cards the plan touches, minus those lost or replaced (their balances move)."""
        moved = {op.card_id for op in plan.card_ops if op.method != "TopUp"}
        moved |= {op.new_card_id for op in plan.card_ops if op.new_card_id}
        touched: set[int] = set()
        for batch in (*plan.validator_batches[:200], *plan.single_taps[:2000]):
            touched.update(int(c) for c in _cards(batch.packed_taps))
        candidates = sorted(touched - moved)
        return set(random.Random(self.seed).sample(candidates, min(self.sample, len(candidates))))

    def _progress(self, tally: Tally, plan: DayPlan):
        if not self.console.is_terminal:
            return nullcontext()
        return _Bar(self.console, tally, _planned_taps(plan, self.opts))


def _cards(packed: bytes):
    import numpy as np

    return np.frombuffer(packed, dtype=TAP_DTYPE)["card"]


def _planned_taps(plan: DayPlan, opts: Options) -> int:
    if opts.mode == "rate":
        return int(opts.rate_taps_s * opts.duration_s + opts.pos_rate * opts.duration_s)
    if opts.mode == "day":
        return plan.validator_taps + len(plan.single_taps)
    return plan.validator_taps


class _Bar:
    """A progress bar of taps answered, refreshed a few times a second."""

    def __init__(self, console: Console, tally: Tally, total: int) -> None:
        self.tally = tally
        self.progress = Progress(
            TextColumn("taps answered"),
            BarColumn(),
            TextColumn("{task.completed:,}/{task.total:,}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,  # the last line stays: how far it got, how long it took
        )
        self.task_id = self.progress.add_task("taps", total=total)
        self.refresher: asyncio.Task | None = None

    def __enter__(self) -> _Bar:
        self.progress.start()
        self.refresher = asyncio.get_running_loop().create_task(self._refresh())
        return self

    async def _refresh(self) -> None:
        while True:
            self.progress.update(self.task_id, completed=self.tally.taps_answered)
            await asyncio.sleep(PROGRESS_REFRESH_S)

    def __exit__(self, *exc) -> None:
        if self.refresher is not None:
            self.refresher.cancel()
        self.progress.update(self.task_id, completed=self.tally.taps_answered)
        self.progress.stop()


async def terminal_positions(
    stubs: Stubs, city: City, each: Callable[[], None] | None = None
) -> dict[int, int]:
    """Each terminal's highest terminal_seq so far: this run's numbers continue from it.
    ``each`` is called after every terminal read (a progress line)."""
    gate = asyncio.Semaphore(STATUS_READS_IN_FLIGHT)
    metadata = bearer(city.admin_token)

    async def one(terminal_id: int) -> tuple[int, int]:
        async with gate:
            status = await stubs.admin.GetTerminalStatus(
                admin_pb2.GetTerminalStatusRequest(terminal_id=terminal_id), metadata=metadata
            )
        if each is not None:
            each()
        return terminal_id, status.last_seq

    return dict(await asyncio.gather(*(one(t) for t in city.terminals)))
