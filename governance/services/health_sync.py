"""The health sync: read, incrementally, what Dataverse knows about the managed mailboxes.

Each run reads only what changed since the last one (Dataverse's ``modifiedon`` for alerts and
mailbox statuses, ``createdon`` for emails and attachments), with a small overlap so a row
written while the previous run was reading is not missed; rows are keyed by their Dataverse id,
so reading one twice changes nothing. Emails and attachments are read as ids, directions,
days and sizes only — never subjects, bodies or file contents.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Iterator
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from governance.models import (
    AlertSource,
    EmailAttachment,
    HealthSync,
    HealthSyncStatus,
    MailboxEmail,
    ManagedKind,
    ManagedMailbox,
)
from governance.services.alerts import alert_observe, alerts_mark_urgent
from governance.services.managed import managed_mailboxes_refresh
from governance.services.volume import thresholds_check
from migration.models import ServerProfile
from portal.accounts.models import User
from portal.audit.models import Outcome
from portal.audit.services import audit_record
from portal.exceptions import ConfigurationError
from portal.m365.dataverse import DataverseClient, DataverseClientPool, odata_datetime, odata_ids_filter
from portal.m365.errors import M365Error, describe_error
from portal.m365.rows import TestStatus, TraceLevel, TraceLog
from portal.queue import enqueue_on_commit

logger = logging.getLogger(__name__)

SYNC_JOB_TIMEOUT = 15 * 60
QUEUED_GIVE_UP = dt.timedelta(hours=1)
# Re-read a little before the last watermark: a row committed while the last run read is not lost.
OVERLAP = dt.timedelta(minutes=10)
FIRST_EMAIL_LOOKBACK = dt.timedelta(days=30)
IDS_PER_REQUEST = 40
BULK = 1000

MAILBOX_COLUMNS = (
    "mailboxid",
    "incomingemailstatus",
    "outgoingemailstatus",
    "actstatus",
    "enabledforincomingemail",
    "enabledforoutgoingemail",
    "modifiedon",
)
EMAIL_COLUMNS = ("activityid", "directioncode", "_sendermailboxid_value", "_receivingmailboxid_value", "createdon")
ATTACHMENT_COLUMNS = ("activitymimeattachmentid", "filesize", "_objectid_value", "createdon")


class HealthSyncError(ConfigurationError):
    pass


def health_sync_request(*, actor: User | None) -> HealthSync:
    """Queue a health sync; while one waits or runs, asking again returns that one."""
    if not settings.M365.enabled:
        raise HealthSyncError(
            "The portal is not connected to Microsoft 365, so there is no mailbox health to read. "
            "Set M365_TENANT_ID and the app registration first."
        )
    now = timezone.now()
    with transaction.atomic():
        _expire_abandoned(now)
        active = HealthSync.objects.filter(status__in=(HealthSyncStatus.QUEUED, HealthSyncStatus.RUNNING)).first()
        if active is not None:
            return active
        try:
            with transaction.atomic():
                sync = HealthSync.objects.create(requested_by=actor, requested_at=now)
        except IntegrityError:  # another request won the race a moment ago
            return HealthSync.objects.get(status__in=(HealthSyncStatus.QUEUED, HealthSyncStatus.RUNNING))
        if actor is not None:
            audit_record(actor=actor, action="health.sync_requested", object_type="health_sync", object_id=sync.pk)
        from governance.jobs import health_sync_job

        enqueue_on_commit(
            health_sync_job, sync.pk, job_timeout=SYNC_JOB_TIMEOUT, on_enqueue_error=lambda exc: _not_queued(sync.pk)
        )
    return sync


def _expire_abandoned(now: dt.datetime) -> None:
    stale = Q(status=HealthSyncStatus.RUNNING, started_at__lt=now - dt.timedelta(seconds=SYNC_JOB_TIMEOUT)) | Q(
        status=HealthSyncStatus.QUEUED, requested_at__lt=now - QUEUED_GIVE_UP
    )
    HealthSync.objects.filter(stale).update(
        status=HealthSyncStatus.FAILED,
        finished_at=now,
        error="The run stopped without finishing (its worker or job was lost).",
    )


def _not_queued(sync_id: int) -> None:
    HealthSync.objects.filter(pk=sync_id, status=HealthSyncStatus.QUEUED).update(
        status=HealthSyncStatus.FAILED,
        finished_at=timezone.now(),
        error="The job queue could not take the health sync. Check that Redis is running, then try again.",
    )


def health_sync_run(*, sync_id: int) -> HealthSync | None:
    """Do one queued sync (the job calls this); a duplicate or late job does nothing."""
    claimed = HealthSync.objects.filter(pk=sync_id, status=HealthSyncStatus.QUEUED).update(
        status=HealthSyncStatus.RUNNING, started_at=timezone.now()
    )
    if not claimed:
        logger.info("health sync %s is not waiting to run; nothing to do", sync_id)
        return None
    sync = HealthSync.objects.get(pk=sync_id)
    previous = (
        HealthSync.objects.filter(status=HealthSyncStatus.SUCCEEDED)
        .exclude(pk=sync_id)
        .order_by("-finished_at")
        .first()
    )
    try:
        _Run(sync, previous).run()
    except Exception as exc:
        message = (
            f"Microsoft 365 refused or failed a request, so the health sync stopped. {describe_error(exc)}"
            if isinstance(exc, M365Error)
            else f"The health sync stopped because of an unexpected error ({type(exc).__name__})."
        )
        logger.warning("health sync %s failed: %s", sync_id, message)
        with transaction.atomic():
            HealthSync.objects.filter(pk=sync_id).update(
                status=HealthSyncStatus.FAILED, finished_at=timezone.now(), error=message[:2000]
            )
            audit_record(
                actor=None, actor_name="health sync", action="health.sync_failed", object_type="health_sync",
                object_id=sync_id, outcome=Outcome.FAILURE, reason=message,
            )  # fmt: skip
        if not isinstance(exc, M365Error):
            raise
    sync.refresh_from_db()
    return sync


def _since(moment: dt.datetime | None) -> dt.datetime | None:
    return moment - OVERLAP if moment is not None else None


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class _Run:
    def __init__(self, sync: HealthSync, previous: HealthSync | None) -> None:
        self.sync = sync
        self.previous = previous
        self.client: DataverseClient = DataverseClientPool(settings.M365).client()
        self.counts: dict[str, int] = dict.fromkeys(
            (
                "managed",
                "statuses_read",
                "newly_disabled",
                "tracking_read",
                "alerts_new",
                "alerts_recurred",
                "alerts_reopened",
                "emails",
                "attachments",
                "threshold_alerts",
            ),
            0,
        )

    def run(self) -> None:
        started = timezone.now()
        managed = managed_mailboxes_refresh()
        self.counts["managed"] = len(managed)
        previous = self.previous
        statuses_since = self._statuses(managed, _since(previous.statuses_since) if previous else None, started)
        self._tracking_rules(managed)
        alerts_since = self._alerts(managed, _since(previous.alerts_since) if previous else None)
        email_start = (
            _since(previous.emails_since) if previous and previous.emails_since else started - FIRST_EMAIL_LOOKBACK
        )
        touched: set[tuple[int, dt.date]] = set()
        emails_since = self._emails(managed, email_start, touched)
        attachment_start = (
            _since(previous.attachments_since)
            if previous and previous.attachments_since
            else started - FIRST_EMAIL_LOOKBACK
        )
        attachments_since = self._attachments(attachment_start, touched)
        self.counts["threshold_alerts"] = thresholds_check(pairs=touched)
        HealthSync.objects.filter(pk=self.sync.pk).update(
            status=HealthSyncStatus.SUCCEEDED,
            finished_at=timezone.now(),
            counts=self.counts,
            statuses_since=statuses_since,
            alerts_since=alerts_since or (previous.alerts_since if previous else None),
            emails_since=emails_since or (previous.emails_since if previous else None),
            attachments_since=attachments_since or (previous.attachments_since if previous else None),
        )
        logger.info("health sync %s finished: %s", self.sync.pk, self.counts)

    # --- statuses -------------------------------------------------------------------------------

    def _statuses(
        self, managed: dict[str, ManagedMailbox], since: dt.datetime | None, started: dt.datetime
    ) -> dt.datetime:
        """Statuses of mailboxes changed since the last run, and of managed mailboxes never read yet."""
        rows: dict[str, dict[str, Any]] = {}
        if since is not None:
            for row in self.client.iter_rows(
                "mailboxes", select=MAILBOX_COLUMNS, filter=f"modifiedon ge {odata_datetime(since)}"
            ):
                key = str(row.get("mailboxid") or "").lower()
                if key in managed:
                    rows[key] = row
        unread = [key for key, mailbox in managed.items() if mailbox.status_read_at is None and key not in rows]
        for chunk in _chunks(unread, IDS_PER_REQUEST):
            for row in self.client.iter_rows(
                "mailboxes", select=MAILBOX_COLUMNS, filter=odata_ids_filter("mailboxid", chunk)
            ):
                rows[str(row.get("mailboxid") or "").lower()] = row
        now = timezone.now()
        changed = []
        for key, row in rows.items():
            mailbox = managed.get(key)
            if mailbox is None:
                continue
            values = {
                "incoming_status": row.get("incomingemailstatus"),
                "outgoing_status": row.get("outgoingemailstatus"),
                "act_status": row.get("actstatus"),
                "enabled_for_incoming": row.get("enabledforincomingemail"),
                "enabled_for_outgoing": row.get("enabledforoutgoingemail"),
            }
            failing = TestStatus.FAILURE in (values["incoming_status"], values["outgoing_status"])
            disabled = failing and not values["enabled_for_incoming"] and not values["enabled_for_outgoing"]
            newly_disabled = disabled and not mailbox.disabled_by_platform
            for name, value in values.items():
                setattr(mailbox, name, value)
            mailbox.disabled_by_platform = disabled
            mailbox.status_read_at = now
            changed.append(mailbox)
            if newly_disabled:
                self.counts["newly_disabled"] += 1
                with transaction.atomic():
                    alerts_mark_urgent(mailbox=mailbox)
                    audit_record(
                        actor=None, actor_name="health sync", action="managed_mailbox.disabled_by_platform",
                        object_type="managed_mailbox", object_id=mailbox.pk, outcome=Outcome.FAILURE,
                        after=values, reason="Dynamics 365 stopped synchronising the mailbox after failures.",
                    )  # fmt: skip
        ManagedMailbox.objects.bulk_update(
            changed,
            [
                "incoming_status",
                "outgoing_status",
                "act_status",
                "enabled_for_incoming",
                "enabled_for_outgoing",
                "disabled_by_platform",
                "status_read_at",
            ],
            batch_size=BULK,
        )
        self.counts["statuses_read"] = len(changed)
        return started

    # --- tracking rules -------------------------------------------------------------------------

    def _tracking_rules(self, managed: dict[str, ManagedMailbox]) -> None:
        """The tracking rule of every managed mailbox: the queue's, or the user's personal option."""
        wanted: dict[str, list[ManagedMailbox]] = {"queues": [], "usersettingscollection": []}
        for mailbox in managed.values():
            if mailbox.owner_dataverse_id is None:
                continue
            entity_set = "usersettingscollection" if mailbox.kind == ManagedKind.USER else "queues"
            wanted[entity_set].append(mailbox)
        changed = []
        for entity_set, mailboxes in wanted.items():
            key = "systemuserid" if entity_set == "usersettingscollection" else "queueid"
            by_owner = {str(mailbox.owner_dataverse_id): mailbox for mailbox in mailboxes}
            for chunk in _chunks(list(by_owner), IDS_PER_REQUEST):
                for row in self.client.iter_rows(
                    entity_set, select=(key, "incomingemailfilteringmethod"), filter=odata_ids_filter(key, chunk)
                ):
                    mailbox = by_owner.get(str(row.get(key) or "").lower())
                    rule = row.get("incomingemailfilteringmethod")
                    if mailbox is not None and rule != mailbox.tracking_rule:
                        mailbox.tracking_rule = rule
                        changed.append(mailbox)
                    self.counts["tracking_read"] += 1
        ManagedMailbox.objects.bulk_update(changed, ["tracking_rule"], batch_size=BULK)

    # --- alerts ---------------------------------------------------------------------------------

    def _alerts(self, managed: dict[str, ManagedMailbox], since: dt.datetime | None) -> dt.datetime | None:
        profiles = {str(profile.dataverse_id): profile.name for profile in ServerProfile.objects.all()}
        condition = f"level ge {int(TraceLevel.WARNING)}"
        if since is not None:
            condition += f" and modifiedon ge {odata_datetime(since)}"
        newest: dt.datetime | None = None
        for row in self.client.iter_rows(
            "tracelogs", select=TraceLog.SELECT, filter=condition, orderby="modifiedon asc,tracelogid asc"
        ):
            trace = TraceLog.from_row(row)
            regarding = (trace.regarding_id or "").lower()
            mailbox = managed.get(regarding)
            if mailbox is None and regarding not in profiles:
                continue  # an unmanaged mailbox's alert: the inventory shows those
            moment = trace.modified_on or trace.created_on or timezone.now()
            newest = max(newest, moment) if newest else moment
            observation = alert_observe(
                key=trace.id.lower(),
                source=AlertSource.DATAVERSE,
                mailbox=mailbox,
                profile_id=uuid.UUID(regarding) if mailbox is None else None,
                profile_name=profiles.get(regarding, ""),
                level=int(trace.level or TraceLevel.WARNING),
                code=str(trace.trace_code if trace.trace_code is not None else ""),
                text=trace.text or "",
                details=trace.error_details or "",
                first_seen=trace.created_on or moment,
                last_seen=moment,
            )
            if observation.outcome != "unchanged":
                self.counts[f"alerts_{observation.outcome}"] += 1
        return newest

    # --- volume ---------------------------------------------------------------------------------

    def _emails(self, managed: dict[str, ManagedMailbox], since: dt.datetime, touched: set) -> dt.datetime | None:
        newest: dt.datetime | None = None
        batch: list[MailboxEmail] = []
        for row in self.client.iter_rows(
            "emails", select=EMAIL_COLUMNS, filter=f"createdon ge {odata_datetime(since)}", orderby="createdon asc"
        ):
            created = _parse_moment(row.get("createdon"))
            if created is None:
                continue
            newest = max(newest, created) if newest else created
            outgoing = bool(row.get("directioncode"))
            column = "_sendermailboxid_value" if outgoing else "_receivingmailboxid_value"
            mailbox = managed.get(str(row.get(column) or "").lower())
            if mailbox is None:
                continue
            batch.append(
                MailboxEmail(
                    activity_id=row["activityid"],
                    mailbox=mailbox,
                    day=created.date(),
                    outgoing=outgoing,
                    created_on=created,
                )
            )
            touched.add((mailbox.pk, created.date()))
            if len(batch) >= BULK:
                self._save_emails(batch)
        self._save_emails(batch)
        return newest

    def _save_emails(self, batch: list[MailboxEmail]) -> None:
        if batch:
            MailboxEmail.objects.bulk_create(batch, ignore_conflicts=True)
            self.counts["emails"] += len(batch)
            batch.clear()

    def _attachments(self, since: dt.datetime, touched: set) -> dt.datetime | None:
        newest: dt.datetime | None = None
        pending: list[dict[str, Any]] = []
        for row in self.client.iter_rows(
            "activitymimeattachments",
            select=ATTACHMENT_COLUMNS,
            filter=f"createdon ge {odata_datetime(since)}",
            orderby="createdon asc",
        ):
            created = _parse_moment(row.get("createdon"))
            if created is not None:
                newest = max(newest, created) if newest else created
            if row.get("_objectid_value"):
                pending.append(row)
            if len(pending) >= BULK:
                self._save_attachments(pending, touched)
        self._save_attachments(pending, touched)
        return newest

    def _save_attachments(self, rows: list[dict[str, Any]], touched: set) -> None:
        """Keep the attachments of emails being counted (those of managed mailboxes); skip the rest."""
        if not rows:
            return
        emails = MailboxEmail.objects.in_bulk([row["_objectid_value"] for row in rows])
        keep = []
        for row in rows:
            email = emails.get(uuid.UUID(str(row["_objectid_value"])))
            if email is None:
                continue
            keep.append(
                EmailAttachment(
                    attachment_id=row["activitymimeattachmentid"], email=email, size_bytes=int(row.get("filesize") or 0)
                )
            )
            touched.add((email.mailbox_id, email.day))
        EmailAttachment.objects.bulk_create(keep, ignore_conflicts=True)
        self.counts["attachments"] += len(keep)
        rows.clear()


def _parse_moment(value: Any) -> dt.datetime | None:
    if not value:
        return None
    try:
        moment = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
