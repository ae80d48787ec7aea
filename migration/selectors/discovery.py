"""Reads for the discovery page: the latest runs and the one in progress."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.utils import timezone

from migration.models import InventorySync, OrganizationSnapshot, SyncStatus

RECENT_RUNS = 10


@dataclass(frozen=True)
class SyncRow:
    sync: InventorySync
    duration: dt.timedelta | None  # running: so far

    @property
    def duration_text(self) -> str:
        if self.duration is None:
            return ""
        seconds = int(self.duration.total_seconds())
        hours, rest = divmod(seconds, 3600)
        minutes, seconds = divmod(rest, 60)
        if hours:
            return f"{hours} h {minutes} min"
        if minutes:
            return f"{minutes} min {seconds} s"
        return f"{seconds} s"


@dataclass(frozen=True)
class DiscoveryOverview:
    runs: list[SyncRow]
    active: SyncRow | None
    last_succeeded: InventorySync | None
    organisation: OrganizationSnapshot | None


def inventory_sync_active() -> InventorySync | None:
    """The queued or running discovery, if any (there is at most one)."""
    return (
        InventorySync.objects.filter(status__in=(SyncStatus.QUEUED, SyncStatus.RUNNING))
        .select_related("requested_by")
        .order_by("-requested_at", "-id")
        .first()
    )


def _row(sync: InventorySync, now: dt.datetime) -> SyncRow:
    if sync.started_at is None:
        return SyncRow(sync, None)
    return SyncRow(sync, (sync.finished_at or now) - sync.started_at)


def discovery_overview(*, limit: int = RECENT_RUNS) -> DiscoveryOverview:
    """The page's data in three queries, however many runs there have been."""
    now = timezone.now()
    runs = [
        _row(sync, now)
        for sync in InventorySync.objects.select_related("requested_by").order_by("-requested_at", "-id")[:limit]
    ]
    active = next((row for row in runs if row.sync.status in (SyncStatus.QUEUED, SyncStatus.RUNNING)), None)
    last_succeeded = InventorySync.objects.filter(status=SyncStatus.SUCCEEDED).order_by("-finished_at", "-id").first()
    organisation = OrganizationSnapshot.objects.filter(pk=1, taken_at__isnull=False).first()
    return DiscoveryOverview(runs=runs, active=active, last_succeeded=last_succeeded, organisation=organisation)
