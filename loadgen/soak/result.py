"""One row of the soak's table per scenario, and the table itself."""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from loadgen.soak.audit import Audit


@dataclass
class ScenarioResult:
    scenario: str
    runs: int = 0
    acknowledged: int = 0
    lost: int = 0
    duplicated: int = 0
    violations: list[str] = field(default_factory=list)
    seconds: float = 0.0
    note: str = ""  # what the runs showed besides the counts

    @property
    def passed(self) -> bool:
        return not (self.lost or self.duplicated or self.violations)

    def take(self, audit: Audit, where: str) -> None:
        """Fold in an audit of the whole log so far (counts are cumulative: keep the worst)."""
        self.acknowledged = max(self.acknowledged, audit.acknowledged)
        self.lost = max(self.lost, audit.lost)
        self.duplicated = max(self.duplicated, audit.duplicated)
        self.violations += [f"{where}: {v}" for v in audit.violations]
        if audit.violation_count > len(audit.violations):
            extra = audit.violation_count - len(audit.violations)
            self.violations.append(f"{where}: and {extra} more")

    def check(self, ok: bool, what: str) -> None:
        if not ok:
            self.violations.append(what)


def print_table(results: list[ScenarioResult], console: Console | None = None) -> None:
    console = console or Console(width=120)
    table = Table(title="soak: crash safety and hostile input")
    for name in ("scenario", "runs", "acknowledged", "lost", "duplicated"):
        table.add_column(name, justify="left" if name == "scenario" else "right")
    table.add_column("invariant violations", justify="right")
    table.add_column("seconds", justify="right")
    for r in results:
        table.add_row(
            r.scenario,
            f"{r.runs:,}",
            f"{r.acknowledged:,}",
            str(r.lost),
            str(r.duplicated),
            str(len(r.violations)),
            f"{r.seconds:.0f}",
        )
    console.print(table)
    for r in results:
        if r.note:
            console.print(f"{escape(r.scenario)}: {escape(r.note)}")
        for violation in r.violations:
            console.print(f"[red]{escape(r.scenario)}[/red]: {escape(violation)}")
