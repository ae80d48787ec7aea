"""Reading the audit trail: filtering and keyset pages that cost the same at any depth."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from django.db.models import QuerySet
from django.utils import timezone

from .models import AuditEvent, AuditVerification

PAGE_SIZE = 50


@dataclass(frozen=True)
class AuditFilters:
    actor: str = ""
    action: str = ""
    object_type: str = ""
    object_id: str = ""
    outcome: str = ""
    date_from: dt.date | None = None
    date_to: dt.date | None = None

    def as_dict(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items() if value not in ("", None)}


def audit_events_filtered(filters: AuditFilters) -> QuerySet[AuditEvent]:
    events = AuditEvent.objects.all()
    if filters.actor:
        events = events.filter(actor_name__icontains=filters.actor)
    if filters.action:
        events = events.filter(action__istartswith=filters.action)
    if filters.object_type:
        events = events.filter(object_type__iexact=filters.object_type)
    if filters.object_id:
        events = events.filter(object_id=filters.object_id)
    if filters.outcome:
        events = events.filter(outcome=filters.outcome)
    tz = timezone.get_current_timezone()
    if filters.date_from:
        start = dt.datetime.combine(filters.date_from, dt.time.min, tzinfo=tz)
        events = events.filter(created_at__gte=start)
    if filters.date_to:
        end = dt.datetime.combine(filters.date_to + dt.timedelta(days=1), dt.time.min, tzinfo=tz)
        events = events.filter(created_at__lt=end)
    return events


@dataclass(frozen=True)
class AuditPage:
    events: list[AuditEvent]
    older_than: int | None  # pass as ?before= for the next (older) page
    newer_than: int | None  # pass as ?after= for the previous (newer) page


def audit_events_page(
    events: QuerySet[AuditEvent], *, before: int | None = None, after: int | None = None, size: int = PAGE_SIZE
) -> AuditPage:
    """Newest first, ``size`` at a time, keyed on ``seq`` rather than OFFSET."""
    if after is not None:
        rows = list(events.filter(seq__gt=after).order_by("seq")[: size + 1])
        has_newer = len(rows) > size
        rows = list(reversed(rows[:size]))
        has_older = events.filter(seq__lt=rows[-1].seq).exists() if rows else False
    else:
        scoped = events.filter(seq__lt=before) if before is not None else events
        rows = list(scoped.order_by("-seq")[: size + 1])
        has_older = len(rows) > size
        rows = rows[:size]
        has_newer = before is not None and bool(rows) and events.filter(seq__gt=rows[0].seq).exists()
    return AuditPage(
        events=rows,
        older_than=rows[-1].seq if rows and has_older else None,
        newer_than=rows[0].seq if rows and has_newer else None,
    )


def audit_verifications_recent(limit: int = 5) -> list[AuditVerification]:
    return list(AuditVerification.objects.select_related("requested_by").order_by("-requested_at", "-id")[:limit])
