"""End to end: the load generator against a real ``clearing serve`` (issue 5's numbers).

The server is ``python -m clearing serve`` on the built-in demo city (210,000
cards, 300 validators, 600 POS, 4 billing terminals) with its durable LMDB
journal (fsync on every group commit), in a SUBPROCESS (``test_bench_cards.
ServerProcess``) on 127.0.0.1, on a FRESH data dir for every part below, and
stopped with SIGTERM after it. The load generator (``loadgen.Session``) runs
in this pytest process, which does nothing else meanwhile: its GIL and event
loop are the generator's alone. Both share this machine's CPUs, as issue 5
asks ("the load generator on the same machine").

One city day is planned once (``PLAN_SCALE`` times the reference city's day,
seed 1, 500-tap validator batches) and the same plan is sent to every fresh
server: on a fresh server every terminal's sequence numbers start at 1, so one
plan fits all (``PlannedSession`` checks that), the runs are comparable tap
for tap, and planning (seconds at this scale) is paid once. The plan's
millions of objects are then frozen out of the cycle collector
(``gc.freeze``), so that no full collection pauses the generator mid-run.

Parts, in this order:

1. Maximum throughput, ``max`` mode: a short sweep of streams x window
   (``SWEEP``, ``SWEEP_S`` each) picks the best, then one measured run of
   ``MEASURE_S`` with it (the pytest-benchmark round). Figure: taps/s
   answered. Target >= 300,000 taps/s.
2. The transport ceiling, right after (side by side): ``trivial_tap_server.
   py``, a TapService that answers every batch OK and does nothing, driven by
   the same generator with the same streams x window (no positions, no
   sampled balances, no metrics). Figures: its taps/s and engine/ceiling.
3. Open loop at 70 % of the measured maximum (``rate`` mode, latency from
   each batch's DUE time, ``OPEN_LOOP_S``): p50/p99/p99.9/max batch
   acknowledgement. Target p99 <= 50 ms.
4. Single POS/billing taps (``SubmitTaps``, one tap each) at 200/s while
   validators load the server at 50 % of the maximum (``rate`` mode):
   single-tap p50/p99/max. Target p99 <= 10 ms.

Latencies are the generator's own (HDR histograms over the whole run) and,
beside them, the same runs' answers after each session's first ``WARMUP_S``
seconds (``WarmupRunner``): every session opens a new channel and new streams
and its first second pays for that, which real terminals, connected for
hours, do not. Both are reported; the targets are judged on both.

For each run the note gives the CPU used (in cores) by the server, by the
generator and by everything else on this shared machine, the journal's group
commits, and the share of taps answered OK.

Every engine run ends with the generator's end-to-end check (server counters
and 500 sampled balances against the answers), which must pass, with no
failed call. The figures are reported (``conftest.report``) and written to
``benchmarks/RESULTS.md`` with the machine's description (``results.py``),
once here and again at the end of the session with every other benchmark's
figures too. There are no timing assertions.

Sizing: as an operator sizes a server for its day, ``[server] reserve_taps``
is 16M (``CLEARING_BENCH_RESERVE_TAPS``; it costs seconds of start-up a
server). With 0, the demo city's default, the ledger core's tap table grows
on demand, doubling (and rehashing) as a run passes 2M, 4M, 8M taps, and each
doubling stalls every answer for a moment.
"""

from __future__ import annotations

import asyncio
import gc
import io
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from conftest import FIGURES, figure, fmt, report, scratch_root
from results import ResultsPage, write_results
from rich.console import Console
from test_bench_cards import REPO_ROOT, START_TIMEOUT_S, ServerProcess

import loadgen.session
from clearing.runtime.config import Config
from clearing.tools.client import wait_serving
from clearing.tools.demo_city import demo_config
from loadgen.city import city_of
from loadgen.model import plan_day
from loadgen.plan import DayPlan
from loadgen.report import latency_ms
from loadgen.run import DAY_MS, Options, Runner
from loadgen.session import PAST_MARGIN_MS, Session, terminal_positions
from loadgen.tally import histogram

