"""Alerts to review: recording what the health sync sees, and people working through them.

Dataverse keeps one ``tracelogs`` record per mailbox and cause and bumps ``modifiedon`` when it
recurs; the portal mirrors that — one alert per record, its count and last-seen moving on each
recurrence, and a resolved alert reopening when the problem comes back. Threshold breaches the
portal detects itself are alerts too, one per mailbox, threshold and day.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.utils import timezone

from governance.models import (
    OPEN_STATUSES,
    AlertLevel,
    AlertStatus,
    MailboxAlert,
    ManagedMailbox,
)
from portal.accounts.models import User
from portal.accounts.roles import perm
from portal.audit.services import audit_record
from portal.exceptions import InvalidStateError, PermissionDeniedError, PortalError

RESOLUTION_NOTE_MAX = 2000
# Microsoft's words when the platform has given up on a mailbox after repeated failures.
DISABLED_PHRASES = ("has been disabled", "mailbox is disabled", "disabled for synchronizing")


class AlertError(PortalError):
    """An alert action was refused; the message says why."""


@dataclass(frozen=True)
class Observation:
    """What the sync learnt about one alert: new, recurred, reopened or unchanged."""

    alert: MailboxAlert
    outcome: str  # "new", "recurred", "reopened", "unchanged"


def _says_disabled(text: str) -> bool:
    lowered = text.casefold()
    return any(phrase in lowered for phrase in DISABLED_PHRASES)


def alert_observe(
    *,
    key: str,
    source: str,
    mailbox: ManagedMailbox | None,
    level: int,
    code: str,
    text: str,
    details: str = "",
    first_seen: dt.datetime,
    last_seen: dt.datetime,
    profile_id: Any = None,
    profile_name: str = "",
) -> Observation:
    """Record one sighting of an alert; a later ``last_seen`` than recorded is a recurrence."""
    now = timezone.now()
    urgent = bool(mailbox is not None and mailbox.disabled_by_platform) or (
        level == AlertLevel.ERROR and _says_disabled(text)
    )
    with transaction.atomic():
        alert = MailboxAlert.objects.select_for_update().filter(key=key).first()
        if alert is None:
            alert = MailboxAlert.objects.create(
                key=key,
                source=source,
                mailbox=mailbox,
                profile_id=profile_id,
                profile_name=profile_name[:300],
                level=level,
                code=code[:60],
                text=text,
                details=details,
                first_seen_at=first_seen,
                last_seen_at=last_seen,
                urgent=urgent,
                updated_at=now,
            )
            return Observation(alert, "new")
        if last_seen <= alert.last_seen_at:
            if urgent and not alert.urgent:
                alert.urgent = True
                alert.save(update_fields=["urgent"])
            return Observation(alert, "unchanged")
        before = {"status": alert.status, "occurrences": alert.occurrences, "last_seen_at": alert.last_seen_at}
        alert.occurrences += 1
        alert.last_seen_at = last_seen
        alert.level, alert.text, alert.details = level, text, details
        alert.urgent = alert.urgent or urgent
        alert.updated_at = now
        fields = ["occurrences", "last_seen_at", "level", "text", "details", "urgent", "updated_at"]
        outcome = "recurred"
        if alert.status == AlertStatus.RESOLVED:
            alert.status = AlertStatus.OPEN
            alert.reopened_count += 1
            alert.acknowledged_at = None
            fields += ["status", "reopened_count", "acknowledged_at"]
            outcome = "reopened"
            audit_record(
                actor=None,
                actor_name="health sync",
                action="alert.reopened",
                object_type="alert",
                object_id=alert.pk,
                before=before,
                after={"status": alert.status, "occurrences": alert.occurrences, "last_seen_at": last_seen},
                reason="The problem recurred after the alert was resolved.",
            )
        alert.save(update_fields=fields)
        return Observation(alert, outcome)


def alerts_mark_urgent(*, mailbox: ManagedMailbox) -> int:
    """Flag a mailbox's open alerts as urgent: the platform has disabled it."""
    return MailboxAlert.objects.filter(mailbox=mailbox, status__in=OPEN_STATUSES, urgent=False).update(
        urgent=True, updated_at=timezone.now()
    )


