"""``python -m loadgen.soak`` (``make soak``): every scenario at full size, one table.

Loopback only, bounded in count and time; exits 1 if anything was lost,
applied twice, or broke an invariant. ``--quick`` runs the CI sizes.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Annotated

import typer

from loadgen.soak import access, damage, kill, storage, storm
from loadgen.soak.hostile import hostile_input
from loadgen.soak.result import ScenarioResult, print_table


class Sizes:
    def __init__(self, quick: bool) -> None:
        self.kills = 3 if quick else 20
        self.crash_runs = 1 if quick else 3
        self.storm_batches = 60 if quick else 1_000
        self.fuzz_cases = 300 if quick else 5_000
        self.damaged_copies = 3 if quick else 20


Scenario = Callable[[str, int], Awaitable[ScenarioResult]]


def scenarios(sizes: Sizes) -> list[tuple[str, Scenario]]:
    """(name, run(root, seed)) for every scenario, in the table's order."""
    found: list[tuple[str, Scenario]] = [
        ("kill9", lambda root, seed: kill.kill9(root, sizes.kills, seed)),
    ]
    for point in kill.POINTS:
        found.append(
            (point, lambda root, seed, p=point: kill.crash_point(root, p, sizes.crash_runs, seed))
        )
    found += [
        ("map-full", storage.map_full),
        ("disk-full", storage.disk_full),
        ("stale-readers", storage.stale_readers),
        ("storm", lambda root, seed: storm.duplicate_storm(root, sizes.storm_batches, seed)),
        ("hostile", lambda root, seed: hostile_input(root, sizes.fuzz_cases, seed)),
        ("access", access.access_scenario),
        ("damage", lambda root, seed: damage.damaged_journal(root, sizes.damaged_copies, seed)),
    ]
    return found


async def run_all(sizes: Sizes, seed: int, only: list[str], root: str) -> list[ScenarioResult]:
    results = []
    for name, run in scenarios(sizes):
        if only and name not in only:
            continue
        started = time.monotonic()
        try:
            result = await run(root, seed)
        except Exception as exc:  # a scenario that crashed is a failed row, not a lost table
            result = ScenarioResult(name, violations=[f"the scenario failed: {exc!r}"])
        result.seconds = time.monotonic() - started
        results.append(result)
    return results


def main(
    quick: Annotated[bool, typer.Option(help="CI sizes: a few kills, fewer fuzz cases")] = False,
    seed: Annotated[int, typer.Option(help="seed of every random choice")] = 2030,
    only: Annotated[
        list[str] | None, typer.Option(help="run only this scenario (repeatable)")
    ] = None,
    keep: Annotated[bool, typer.Option(help="keep the data directories for a look")] = False,
) -> None:
    root = tempfile.mkdtemp(prefix="clearing-soak-")
    try:
        results = asyncio.run(run_all(Sizes(quick), seed, only or [], root))
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    print_table(results)
    if keep:
        print(f"data directories kept under {root}")
    if not all(r.passed for r in results):
        raise typer.Exit(1)


if __name__ == "__main__":
    typer.run(main)