BENCH = "e2e"
TRIVIAL_SERVER = Path(__file__).resolve().with_name("trivial_tap_server.py")

PLAN_SCALE = 420  # ~11.9M validator taps: 20 s at up to ~590k taps/s
# [server] reserve_taps of every engine (0: the demo city's default, grow on demand).
RESERVE_TAPS = int(os.environ.get("CLEARING_BENCH_RESERVE_TAPS", "16000000"))
SEED = 1
BATCH_TAPS = 500
SAMPLE = 500  # cards whose balances the end-of-run check follows
SWEEP = ((2, 32), (4, 32), (4, 16))  # streams x window
SWEEP_S = 8.0
MEASURE_S = 20.0
CEILING_S = 10.0  # sent the plan twice over: ~24M taps, ~11 s at ~2M taps/s
OPEN_LOOP_S = 20.0
OPEN_LOOP_SHARE = 0.70
POS_LOAD_SHARE = 0.50
POS_RATE = 200.0
RUN_TIMEOUT_MARGIN_S = 120.0  # a run that takes this much longer than planned has hung
WARMUP_S = 2.0  # "steady" latencies: answers after a session's first 2 s

MAX_TARGET = 300_000.0
BATCH_P99_TARGET_MS = 50.0
SINGLE_P99_TARGET_MS = 10.0

CITY_CONFIG = demo_config()


def engine_config(data_dir: str) -> Config:
    """The demo city on ``data_dir``, sized by ``RESERVE_TAPS``."""
    config = demo_config(data_dir=data_dir)
    config.server.reserve_taps = RESERVE_TAPS
    return config


QUIET = Console(file=io.StringIO())  # no progress bar: it would cost the generator CPU
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# The plan, made once --------------------------------------------------------------------


def make_plan() -> DayPlan:
    """The whole day in the recent past (as ``Session`` would plan it), every seq from 1."""
    base_ms = int(time.time() * 1000) - DAY_MS - PAST_MARGIN_MS
    plan = plan_day(
        city_of(CITY_CONFIG),
        scale=PLAN_SCALE,
        seed=SEED,
        base_ms=base_ms,
        batch_taps=BATCH_TAPS,
        seq_base={},
    )
    gc.collect()
    gc.freeze()  # millions of plan objects: out of every later collection's way
    return plan


