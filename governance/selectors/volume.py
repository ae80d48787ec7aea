"""Volume and attachment charts for a mailbox or a team, worked out for the server-drawn SVG."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from django.utils import timezone

from governance.services.volume import DayFigures, daily_figures, max_upload_bytes
from migration.selectors.progress import nice_ceiling
from portal.policy.services import policy_get

CHART_DAYS = 14
WIDTH, HEIGHT = 640, 220
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 12, 28
MB = 1024 * 1024


@dataclass(frozen=True)
class Bar:
    x: float
    width: float
    y: float
    height: float
    label: str  # what a screen reader's table row says; the SVG title too


@dataclass(frozen=True)
class Tick:
    y: float
    label: str


@dataclass(frozen=True)
class Chart:
    title: str
    description: str
    series: list[tuple[str, str, list[Bar]]]  # (key, label, bars)
    ticks: list[Tick]
    threshold_y: float | None
    threshold_label: str
    first_day: dt.date
    last_day: dt.date
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    right_edge: int = WIDTH - RIGHT
    baseline: int = HEIGHT - BOTTOM


@dataclass(frozen=True)
class VolumeReport:
    days: list[DayFigures]
    volume: Chart
    attachments: Chart
    total_emails: int
    total_attachment_bytes: int
    largest_attachment: int
    busiest: DayFigures | None


def _scale(top: float):
    plot = HEIGHT - TOP - BOTTOM

    def y(value: float) -> float:
        return round(TOP + plot * (1 - value / top), 1)

    return y


def _bars(
    days: list[DayFigures], stacks: list[tuple[str, str, Callable[[DayFigures], float]]], top: float, unit: str
) -> list[tuple[str, str, list[Bar]]]:
    plot_width = WIDTH - LEFT - RIGHT
    slot = plot_width / max(len(days), 1)
    bar_width = round(slot * 0.7, 1)
    y = _scale(top)
    series: list[tuple[str, str, list[Bar]]] = [(key, label, []) for key, label, _ in stacks]
    for index, day in enumerate(days):
        x = round(LEFT + index * slot + (slot - bar_width) / 2, 1)
        below = 0.0
        for (_key, label, value_of), (_, _, bars) in zip(stacks, series, strict=True):
            value = value_of(day)
            top_y, bottom_y = y(below + value), y(below)
            bars.append(
                Bar(
                    x=x,
                    width=bar_width,
                    y=top_y,
                    height=round(bottom_y - top_y, 1),
                    label=f"{day.day:%-d %b}: {value:g}{unit} {label.lower()}",
                )
            )
            below += value
    return series


def volume_report(*, mailbox_ids: Iterable[int], days: int = CHART_DAYS, today: dt.date | None = None) -> VolumeReport:
    """The last ``days`` days of email counts and attachment sizes for these mailboxes together."""
    ids = list(mailbox_ids)
    end = today or timezone.localdate()
    start = end - dt.timedelta(days=days - 1)
    figures = daily_figures(mailbox_ids=ids, start=start, end=end)
    policy = policy_get()
    per_mailbox_threshold = policy.daily_volume_threshold

    volume_top = nice_ceiling(max([day.total for day in figures] + [per_mailbox_threshold if len(ids) == 1 else 0, 1]))
    volume_y = _scale(volume_top)
    volume = Chart(
        title="Emails a day",
        description=f"Emails received and sent each day from {start:%-d %B} to {end:%-d %B %Y}. "
        "The numbers are in the table below the charts.",
        series=_bars(
            figures,
            [("incoming", "Received", lambda d: d.incoming), ("outgoing", "Sent", lambda d: d.outgoing)],
            volume_top,
            "",
        ),
        ticks=[Tick(y=volume_y(value), label=f"{value:,}") for value in (0, volume_top // 2, volume_top)],
        threshold_y=volume_y(per_mailbox_threshold) if len(ids) == 1 else None,
        threshold_label=f"Policy threshold: {per_mailbox_threshold:,} a day",
        first_day=start,
        last_day=end,
    )

    limit = max_upload_bytes()
    near_limit = limit * policy.attachment_near_limit_percent / 100
    size_top_bytes = max([day.attachment_bytes for day in figures] + [day.largest_attachment for day in figures] + [1])
    size_top = nice_ceiling(max(1, int(-(-size_top_bytes // MB)))) if size_top_bytes >= MB else 1
    size_y = _scale(size_top)
    attachments = Chart(
        title="Attachment megabytes a day",
        description=f"Total size of attachments each day, and the largest single attachment, from {start:%-d %B} "
        f"to {end:%-d %B %Y}. The numbers are in the table below the charts.",
        series=_bars(
            figures,
            [("attachments", "Attachments (MB)", lambda d: round(d.attachment_bytes / MB, 2))],
            size_top,
            " MB",
        ),
        ticks=[Tick(y=size_y(value), label=f"{value:g} MB") for value in (0, size_top / 2, size_top)],
        threshold_y=size_y(near_limit / MB) if near_limit / MB <= size_top else None,
        threshold_label=f"{policy.attachment_near_limit_percent}% of the {limit / MB:.1f} MB upload limit",
        first_day=start,
        last_day=end,
    )
    busiest = max(figures, key=lambda d: d.total) if any(day.total for day in figures) else None
    return VolumeReport(
        days=figures,
        volume=volume,
        attachments=attachments,
        total_emails=sum(day.total for day in figures),
        total_attachment_bytes=sum(day.attachment_bytes for day in figures),
        largest_attachment=max((day.largest_attachment for day in figures), default=0),
        busiest=busiest,
    )
