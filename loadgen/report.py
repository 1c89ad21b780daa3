"""The run's figures: a table for people, JSON for machines."""

from __future__ import annotations

from typing import Any

from hdrh.histogram import HdrHistogram
from rich.console import Console
from rich.table import Table

from loadgen.run import Options
from loadgen.tally import Tally

PERCENTILES = (50.0, 90.0, 99.0, 99.9)
# A generator busier than this share of one core (Python runs on one) was itself the
# bottleneck, or close to it: its figures then say as much about it as about the server.
GENERATOR_BUSY_SHARE = 0.85


def latency_ms(histogram: HdrHistogram) -> dict[str, float]:
    if histogram.get_total_count() == 0:
        return {"count": 0}
    out: dict[str, float] = {"count": histogram.get_total_count()}
    for p in PERCENTILES:
        out[f"p{p:g}"] = histogram.get_value_at_percentile(p) / 1000
    out["max"] = histogram.get_max_value() / 1000
    return out


def results(
    tally: Tally,
    seconds: float,
    opts: Options,
    problems: list[str] | None,
    *,
    cpu_s: float = 0.0,
    warnings: list[str] | None = None,
) -> dict:
    """Everything the run measured; ``problems`` None when the check was not run;
    ``cpu_s`` the generator's own CPU seconds during the run."""
    warnings = list(warnings or [])
    cpu_share = cpu_s / seconds if seconds > 0 else 0.0
    if cpu_share > GENERATOR_BUSY_SHARE:
        warnings.append(
            f"the generator used {cpu_share:.0%} of a core: it may have been the bottleneck "
            "(more streams or a second generator process will tell)"
        )
    return {
        "mode": opts.mode,
        "options": opts._asdict(),
        "seconds": round(seconds, 3),
        "taps_offered": tally.taps_offered,
        "taps_answered": tally.taps_answered,
        "taps_ok": tally.taps_by_status["OK"],
        "taps_per_s_offered": round(tally.taps_offered / seconds, 1),
        "taps_per_s_answered": round(tally.taps_answered / seconds, 1),
        "batch_latency_ms": latency_ms(tally.batch_latency),
        "single_tap_latency_ms": latency_ms(tally.single_latency),
        "schedule_lag_ms": latency_ms(tally.schedule_lag),
        "generator_cpu_s": round(cpu_s, 3),
        "generator_cpu_share": round(cpu_share, 3),
        "warnings": warnings,
        "taps_by_status": dict(sorted(tally.taps_by_status.items())),
        "charged_fen": dict(sorted(tally.charged_fen.items())),
        "errors": dict(sorted(tally.errors.items())),
        "error_details": dict(sorted(tally.error_details.items())),
        "card_operations": dict(sorted(tally.card_ops.items())),
        "check": None if problems is None else {"passed": not problems, "problems": problems},
    }


def _latency_cells(figures: dict[str, float]) -> list[str]:
    if not figures.get("count"):
        return ["-"] * (len(PERCENTILES) + 1)
    keys = [f"p{p:g}" for p in PERCENTILES] + ["max"]
    return [f"{figures[k]:.2f}" for k in keys]


def print_results(console: Console, r: dict[str, Any]) -> None:
    day = r["mode"] == "day"
    table = Table(title=f"Load generator, mode {r['mode']}: {r['seconds']:.1f} s")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for name, value in _parameter_rows(r.get("parameters") or {}):
        table.add_row(name, value, style="dim")
    # A day's rate is the pace of the compressed day, not what the engine can take.
    pace = " (the day's pace, not capacity)" if day else ""
    table.add_row(f"taps/s answered{pace}", f"{r['taps_per_s_answered']:,.0f}")
    table.add_row("taps/s offered", f"{r['taps_per_s_offered']:,.0f}")
    table.add_row("taps answered / offered", f"{r['taps_answered']:,} / {r['taps_offered']:,}")
    for status, count in r["taps_by_status"].items():
        table.add_row(f"  taps {status}", f"{count:,}")
    for code, count in r["errors"].items():
        table.add_row(f"  failed calls {code}", f"{count:,}", style="red")
    for op, count in r["card_operations"].items():
        table.add_row(f"  card op {op}", f"{count:,}")
    table.add_row(
        "generator CPU (its own)",
        f"{r.get('generator_cpu_s', 0):.1f} s, {r.get('generator_cpu_share', 0):.0%} of a core",
    )
    console.print(table)
    lat = Table(title="Latency (ms)" + (", from each call's send" if day else ""))
    lat.add_column("")
    for p in PERCENTILES:
        lat.add_column(f"p{p:g}", justify="right")
    lat.add_column("max", justify="right")
    lat.add_row("batch acknowledgement", *_latency_cells(r["batch_latency_ms"]))
    lat.add_row("single POS/billing tap", *_latency_cells(r["single_tap_latency_ms"]))
    if day:
        lat.add_row("sends behind the day's schedule", *_latency_cells(r["schedule_lag_ms"]))
    console.print(lat)
    for warning in r.get("warnings", []):
        console.print(f"[yellow]warning[/]: {warning}")
    check = r["check"]
    if check is None:
        console.print("end-of-run check: not run")
    elif check["passed"]:
        console.print(
            "[green]end-of-run check passed[/]: server totals and sampled balances "
            "match the answers"
        )
    else:
        console.print("[bold red]END-OF-RUN CHECK FAILED[/]")
        for problem in check["problems"]:
            console.print(f"  [red]{problem}[/]")


def _parameter_rows(p: dict[str, Any]) -> list[tuple[str, str]]:
    """The run's parameters, those that matter to its mode."""
    if not p:
        return []
    rows = [("target", str(p["target"]))]
    if p["mode"] == "max":
        rows.append(("streams x window", f"{p['streams']} x {p['window']} batches in flight"))
    elif p["mode"] == "rate":
        rows.append(("offered rate", f"{p['rate_taps_s']:,.0f} validator taps/s"))
    if p["mode"] != "day" and (p["pos_rate"] or p["ops_rate"]):
        rows.append(("side traffic", f"{p['pos_rate']:g} POS taps/s, {p['ops_rate']:g} ops/s"))
    duration = f"{p['duration_s']:g} s" + (" for the whole day" if p["mode"] == "day" else "")
    rows.append(("duration", duration + (", clock driven" if p["drive_clock"] else "")))
    rows.append(("batch size", f"{p['batch_taps']:,} taps"))
    rows.append(("scale, seed", f"{p['scale']:g} x the reference city, seed {p['seed']}"))
    return rows
