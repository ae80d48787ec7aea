"""The dashboard's migration progress: the burn-down over time and progress per wave."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.db.models import Count, Q

from migration.models import MigrationProgressDay, Wave, WaveMailboxState, WaveStatus

BURN_DOWN_DAYS = 90
WAVES_SHOWN = 20

# The chart's drawing area in SVG user units; the browser scales it to the page width.
CHART_WIDTH = 600
CHART_HEIGHT = 220
CHART_LEFT = 48
CHART_RIGHT = 8
CHART_TOP = 8
CHART_BOTTOM = 24

SERIES: tuple[tuple[str, str], ...] = (
    ("legacy", "Still on a legacy method"),
    ("migrated", "Migrated"),
    ("compliant", "Already compliant"),
    ("needs_attention", "Needs attention"),
)


@dataclass(frozen=True)
class Series:
    key: str
    label: str
    points: str  # SVG polyline points
    last: int


@dataclass(frozen=True)
class Tick:
    y: float
    value: int


@dataclass(frozen=True)
class BurnDown:
    days: list[MigrationProgressDay]
    series: list[Series]
    ticks: list[Tick]
    first_day: dt.date | None
    last_day: dt.date | None
    width: int = CHART_WIDTH
    height: int = CHART_HEIGHT
    left: int = CHART_LEFT
    right_edge: int = CHART_WIDTH - CHART_RIGHT
    baseline: int = CHART_HEIGHT - CHART_BOTTOM


def nice_ceiling(value: int) -> int:
    """The smallest 1, 2 or 5 times a power of ten at or above ``value``, so axis labels are round."""
    step = 1
    while True:
        for factor in (1, 2, 5):
            if step * factor >= value:
                return step * factor
        step *= 10


def burn_down(*, days: int = BURN_DOWN_DAYS) -> BurnDown:
    """The last ``days`` recorded days, oldest first, with the chart's lines worked out: one query."""
    rows = list(reversed(MigrationProgressDay.objects.order_by("-day")[:days]))
    top = nice_ceiling(
        max((max(row.legacy, row.migrated, row.compliant, row.needs_attention) for row in rows), default=0) or 1
    )
    plot_width = CHART_WIDTH - CHART_LEFT - CHART_RIGHT
    plot_height = CHART_HEIGHT - CHART_TOP - CHART_BOTTOM
    span = (rows[-1].day - rows[0].day).days if rows else 0

    def x(day: dt.date) -> float:
        return CHART_LEFT + (plot_width * (day - rows[0].day).days / span if span else plot_width / 2)

    def y(value: int) -> float:
        return CHART_TOP + plot_height * (1 - value / top)

    series = [
        Series(
            key=key,
            label=label,
            points=_points(rows, key, x, y),
            last=getattr(rows[-1], key) if rows else 0,
        )
        for key, label in SERIES
    ]
    ticks = [Tick(y=round(y(value), 1), value=value) for value in (0, top // 2, top)] if rows else []
    return BurnDown(
        days=rows,
        series=series,
        ticks=ticks,
        first_day=rows[0].day if rows else None,
        last_day=rows[-1].day if rows else None,
    )


def _points(rows: list[MigrationProgressDay], key: str, x, y) -> str:
    if len(rows) == 1:  # one day is a level line across the chart, not an invisible dot
        value = y(getattr(rows[0], key))
        return f"{CHART_LEFT},{value:.1f} {CHART_WIDTH - CHART_RIGHT},{value:.1f}"
    return " ".join(f"{x(row.day):.1f},{y(getattr(row, key)):.1f}" for row in rows)


@dataclass(frozen=True)
class WaveProgress:
    wave: Wave
    total: int
    migrated: int
    needs_attention: int
    url: str = ""

    @property
    def percent(self) -> int:
        return round(100 * self.migrated / self.total) if self.total else 0


def wave_progress(*, limit: int = WAVES_SHOWN) -> list[WaveProgress]:
    """The newest waves that were not cancelled, with migrated of total: one query."""
    waves = (
        Wave.objects.exclude(status=WaveStatus.CANCELLED)
        .annotate(
            total=Count("mailboxes", filter=~Q(mailboxes__state=WaveMailboxState.CANCELLED)),
            migrated=Count("mailboxes", filter=Q(mailboxes__state=WaveMailboxState.MIGRATED)),
            needs_attention=Count(
                "mailboxes",
                filter=Q(mailboxes__state__in=(WaveMailboxState.NEEDS_ATTENTION, WaveMailboxState.ROLLBACK_CONFLICT)),
            ),
        )
        .only("id", "name", "status", "created_at")
        .order_by("-created_at", "-id")[:limit]
    )
    return [
        WaveProgress(wave=wave, total=wave.total, migrated=wave.migrated, needs_attention=wave.needs_attention)
        for wave in waves
    ]
