"""The burn-down: mailboxes by state per day.

Each live inventory mailbox is counted once: migrated or needing attention by its latest wave
entry, otherwise compliant or still legacy by the inventory's readiness.
"""

from __future__ import annotations

from django.db.models import Count, OuterRef, Q, Subquery
from django.utils import timezone

from migration.models import InventoryMailbox, MigrationProgressDay, Readiness, WaveMailbox, WaveMailboxState

NEEDS_ATTENTION_STATES = (WaveMailboxState.NEEDS_ATTENTION, WaveMailboxState.ROLLBACK_CONFLICT)


def progress_counts() -> dict[str, int]:
    """Live inventory mailboxes by burn-down state, from one query."""
    latest = WaveMailbox.objects.filter(mailbox_id=OuterRef("pk")).order_by("-id").values("state")[:1]
    migrated = Q(latest_state=WaveMailboxState.MIGRATED)
    attention = Q(latest_state__in=NEEDS_ATTENTION_STATES)
    # A mailbox never in a wave has no latest state; NULL must not fall out of the "neither" buckets.
    unsettled = Q(latest_state__isnull=True) | ~(migrated | attention)
    compliant = Q(readiness=Readiness.COMPLIANT)
    return (
        InventoryMailbox.objects.filter(removed_at__isnull=True)
        .annotate(latest_state=Subquery(latest))
        .aggregate(
            migrated=Count("id", filter=migrated),
            needs_attention=Count("id", filter=attention),
            compliant=Count("id", filter=unsettled & compliant),
            legacy=Count("id", filter=unsettled & ~compliant),
        )
    )


def progress_record_today() -> MigrationProgressDay:
    """Count the inventory's mailboxes by state now and store them as today's row (overwriting it)."""
    counts = progress_counts()
    now = timezone.now()
    today = timezone.localdate(now)
    # One INSERT … ON CONFLICT, so workers finishing mailboxes at the same moment never collide.
    MigrationProgressDay.objects.bulk_create(
        [MigrationProgressDay(day=today, recorded_at=now, **counts)],
        update_conflicts=True,
        unique_fields=["day"],
        update_fields=["legacy", "compliant", "migrated", "needs_attention", "recorded_at"],
    )
    return MigrationProgressDay.objects.get(day=today)
