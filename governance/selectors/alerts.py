"""Reads for the alert review queue and the health pages, scoped to what a person may see."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.db.models import Count, Q, QuerySet

from governance.models import OPEN_STATUSES, AlertStatus, HealthSync, HealthSyncStatus, MailboxAlert, ManagedMailbox
from portal.accounts.models import Team, User, display_name_in
from portal.accounts.roles import perm

STATUS_FILTERS = {
    "open": ("Open or acknowledged", Q(status__in=OPEN_STATUSES)),
    "resolved": ("Resolved", Q(status=AlertStatus.RESOLVED)),
    "all": ("All", Q()),
}


def sees_everything(user: User) -> bool:
    return user.has_perm(perm("administer_platform"))


def visible_mailboxes(user: User) -> QuerySet[ManagedMailbox]:
    """Platform admins see every managed mailbox; others those they own or whose team they own."""
    mailboxes = ManagedMailbox.objects.all()
    if sees_everything(user):
        return mailboxes
    return mailboxes.filter(Q(owners=user) | Q(team__business_owners=user)).distinct()


def visible_teams(user: User) -> QuerySet[Team]:
    teams = Team.objects.all()
    return teams if sees_everything(user) else teams.filter(business_owners=user)


def visible_alerts(user: User) -> QuerySet[MailboxAlert]:
    alerts = MailboxAlert.objects.select_related("mailbox", "assigned_to")
    if sees_everything(user):
        return alerts
    return alerts.filter(mailbox__in=visible_mailboxes(user).values("pk"))


@dataclass(frozen=True)
class QueueSummary:
    urgent: int
    errors: int
    warnings: int
    unassigned: int


def alert_queue(
    user: User, *, status: str = "open", level: int | None = None, mine: bool = False
) -> QuerySet[MailboxAlert]:
    """Urgent first, then errors before warnings, each grouped by mailbox (profiles last), newest first.

    As plain values (``QUEUE_FIELDS``); ``queue_rows`` turns a page of them into what the list shows.
    """
    alerts = visible_alerts(user).filter(STATUS_FILTERS.get(status, STATUS_FILTERS["open"])[1])
    if level:
        alerts = alerts.filter(level=level)
    if mine:
        alerts = alerts.filter(assigned_to=user)
    return alerts.order_by(
        "-urgent", "-level", "mailbox__name", "mailbox_id", "profile_name", "-last_seen_at", "id"
    ).values(*QUEUE_FIELDS)


# What the queue shows of each alert, its mailbox and whoever it is assigned to.
QUEUE_FIELDS = (
    "id",
    "level",
    "profile_name",
    "urgent",
    "source",
    "code",
    "text",
    "first_seen_at",
    "last_seen_at",
    "occurrences",
    "status",
    "reopened_count",
    "mailbox_id",
    "mailbox__name",
    "mailbox__email_address",
    "assigned_to_id",
    "assigned_to__first_name",
    "assigned_to__last_name",
    "assigned_to__username",
)


def queue_rows(values: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """A page of ``alert_queue`` as the list draws it: its values, the status's label and the assignee's name."""
    return [
        {**alert, "status_label": AlertStatus(alert["status"]).label, "assignee": display_name_in(alert, "assigned_to")}
        for alert in values
    ]


def queue_summary(user: User) -> QueueSummary:
    counts = (
        visible_alerts(user)
        .filter(status__in=OPEN_STATUSES)
        .aggregate(
            urgent=Count("pk", filter=Q(urgent=True)),
            errors=Count("pk", filter=Q(level=3)),
            warnings=Count("pk", filter=Q(level=2)),
            unassigned=Count("pk", filter=Q(assigned_to__isnull=True)),
        )
    )
    return QueueSummary(**counts)


def last_health_sync() -> HealthSync | None:
    return HealthSync.objects.order_by("-requested_at", "-id").first()


def last_successful_health_sync() -> HealthSync | None:
    return HealthSync.objects.filter(status=HealthSyncStatus.SUCCEEDED).order_by("-finished_at").first()
