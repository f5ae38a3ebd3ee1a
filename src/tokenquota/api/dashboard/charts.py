"""The numbers behind the dashboard's inline SVG: gauges, bars and stacked columns.

Pure geometry, no markup: the templates draw what these return, so a chart
needs no script and no asset from anywhere (the machine may be offline).
Widths are in the SVG's own user units, scaled by its ``viewBox``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from decimal import Decimal
from typing import Final

from tokenquota.domain.decisions import LimitStatus
from tokenquota.domain.insights import Consumer
from tokenquota.domain.metrics import Number
from tokenquota.domain.views import HistoryPoint

GAUGE_WIDTH: Final = 300.0
BAR_WIDTH: Final = 200.0
CHART_WIDTH: Final = 640.0
CHART_HEIGHT: Final = 200.0
# Colour-blind-safe (Okabe-Ito); the legend names each colour, the table the numbers.
PALETTE: Final = (
    "#0072b2",
    "#e69f00",
    "#009e73",
    "#cc79a7",
    "#56b4e9",
    "#d55e00",
    "#f0e442",
    "#000000",
)


def show(value: Number | None) -> str:
    """A number as a person reads it: thousands grouped, credits as their decimal."""
    if value is None:
        return "-"
    if isinstance(value, Decimal):
        return f"{value:,f}"
    return f"{value:,}"


def when(value: datetime, tz: tzinfo, fmt: str = "%Y-%m-%d %H:%M %Z") -> str:
    """A time in the store's zone, the zone the periods and resets are computed in."""
    return value.astimezone(tz).strftime(fmt)


@dataclass(frozen=True, slots=True)
class Gauge:
    status: LimitStatus
    shadow_hits: int | None
    used_width: float
    held_width: float
    over: bool  # used (with holds) is at or past the limit

    @property
    def percent(self) -> str:
        limit = self.status.limit
        if limit is None or limit <= 0:
            return "unlimited" if limit == -1 else "-"
        used = (self.status.used or 0) + self.status.reserved
        return f"{Decimal(used) * 100 / Decimal(limit):.0f} %"


def gauge(status: LimitStatus, shadow_hits: int | None) -> Gauge:
    used = Decimal(status.used or 0)
    held = Decimal(status.reserved)
    limit = Decimal(status.limit)
    if limit <= 0:  # unlimited (-1) or a zero limit: nothing to scale against
        full = limit == 0 and used + held > 0
        return Gauge(status, shadow_hits, GAUGE_WIDTH if full else 0.0, 0.0, full)
    used_part = min(used / limit, Decimal(1))
    held_part = min(held / limit, Decimal(1) - used_part)
    return Gauge(
        status,
        shadow_hits,
        float(used_part) * GAUGE_WIDTH,
        float(held_part) * GAUGE_WIDTH,
        used + held >= limit,
    )


@dataclass(frozen=True, slots=True)
class Bar:
    consumer: Consumer
    width: float


def bars(consumers: Sequence[Consumer]) -> list[Bar]:
    """Each consumer's bar as a share of the largest, so the ranking reads at a glance."""
    top = max((Decimal(c.value) for c in consumers), default=Decimal(0))
    return [
        Bar(c, float(Decimal(c.value) / top) * BAR_WIDTH if top > 0 else 0.0) for c in consumers
    ]


@dataclass(frozen=True, slots=True)
class Segment:
    model: str
    colour: str
    y: float
    height: float
    value: Number


@dataclass(frozen=True, slots=True)
class Column:
    start: datetime
    x: float
    width: float
    total: Number
    segments: tuple[Segment, ...]


@dataclass(frozen=True, slots=True)
class Chart:
    metric: str
    columns: tuple[Column, ...]
    legend: tuple[tuple[str, str], ...]  # (model, colour)
    peak: Number
    rows: tuple[tuple[datetime, tuple[Number | None, ...], Number], ...]  # for the table
    ticks: tuple[tuple[float, datetime, str], ...]  # (x, period start, text-anchor)


def stacked(metric: str, points: Sequence[HistoryPoint], slots: Sequence[datetime]) -> Chart:
    """One column slot per period of the range (``slots``, their starts, oldest first),
    each split by model; the tallest column reaches full height, empty periods stay gaps."""
    mine = [p for p in points if p.metric == metric]
    models = sorted({p.model or "" for p in mine})
    colours = {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(models)}
    periods: dict[datetime, dict[str, Number]] = defaultdict(dict)
    for p in mine:
        periods[p.start][p.model or ""] = p.value
    starts = sorted(periods)
    totals = {s: sum((Decimal(v) for v in periods[s].values()), Decimal(0)) for s in starts}
    peak = max(totals.values(), default=Decimal(0))
    where = {s: i for i, s in enumerate(slots)}
    step = CHART_WIDTH / max(len(slots), 1)
    columns = []
    for s in starts:
        y = CHART_HEIGHT
        segments = []
        for m in models:
            value = periods[s].get(m)
            if value is None:
                continue
            height = float(Decimal(value) / peak) * CHART_HEIGHT if peak > 0 else 0.0
            y -= height
            segments.append(Segment(m or "(none)", colours[m], y, height, value))
        x = where.get(s, 0) * step + step * 0.1
        columns.append(Column(s, x, step * 0.8, _number(totals[s]), tuple(segments)))
    rows = tuple((s, tuple(periods[s].get(m) for m in models), _number(totals[s])) for s in starts)
    ticks: list[tuple[float, datetime, str]] = []
    if slots:  # the first, middle and last periods, kept inside the drawing
        ticks.append((0.0, slots[0], "start"))
        if len(slots) > 2:
            middle = len(slots) // 2
            ticks.append((middle * step + step / 2, slots[middle], "middle"))
        if len(slots) > 1:
            ticks.append((CHART_WIDTH, slots[-1], "end"))
    return Chart(
        metric,
        tuple(columns),
        tuple((m or "(none)", colours[m]) for m in models),
        _number(peak),
        rows,
        tuple(ticks),
    )


def _number(value: Decimal) -> Number:
    return int(value) if value == value.to_integral_value() else value