class PlannedSession(Session):
    """A ``loadgen`` session that sends a plan made beforehand.

    It overrides ``Session._plan`` (the one place a session plans): the plan
    was made with every terminal's sequence numbers starting at 1, which holds
    only on a server that has seen no taps, and that is checked here.
    """

    def __init__(self, plan: DayPlan, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.plan = plan

    async def _plan(self, stubs) -> DayPlan:
        if self.positions:
            used = {t: s for t, s in (await terminal_positions(stubs, self.city)).items() if s}
            assert not used, f"the server is not fresh: terminals already at {used}"
        return self.plan


def twice_over(plan: DayPlan) -> DayPlan:
    """Every validator batch twice: enough for the ceiling, which checks nothing (seqs repeat)."""
    return DayPlan(base_ms=plan.base_ms, validator_batches=plan.validator_batches * 2)


# Steady-state latency: answers after a session's first seconds ---------------------------


class AfterWarmup:
    """A session's latency histogram that also keeps apart what is recorded after the warm-up.

    Everything else (percentiles, counts) is the whole histogram's, so the
    generator's own figures are unchanged.
    """

    def __init__(self, whole, runner: WarmupRunner) -> None:
        self.whole, self.runner = whole, runner
        self.steady = histogram()

    def record_value(self, value: int) -> None:
        self.whole.record_value(value)
        if time.perf_counter() >= self.runner.steady_from:
            self.steady.record_value(value)

    def __getattr__(self, name: str):
        return getattr(self.whole, name)


class WarmupRunner(Runner):
    """``loadgen.run.Runner`` whose tally's histograms also keep the post-warm-up answers.

    A session opens a new channel and new streams, and the first second or so
    of answers pays for that (HTTP/2 windows, new streams on both sides); a
    real depot's streams stay open. ``Bench`` puts this class in place of
    ``loadgen.session.Runner`` for the length of one session.
    """

    last: WarmupRunner | None = None
    server_pid = 0

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.steady_from = float("inf")
        self.tally.batch_latency = AfterWarmup(self.tally.batch_latency, self)
        self.tally.single_latency = AfterWarmup(self.tally.single_latency, self)
        self.cpu: list[tuple[float, float, float]] = []  # (machine, server, generator) s
        WarmupRunner.last = self

    def _cpu(self) -> None:
        self.cpu.append((machine_busy_seconds(), cpu_seconds(self.server_pid), time.process_time()))

    async def run(self) -> float:
        """The sending part of the session, between the positions and the check's reads."""
        self._cpu()
        self.steady_from = time.perf_counter() + WARMUP_S
        seconds = await super().run()
        self._cpu()
        return seconds


# Servers ---------------------------------------------------------------------------------


class TrivialServerProcess(ServerProcess):
    """``trivial_tap_server.py`` on loopback (the transport ceiling); stopped like the engine."""

    def start(self) -> TrivialServerProcess:
        started = time.perf_counter()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(TRIVIAL_SERVER), "--listen", self.target],
                cwd=REPO_ROOT,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        try:
            asyncio.run(wait_serving(self.target, self.proc, START_TIMEOUT_S))
        except Exception as exc:
            self.stop()
            raise AssertionError(f"trivial server did not start: {exc}: {self.log_tail()}") from exc
        self.start_seconds = time.perf_counter() - started
        return self


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy so far (all CPUs, /proc/stat)."""
    with open("/proc/stat") as f:
        # user nice system idle iowait irq softirq steal (guest time is already in user)
        jiffies = [int(x) for x in f.readline().split()[1:9]]
    return (sum(jiffies) - jiffies[3] - jiffies[4]) / CLOCK_TICKS  # less idle and iowait


COMMITS = "clearing_journal_commit_latency_seconds_count"
COMMIT_SECONDS = "clearing_journal_commit_latency_seconds_sum"
ENTRIES = "clearing_journal_entries_total"


@dataclass
class Run:
    """One load-generator session against one fresh server."""

    name: str
    opts: Options
    engine: bool = True  # False: the trivial TapService
    result: dict = field(default_factory=dict)
    server_cores: float = 0.0  # CPU the server used, in cores, over the session
    client_cores: float = 0.0  # CPU this process used, in cores, over the session
    other_cores: float = 0.0  # CPU the rest of the machine used meanwhile (others' work)
    steady_batch: dict = field(default_factory=dict)  # latency_ms() after the warm-up
    steady_single: dict = field(default_factory=dict)
    entries_per_commit: float = 0.0
    commit_ms: float = 0.0
    start_s: float = 0.0  # spawn to SERVING
    log_tail: str = ""

    @property
    def rate(self) -> float:
        return self.result["taps_per_s_answered"]

    @property
    def ok(self) -> bool:
        check = self.result.get("check")
        if not self.engine:  # the trivial server's canned answers are not a clearing's
            return not self.result.get("errors")
        return not self.result.get("errors") and (check is None or check["passed"])

    def problems(self) -> str:
        check = self.result.get("check") or {}
        return (
            f"{self.name}: errors {self.result.get('errors')} "
            f"{self.result.get('error_details')}; check {check.get('problems')}; "
            f"server log: {self.log_tail}"
        )

    def latency(self, kind: str, key: str, *, steady: bool = False) -> float:
        figures = self.result[f"{kind}_latency_ms"]
        if steady:
            figures = self.steady_batch if kind == "batch" else self.steady_single
        return figures.get(key, float("nan"))


class Bench:
    """Runs sessions on one event loop, each against a fresh server in its own directory."""

    def __init__(self, plan: DayPlan, root: str) -> None:
        self.plan, self.root = plan, root
        self.loop = asyncio.new_event_loop()

    def close(self) -> None:
        self.loop.close()

    def engine(self, name: str, opts: Options, *, measure=None) -> Run:
        """``measure(fn)`` runs the session (e.g. inside ``benchmark.pedantic``)."""
        part = os.path.join(self.root, name)
        os.makedirs(part)
        server = ServerProcess(part, engine_config(os.path.join(part, "data")))
        run = Run(name, opts)
        try:
            run.start_s = server.start().start_seconds
            session = PlannedSession(
                self.plan,
                server.target,
                CITY_CONFIG,
                opts,
                scale=PLAN_SCALE,
                seed=SEED,
                batch_taps=BATCH_TAPS,
                sample=SAMPLE,
                metrics_url=f"http://{server.metrics_target}/metrics",
                console=QUIET,
            )
            before = server.metrics()
            self._session(run, session, server.proc.pid, measure)
            after = server.metrics()
            commits = after.get(COMMITS, 0) - before.get(COMMITS, 0)
            run.entries_per_commit = (after.get(ENTRIES, 0) - before.get(ENTRIES, 0)) / max(
                commits, 1
            )
            run.commit_ms = (
                1_000 * (after.get(COMMIT_SECONDS, 0) - before.get(COMMIT_SECONDS, 0))
            ) / max(commits, 1)
        finally:
            run.log_tail = server.log_tail()[-600:]
            server.stop()
            shutil.rmtree(part, ignore_errors=True)  # a journal of millions of taps
        print(f"[bench] e2e {_summary(run)}", flush=True)
        return run

    def ceiling(self, name: str, opts: Options) -> Run:
        """The same generator against ``trivial_tap_server.py`` (the plan twice over)."""
        part = os.path.join(self.root, name)
        os.makedirs(part)
        server = TrivialServerProcess(part, CITY_CONFIG)
        run = Run(name, opts, engine=False)
        try:
            run.start_s = server.start().start_seconds
            session = PlannedSession(
                twice_over(self.plan),
                server.target,
                CITY_CONFIG,
                opts,
                scale=PLAN_SCALE,
                seed=SEED,
                batch_taps=BATCH_TAPS,
                sample=0,
                metrics_url=None,
                console=QUIET,
                positions=False,
            )
            self._session(run, session, server.proc.pid, None)
        finally:
            run.log_tail = server.log_tail()[-600:]
            server.stop()
            shutil.rmtree(part, ignore_errors=True)
        print(f"[bench] e2e {_summary(run)}", flush=True)
        return run

    def _session(self, run: Run, session: Session, server_pid: int, measure) -> None:
        timeout = run.opts.duration_s + RUN_TIMEOUT_MARGIN_S

        def go() -> None:
            run.result = self.loop.run_until_complete(asyncio.wait_for(session.run(), timeout))

        assert loadgen.session.Runner is Runner, "loadgen.session no longer uses Runner"
        loadgen.session.Runner, WarmupRunner.last = WarmupRunner, None
        WarmupRunner.server_pid = server_pid
        try:
            (measure or (lambda fn: fn()))(go)
        finally:
            loadgen.session.Runner = Runner
        runner = WarmupRunner.last
        assert runner is not None, "the session did not run through loadgen.session.Runner"
        (machine0, server0, client0), (machine1, server1, client1) = runner.cpu
        seconds = run.result["seconds"]
        run.server_cores = (server1 - server0) / seconds
        run.client_cores = (client1 - client0) / seconds
        run.other_cores = max(0.0, (machine1 - machine0) / seconds - run.server_cores)
        run.other_cores = max(0.0, run.other_cores - run.client_cores)
        run.steady_batch = latency_ms(runner.tally.batch_latency.steady)
        run.steady_single = latency_ms(runner.tally.single_latency.steady)


def _latencies(figures: dict) -> str:
    if not figures.get("count"):
        return "none"
    return " ".join(f"{k} {figures[k]:.1f}" for k in ("p50", "p99", "p99.9", "max")) + " ms"


def _summary(run: Run) -> str:
    r = run.result
    text = (
        f"{run.name} ({run.opts.mode}, {r['seconds']:.1f} s, server SERVING {run.start_s:.1f} s "
        f"after spawn): {fmt(run.rate)} taps/s answered of {fmt(r['taps_per_s_offered'])} offered"
    )
    if r["taps_answered"] and run.engine:
        text += f" ({100 * r['taps_ok'] / r['taps_answered']:.0f} % OK)"
    text += f"; batch ack {_latencies(r['batch_latency_ms'])}"
    if run.opts.mode == "rate":
        text += f", after the first {WARMUP_S:.0f} s {_latencies(run.steady_batch)}"
    if r["single_tap_latency_ms"].get("count"):
        text += (
            f"; single taps {_latencies(r['single_tap_latency_ms'])}, after the first "
            f"{WARMUP_S:.0f} s {_latencies(run.steady_single)}"
        )
    text += (
        f"; CPU in cores: server {run.server_cores:.2f}, generator {run.client_cores:.2f}, "
        f"others {run.other_cores:.2f}"
    )
    if run.entries_per_commit:
        text += (
            f"; {run.entries_per_commit:.1f} entries a group commit ({run.commit_ms:.1f} ms each)"
        )
    if r["seconds"] < 0.95 * run.opts.duration_s:
        text += f"; the plan ran out after {r['seconds']:.1f} of {run.opts.duration_s:.0f} s"
    check = r.get("check")
    verdict = "n/a" if check is None else ("passed" if check["passed"] else "FAILED")
    return text + f"; check {verdict}" + (f"; ERRORS {r['errors']}" if r["errors"] else "")


# The benchmark ---------------------------------------------------------------------------


def test_e2e_loadgen_against_the_engine(benchmark, scratch_dir, request):
    started = time.perf_counter()
    notes: list[str] = []
    page = ResultsPage(FIGURES, scratch_root(), notes)
    if not request.config.pluginmanager.has_plugin(page.name):
        request.config.pluginmanager.register(page, page.name)

    plan = make_plan()
    plan_s = time.perf_counter() - started
    bench = Bench(plan, scratch_dir)
    runs: list[Run] = []
    try:
        # 1. maximum throughput: sweep, then the measured run with the best streams x window
        sweep = [
            bench.engine(f"sweep-{s}x{w}", Options("max", SWEEP_S, streams=s, window=w))
            for s, w in SWEEP
        ]
        runs += sweep
        best = max(sweep, key=lambda r: r.rate).opts
        streams, window = best.streams, best.window
        top = bench.engine(
            "max",
            Options("max", MEASURE_S, streams=streams, window=window),
            measure=lambda go: benchmark.pedantic(go, rounds=1, iterations=1),
        )
        runs.append(top)
        # 2. the transport ceiling, side by side: same generator, same streams x window
        ceiling = bench.ceiling(
            "ceiling", Options("max", CEILING_S, streams=streams, window=window)
        )
        runs.append(ceiling)
        # 3. open loop at 70 % of the measured maximum
        open_loop = bench.engine(
            "open-loop-70", Options("rate", OPEN_LOOP_S, OPEN_LOOP_SHARE * top.rate)
        )
        runs.append(open_loop)
        # 4. single POS taps at 200/s, validators at 50 % of the maximum
        pos = bench.engine(
            "pos-at-50",
            Options("rate", OPEN_LOOP_S, POS_LOAD_SHARE * top.rate, pos_rate=POS_RATE),
        )
        runs.append(pos)
    finally:
        bench.close()
        gc.unfreeze()

    tag = f"{streams}x{window}"
    at70 = f"at {OPEN_LOOP_SHARE:.0%} of max"
    pos_at = f"200/s, validators at {POS_LOAD_SHARE:.0%} of max"
    warm = f"after the first {WARMUP_S:.0f} s"
    batch, single = BATCH_P99_TARGET_MS, SINGLE_P99_TARGET_MS
    figures = [
        figure(
            BENCH,
            f"max throughput ({tag} streams x window, 500-tap batches)",
            top.rate,
            "taps/s",
            at_least=MAX_TARGET,
        ),
        figure(BENCH, f"transport ceiling (trivial TapService, {tag})", ceiling.rate, "taps/s"),
        figure(BENCH, "engine/ceiling", 100 * top.rate / ceiling.rate, "%"),
        figure(BENCH, f"batch ack p50 {at70}", open_loop.latency("batch", "p50"), "ms"),
        figure(
            BENCH, f"batch ack p99 {at70}", open_loop.latency("batch", "p99"), "ms", at_most=batch
        ),
        figure(BENCH, f"batch ack p99.9 {at70}", open_loop.latency("batch", "p99.9"), "ms"),
        figure(BENCH, f"batch ack max {at70}", open_loop.latency("batch", "max"), "ms"),
        figure(
            BENCH,
            f"batch ack p99 {at70}, {warm}",
            open_loop.latency("batch", "p99", steady=True),
            "ms",
            at_most=batch,
        ),
        figure(BENCH, f"single tap p50 ({pos_at})", pos.latency("single_tap", "p50"), "ms"),
        figure(
            BENCH,
            f"single tap p99 ({pos_at})",
            pos.latency("single_tap", "p99"),
            "ms",
            at_most=single,
        ),
        figure(BENCH, f"single tap max ({pos_at})", pos.latency("single_tap", "max"), "ms"),
        figure(
            BENCH,
            f"single tap p99 ({pos_at}), {warm}",
            pos.latency("single_tap", "p99", steady=True),
            "ms",
            at_most=single,
        ),
    ]
    engine_runs = [r for r in runs if r.engine]
    all_passed = all(r.result["check"] and r.result["check"]["passed"] for r in engine_runs)
    notes += [
        "Server: `python -m clearing serve` on the built-in demo city (210,000 cards), durable "
        "LMDB journal (fsync every group commit), in a subprocess on 127.0.0.1, a fresh data dir "
        "for every run, stopped with SIGTERM after it; `[server] reserve_taps` "
        f"{RESERVE_TAPS:,}"
        + (" (the demo default: the tap table grows on demand)" if not RESERVE_TAPS else "")
        + ". Load generator: `loadgen.Session` in the pytest process, on the same machine.",
        f"One plan for every run: a city day at scale {PLAN_SCALE}, seed {SEED}: "
        f"{plan.validator_taps:,} validator taps in {len(plan.validator_batches):,} batches of "
        f"{BATCH_TAPS}, {len(plan.single_taps):,} single POS/billing taps "
        f"(planned in {plan_s:.1f} s, before any run). Rate mode sends the busiest validators' "
        "batches (as many validators as the offered taps need), each on its own stream.",
        f"Sweep of streams x window, max mode, {SWEEP_S:.0f} s each: "
        + ", ".join(f"{r.opts.streams}x{r.opts.window} {fmt(r.rate)} taps/s" for r in sweep)
        + f"; best {tag}.",
        f"Run {_summary(top)}.",
        f"Run {_summary(ceiling)}. The trivial server's replies are packed OK results with every "
        "other field 0 (the generator's check does not apply); it was sent the plan twice over.",
        f"Run {_summary(open_loop)}.",
        f"Run {_summary(pos)}.",
        f"Latencies {warm}: the same runs' answers after the session's first {WARMUP_S:.0f} s, "
        "when its new channel and streams are warm (a session starts cold; real terminals keep "
        "their connections).",
        "End-of-run check (server counters by status and Σ charged, and "
        f"{SAMPLE} sampled balances, against the answers) on every engine run: "
        + ("passed." if all_passed else "**FAILED** (see the test's output)."),
        "CPU in cores over each run's sending part: the server process, the generator (this "
        "pytest process) and everything else on the machine (others' work: it is shared).",
    ]
    report(
        "end to end: loadgen in-process vs `clearing serve` (demo city, durable journal) "
        "in a subprocess",
        *figures,
        note=f"best of sweep {tag}; {len(runs)} runs in {time.perf_counter() - started:.0f} s "
        f"incl. planning {plan_s:.1f} s",
    )
    path = write_results(FIGURES, data_dir=scratch_root(), notes=notes)
    print(f"[bench] wrote {path}", flush=True)

    bad = [r.problems() for r in runs if not r.ok]
    assert not bad, "\n".join(bad)
    assert all_passed, "an engine run's end-of-run check did not run"