# --- people working through the queue ---------------------------------------------------------


def user_may_handle(user: User, alert: MailboxAlert) -> bool:
    """Platform admins handle every alert; owners handle their own mailboxes' alerts."""
    if user.has_perm(perm("administer_platform")):
        return True
    return alert.mailbox_id is not None and alert.mailbox.owners.filter(pk=user.pk).exists()


def _locked(actor: User, alert_id: int) -> MailboxAlert:
    alert = MailboxAlert.objects.select_for_update(of=("self",)).select_related("mailbox").filter(pk=alert_id).first()
    if alert is None or not user_may_handle(actor, alert):
        raise PermissionDeniedError("You cannot work on this alert.")
    return alert


def _snapshot(alert: MailboxAlert) -> dict[str, Any]:
    return {
        "status": alert.status,
        "assigned_to": alert.assigned_to.username if alert.assigned_to_id else None,
        "resolution_note": alert.resolution_note,
    }


def alert_assign(*, actor: User, alert_id: int, assignee: User | None) -> MailboxAlert:
    with transaction.atomic():
        alert = _locked(actor, alert_id)
        if alert.status == AlertStatus.RESOLVED:
            raise InvalidStateError("This alert is resolved. It reopens by itself if the problem comes back.")
        if assignee is not None and not user_may_handle(assignee, alert):
            raise AlertError(
                f"{assignee.get_full_name() or assignee.username} cannot work on this mailbox's alerts. "
                "Choose a platform admin or an owner of the mailbox.",
                field="assignee",
            )
        before = _snapshot(alert)
        alert.assigned_to = assignee
        alert.updated_at = timezone.now()
        alert.save(update_fields=["assigned_to", "updated_at"])
        audit_record(
            actor=actor, action="alert.assigned", object_type="alert", object_id=alert.pk,
            before=before, after=_snapshot(alert),
        )  # fmt: skip
    return alert


def alert_acknowledge(*, actor: User, alert_id: int) -> MailboxAlert:
    with transaction.atomic():
        alert = _locked(actor, alert_id)
        if alert.status != AlertStatus.OPEN:
            raise InvalidStateError(
                f"Only an open alert can be acknowledged; this one is {alert.get_status_display().lower()}."
            )
        before = _snapshot(alert)
        alert.status = AlertStatus.ACKNOWLEDGED
        alert.acknowledged_at = alert.updated_at = timezone.now()
        if alert.assigned_to_id is None:
            alert.assigned_to = actor
        alert.save(update_fields=["status", "acknowledged_at", "assigned_to", "updated_at"])
        audit_record(
            actor=actor, action="alert.acknowledged", object_type="alert", object_id=alert.pk,
            before=before, after=_snapshot(alert),
        )  # fmt: skip
    return alert


def alert_resolve(*, actor: User, alert_id: int, note: str) -> MailboxAlert:
    note = (note or "").strip()
    if not note:
        raise AlertError("Enter what was done to resolve the alert.", field="note")
    if len(note) > RESOLUTION_NOTE_MAX:
        raise AlertError(f"The note must be {RESOLUTION_NOTE_MAX} characters or fewer.", field="note")
    with transaction.atomic():
        alert = _locked(actor, alert_id)
        if alert.status == AlertStatus.RESOLVED:
            raise InvalidStateError("This alert is already resolved.")
        before = _snapshot(alert)
        alert.status = AlertStatus.RESOLVED
        alert.resolved_at = alert.updated_at = timezone.now()
        alert.resolved_by = actor
        alert.resolution_note = note
        alert.save(update_fields=["status", "resolved_at", "resolved_by", "resolution_note", "updated_at"])
        audit_record(
            actor=actor, action="alert.resolved", object_type="alert", object_id=alert.pk,
            before=before, after=_snapshot(alert), reason=note,
        )  # fmt: skip
    return alert
