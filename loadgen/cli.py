"""`python -m loadgen` and `clearing loadgen`: drive a city day against a running server."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Annotated

import typer
from rich.console import Console

from clearing.runtime.config import load_config
from clearing.tools.demo_city import demo_config
from loadgen.report import print_results
from loadgen.run import Options
from loadgen.session import Session

# One command with its options: no "COMMAND [ARGS]..." in the usage line, no subcommands.
app = typer.Typer(add_completion=False, help=__doc__, subcommand_metavar="")


@app.callback(invoke_without_command=True)
def loadgen(
    target: Annotated[str, typer.Option(help="the server's gRPC address")] = "127.0.0.1:50051",
    metrics: Annotated[
        str, typer.Option(help="the server's /metrics URL ('' to skip the totals check)")
    ] = "http://127.0.0.1:9464/metrics",
    config: Annotated[
        str | None, typer.Option(help="the server's TOML (default: the demo city)")
    ] = None,
    mode: Annotated[str, typer.Option(help="day | rate | max")] = "max",
    duration: Annotated[float, typer.Option(help="seconds (day mode: the whole day)")] = 30.0,
    rate: Annotated[float, typer.Option(help="rate mode: validator taps/s offered")] = 100_000.0,
    streams: Annotated[int, typer.Option(help="max mode: concurrent streams")] = 8,
    window: Annotated[int, typer.Option(help="max mode: batches in flight a stream")] = 8,
    pos_rate: Annotated[float, typer.Option(help="single POS/billing taps/s (rate, max)")] = 0.0,
    ops_rate: Annotated[float, typer.Option(help="card operations/s (rate, max)")] = 0.0,
    scale: Annotated[float, typer.Option(help="city day size; 1 = the reference city")] = 100.0,
    batch_taps: Annotated[int, typer.Option(help="taps a validator batch")] = 500,
    seed: Annotated[int, typer.Option(help="the model's seed: same seed, same day")] = 1,
    sample: Annotated[int, typer.Option(help="cards whose balances are checked")] = 500,
    drive_clock: Annotated[
        bool, typer.Option(help="day mode: move the server's manual clock with the day")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the figures as JSON")] = False,
) -> None:
    """Run a seeded city day against the server; exit 1 if the end-of-run check fails."""
    if mode not in ("day", "rate", "max"):
        raise typer.BadParameter("mode must be day, rate or max")
    opts = Options(mode, duration, rate, streams, window, pos_rate, ops_rate, drive_clock)
    city = load_config(config) if config else demo_config()
    session = Session(
        target,
        city,
        opts,
        scale=scale,
        seed=seed,
        batch_taps=batch_taps,
        sample=sample,
        metrics_url=metrics or None,
    )
    result = asyncio.run(session.run())
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2, sort_keys=True) + "\n")
    else:
        print_results(Console(), result)
    if result["check"] and not result["check"]["passed"]:
        raise typer.Exit(1)


def main() -> None:
    app()
