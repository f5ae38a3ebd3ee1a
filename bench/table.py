"""The one table of ``make bench``, and the same rows as JSON with the machine they ran on."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from bench.common import Figures

ROOT = Path(__file__).resolve().parent.parent
ORDER = {"in-process": 0, "HTTP": 1, "hot row": 2}  # the table's sections, top to bottom


@dataclass
class Row:
    """One line of the table: a tokenquota measurement beside the floor measured with it."""

    name: str  # what a reader looks up: "SQLite, in-process"
    backend: str  # memory, sqlite, postgres, redis, cluster
    via: str  # in-process, HTTP, hot row
    figures: Figures
    floor: str
    floor_figures: Figures
    target: float | None = None  # the minimum ratio, where it sets one
    driver: dict[str, Any] = field(default_factory=dict)  # HTTP: the load generator's own figures

    @property
    def ratio(self) -> float:
        """tokenquota's rate / the floor's, as in the issue: higher is better, 1.0 = the floor."""
        return self.figures.rate / self.floor_figures.rate if self.floor_figures.rate else 0.0

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.ratio >= self.target

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "backend": self.backend,
            "via": self.via,
            "tokenquota": asdict(self.figures),
            "floor": {"name": self.floor, **asdict(self.floor_figures)},
            "ratio": round(self.ratio, 4),
            "target": self.target,
            "met": self.met,
            "driver": self.driver,
        }


def rate(f: Figures) -> str:
    return f"{f.rate:,.0f}" + ("*" if f.cut else "")


def micros(value: float) -> str:
    return f"{value:,.0f}"


def wide_console() -> Console:
    """A console wide enough for the table even when the output goes to a file or a pipe."""
    return Console(width=max(Console().width, 170))


def print_table(console: Console, title: str, rows: list[Row]) -> None:
    table = Table(title=title, box=box.SIMPLE_HEAD)
    columns = (
        "row",
        "tokenquota /s",
        "p50 µs",
        "p99 µs",
        "floor",
        "floor /s",
        "p50 µs ",
        "p99 µs ",
        "ratio",
        "target",
    )
    for column in columns:
        table.add_column(column, justify="left" if column in ("row", "floor") else "right")
    previous = None
    for row in sorted(rows, key=lambda r: ORDER.get(r.via, len(ORDER))):
        if previous is not None and row.via != previous:
            table.add_section()
        previous = row.via
        mark = {None: "", True: " ok", False: " no"}[row.met]
        table.add_row(
            row.name,
            rate(row.figures),
            micros(row.figures.p50),
            micros(row.figures.p99),
            row.floor,
            rate(row.floor_figures),
            micros(row.floor_figures.p50),
            micros(row.floor_figures.p99),
            f"{row.ratio:.3f}",
            f"≥ {row.target}{mark}" if row.target is not None else "",
        )
    console.print(table)


def machine(load_before: tuple[float, float, float]) -> dict[str, Any]:
    """What the figures ran on; the load average says how much else was running."""
    return {
        "cpus": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
    }


def git_commit() -> dict[str, Any]:
    """The commit of the tree the bench ran from, and whether it had changes on top."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False
        )
        return done.stdout.strip()

    return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain"))}


def write_json(
    path: Path, rows: list[Row], *, load_before: tuple[float, float, float], extra: dict[str, Any]
) -> None:
    """Every row with the machine, date and commit, for comparing runs later."""
    document = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        **git_commit(),
        "machine": machine(load_before),
        **extra,
        "rows": [row.as_json() for row in rows],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")
