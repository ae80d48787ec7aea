"""Changing a managed mailbox's tracking rule: requested, approved by a second person, applied by a job.

A platform admin or one of the mailbox's owners requests a change (by default to the policy's
recommended rule for the mailbox's kind); a platform admin other than the requester approves or
rejects it; approval queues :func:`tracking_change_apply`, which reads the rule Dataverse holds
now, records it, and writes the new one with ``If-Match`` on the ETag it read. A queue's or shared
mailbox's rule lives on its queue (``queues``); a user's in their personal options
(``usersettingscollection``, keyed by the user's id).

The job claims the change atomically (approved → applying), so a duplicated job does nothing; a
rule already in place is recorded as applied without a write; a rule changed in Dynamics 365 since
the change was requested is reported, never overwritten. Temporary errors put the change back to
approved and schedule the job again (honouring Retry-After); anything else fails it with a reason
a platform admin can act on, and a failed change can be retried.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import django_rq
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone
from rq.timeouts import JobTimeoutException

from governance.models import ManagedKind, ManagedMailbox, TrackingChange, TrackingChangeStatus
from governance.selectors.tracking import OPEN_CHANGE_STATUSES, is_platform_admin, recommended_rule, rule_label
from portal import correlation
from portal.accounts.models import User
from portal.audit.models import Outcome
from portal.audit.services import audit_record
from portal.exceptions import InvalidStateError, PermissionDeniedError, PortalError
from portal.m365.dataverse import DataverseClient, DataverseClientPool
from portal.m365.errors import (
    AccessDeniedError,
    ConcurrencyError,
    M365Error,
    NotFoundError,
    TransientError,
    describe_error,
)
from portal.policy.models import TrackingRule
from portal.policy.services import policy_get
from portal.queue import enqueue_on_commit

logger = logging.getLogger(__name__)

REASON_MAX = 2000
COLUMN = "incomingemailfilteringmethod"
USERSETTINGS_SET = "usersettingscollection"
APPLY_JOB_TIMEOUT = 120
# Temporary errors (throttling, 5xx, timeouts) are retried with backoff, honouring Retry-After,
# this many times before the change is failed for a person to look at.
MAX_ATTEMPTS = 8
BACKOFF_BASE_SECONDS = 2
BACKOFF_CAP_SECONDS = 300
# A change left "being applied" this long has lost its worker; a platform admin may retry it.
STALE_APPLYING = dt.timedelta(seconds=APPLY_JOB_TIMEOUT * 2)


class TrackingChangeError(PortalError):
    """The tracking change cannot be made or moved on as asked."""


# --- helpers ---------------------------------------------------------------------------------------


def _clean_reason(reason: str, *, required: bool, missing: str) -> str:
    reason = (reason or "").strip()
    if required and not reason:
        raise TrackingChangeError(missing, field="reason")
    if len(reason) > REASON_MAX:
        raise TrackingChangeError(f"Reason must be {REASON_MAX:,} characters or fewer", field="reason")
    if "\x00" in reason:
        raise TrackingChangeError("Reason can only contain letters, numbers, spaces and punctuation", field="reason")
    return reason


def _require_admin(actor: User | None, message: str) -> None:
    if not is_platform_admin(actor):
        raise PermissionDeniedError(message)


def _mailbox_words(mailbox: ManagedMailbox) -> str:
    return mailbox.name or mailbox.email_address or f"mailbox {mailbox.dataverse_id}"


def _snapshot(change: TrackingChange) -> dict[str, Any]:
    return {
        "status": change.status,
        "mailbox": change.mailbox_id,
        "from_rule": change.from_rule,
        "to_rule": change.to_rule,
    }


def _locked_change(change_id: int) -> TrackingChange:
    change = TrackingChange.objects.select_for_update().filter(pk=change_id).first()
    if change is None:
        raise TrackingChangeError("The tracking change no longer exists.")
    return change


def _open_change_message(change: TrackingChange, mailbox: ManagedMailbox) -> str:
    return (
        f"{_mailbox_words(mailbox)} already has an open tracking change (change {change.pk}: "
        f"to “{rule_label(change.to_rule)}”, {change.get_status_display().lower()}). "
        "Wait for it to be applied or rejected before requesting another."
    )


# --- requesting ------------------------------------------------------------------------------------


def tracking_change_request(
    *, actor: User, mailbox_id: int, to_rule: int | None = None, reason: str = ""
) -> TrackingChange:
    """Ask for a mailbox's tracking rule to change (by default to the policy's recommended rule).

    Platform admins may ask for any managed mailbox, owners for theirs. Refused when the mailbox
    already has that rule or already has a change open.
    """
    reason = _clean_reason(reason, required=False, missing="")
    if to_rule is not None and to_rule not in TrackingRule.values:
        raise TrackingChangeError("Select a tracking rule", field="to_rule")
    policy = policy_get()
    try:
        with transaction.atomic():
            mailbox = ManagedMailbox.objects.select_for_update().filter(pk=mailbox_id).first()
            if mailbox is None or not mailbox.is_active:
                raise TrackingChangeError("The mailbox is not managed by the portal any more.")
            if not (is_platform_admin(actor) or mailbox.owners.filter(pk=actor.pk).exists()):
                raise PermissionDeniedError(
                    "Only a platform admin or an owner of the mailbox can request a change to its tracking rule."
                )
            target = recommended_rule(mailbox.kind, policy) if to_rule is None else to_rule
            if mailbox.tracking_rule == target:
                raise InvalidStateError(
                    f"{_mailbox_words(mailbox)} already tracks “{rule_label(target)}”, so there is nothing to change."
                )
            if mailbox.owner_dataverse_id is None:
                raise InvalidStateError(
                    f"The portal does not know yet which queue or user owns {_mailbox_words(mailbox)} in "
                    "Dynamics 365, so its tracking rule cannot be changed. Wait for the next health sync."
                )
            existing = TrackingChange.objects.filter(mailbox=mailbox, status__in=OPEN_CHANGE_STATUSES).first()
            if existing is not None:
                raise InvalidStateError(_open_change_message(existing, mailbox))
            now = timezone.now()
            change = TrackingChange.objects.create(
                mailbox=mailbox,
                from_rule=mailbox.tracking_rule,
                to_rule=target,
                reason=reason,
                status=TrackingChangeStatus.PENDING,
                requested_by=actor,
                requested_at=now,
                updated_at=now,
            )
            audit_record(
                actor=actor,
                action="tracking_change.requested",
                object_type="tracking_change",
                object_id=change.pk,
                before={"mailbox": mailbox.pk, "tracking_rule": mailbox.tracking_rule},
                after=_snapshot(change),
                reason=reason,
            )
    except IntegrityError:
        # Only possible if a change was opened without locking the mailbox; say so plainly all the same.
        raise InvalidStateError(
            "Another tracking change for this mailbox was requested at the same moment. Open the list of changes."
        ) from None
    return change


# --- deciding --------------------------------------------------------------------------------------


def tracking_change_decide(*, actor: User, change_id: int, approve: bool, reason: str = "") -> TrackingChange:
    """Pending → approved (the job is queued) or rejected, by a platform admin other than the requester."""
    _require_admin(actor, "Only a platform admin can approve or reject a tracking change.")
    reason = _clean_reason(reason, required=not approve, missing="Enter why you are rejecting the change")
    with transaction.atomic():
        change = _locked_change(change_id)
        if change.requested_by_id == actor.pk:
            raise PermissionDeniedError(
                "You requested this change, so another platform admin must approve or reject it."
            )
        if change.status != TrackingChangeStatus.PENDING:
            raise InvalidStateError(
                f"The change is {change.get_status_display().lower()}, so it cannot be "
                f"{'approved' if approve else 'rejected'}."
            )
        before = _snapshot(change)
        now = timezone.now()
        change.status = TrackingChangeStatus.APPROVED if approve else TrackingChangeStatus.REJECTED
        change.decided_by = actor
        change.decided_at = now
        change.decision_reason = reason
        change.updated_at = now
        change.save(update_fields=["status", "decided_by", "decided_at", "decision_reason", "updated_at"])
        audit_record(
            actor=actor,
            action="tracking_change.approved" if approve else "tracking_change.rejected",
            object_type="tracking_change",
            object_id=change.pk,
            before=before,
            after=_snapshot(change),
            reason=reason,
        )
        if approve:
            _queue_apply(change.pk)
    return change


def tracking_change_retry(*, actor: User, change_id: int) -> TrackingChange:
    """Failed (or stuck being applied by a worker that died) → approved, and the job queued again."""
    _require_admin(actor, "Only a platform admin can retry a tracking change.")
    with transaction.atomic():
        change = _locked_change(change_id)
        stuck = change.status == TrackingChangeStatus.APPLYING and change.updated_at < timezone.now() - STALE_APPLYING
        if change.status != TrackingChangeStatus.FAILED and not stuck:
            raise InvalidStateError(
                f"The change is {change.get_status_display().lower()}, so there is nothing to retry."
            )
        other = (
            TrackingChange.objects.filter(mailbox_id=change.mailbox_id, status__in=OPEN_CHANGE_STATUSES)
            .exclude(pk=change.pk)
            .select_related("mailbox")
            .first()
        )
        if other is not None:
            raise InvalidStateError(_open_change_message(other, other.mailbox))
        before = _snapshot(change)
        change.status = TrackingChangeStatus.APPROVED
        change.error = ""
        change.updated_at = timezone.now()
        change.save(update_fields=["status", "error", "updated_at"])
        audit_record(
            actor=actor,
            action="tracking_change.retried",
            object_type="tracking_change",
            object_id=change.pk,
            before={**before, "attempts": change.attempts},
            after=_snapshot(change),
        )
        _queue_apply(change.pk)
    return change


# --- queueing --------------------------------------------------------------------------------------


def _queue_apply(change_id: int) -> None:
    from governance.jobs import tracking_change_apply_job

    enqueue_on_commit(
        tracking_change_apply_job,
        change_id,
        job_timeout=APPLY_JOB_TIMEOUT,
        on_enqueue_error=lambda exc: _queue_unavailable(change_id),
    )


def _schedule_apply(change_id: int, *, seconds: float) -> None:
    """Queue the job again ``seconds`` from now, once the current transaction commits."""
    from governance.jobs import tracking_change_apply_job

    correlation_id = correlation.current() or correlation.new_id()

    def _enqueue() -> None:
        try:
            django_rq.get_queue("default").enqueue_in(
                dt.timedelta(seconds=max(0.0, seconds)),
                tracking_change_apply_job,
                change_id,
                job_timeout=APPLY_JOB_TIMEOUT,
                correlation_id=correlation_id,
            )
        except Exception:  # Redis refusing: say so on the change rather than leave it waiting for nothing
            logger.exception("could not schedule tracking change %s again", change_id)
            _queue_unavailable(change_id)

    transaction.on_commit(_enqueue)


def _queue_unavailable(change_id: int) -> None:
    with transaction.atomic():
        change = TrackingChange.objects.select_for_update().filter(pk=change_id).first()
        if change is None or change.status != TrackingChangeStatus.APPROVED:
            return
        message = (
            "The background job queue was unavailable, so the change could not be applied. "
            "Retry it once the queue is back."
        )
        change.status = TrackingChangeStatus.FAILED
        change.error = message
        change.updated_at = timezone.now()
        change.save(update_fields=["status", "error", "updated_at"])
        audit_record(
            actor=None,
            action="tracking_change.not_queued",
            object_type="tracking_change",
            object_id=change.pk,
            before={"status": TrackingChangeStatus.APPROVED},
            after={"status": change.status},
            outcome=Outcome.FAILURE,
            reason=message,
        )


# --- applying (the job) ----------------------------------------------------------------------------


class _Failed(Exception):
    """The change cannot be applied without a person; the message says what happened and what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class _Conflict(_Failed):
    """Dynamics 365 holds a rule other than the one the change was approved against."""

    def __init__(self, message: str, *, found: int | None) -> None:
        super().__init__(message)
        self.found = found


def _target(mailbox: ManagedMailbox) -> tuple[str, str, str]:
    """(entity set, row id, words for a person) of the record holding the mailbox's tracking rule."""
    if mailbox.owner_dataverse_id is None:
        raise _Failed(
            f"The portal does not know which queue or user owns {_mailbox_words(mailbox)} in Dynamics 365. "
            "Wait for the next health sync, then retry the change."
        )
    owner = str(mailbox.owner_dataverse_id)
    if mailbox.kind == ManagedKind.USER:
        return USERSETTINGS_SET, owner, "the user's personal options"
    return "queues", owner, "the mailbox's queue"


def _client() -> DataverseClient:
    config = settings.M365
    if not config.enabled:
        raise _Failed(
            "The Microsoft 365 integration is switched off (M365_TENANT_ID is not set), so the rule cannot be "
            "changed. Configure it, then retry the change."
        )
    return DataverseClientPool(config).client()


def _read(client: DataverseClient, entity_set: str, key: str, words: str) -> tuple[int | None, str | None]:
    try:
        row = client.get(entity_set, key, select=[COLUMN])
    except NotFoundError:
        raise _Failed(
            f"Dynamics 365 has no record of {words} any more (it was deleted). Nothing was changed."
        ) from None
    return row.get(COLUMN), row.get("@odata.etag")


def _claim(change_id: int) -> bool:
    with transaction.atomic():
        claimed = TrackingChange.objects.filter(pk=change_id, status=TrackingChangeStatus.APPROVED).update(
            status=TrackingChangeStatus.APPLYING, attempts=F("attempts") + 1, updated_at=timezone.now()
        )
    return bool(claimed)


def _record_before(change: TrackingChange, found: int | None) -> None:
    """Checkpoint what Dataverse held before this change writes anything.

    A retry that finds the new rule already in place (an earlier write whose answer was lost)
    keeps the value recorded before that write.
    """
    if found == change.to_rule and change.remote_before is not None:
        return
    change.remote_before = found
    TrackingChange.objects.filter(pk=change.pk).update(remote_before=found)


def tracking_change_apply(*, change_id: int) -> None:
    """Apply an approved change in Dynamics 365 (called by the job). A change not approved is left alone."""
    if not _claim(change_id):
        logger.info("tracking change %s is not waiting to be applied; nothing to do", change_id)
        return
    change = TrackingChange.objects.select_related("mailbox").get(pk=change_id)
    mailbox = change.mailbox
    words = "the mailbox's queue or user"
    try:
        entity_set, key, words = _target(mailbox)
        client = _client()
        found, etag = _read(client, entity_set, key, words)
        _record_before(change, found)
        if found == change.to_rule:
            _applied(change, before=change.remote_before, written=False)
            return
        if change.from_rule is not None and found != change.from_rule:
            raise _conflict(found, words, expected=change.from_rule, when="since the change was requested")
        written = _write(client, change, entity_set, key, words, found=found, etag=etag)
        _applied(change, before=change.remote_before, written=written)
    except _Conflict as conflict:
        _fail(change, conflict.message, found=conflict.found)
    except _Failed as failure:
        _fail(change, failure.message)
    except TransientError as error:
        _retry_later(change, describe_error(error), seconds=error.retry_after)
    except AccessDeniedError as error:
        _fail(
            change,
            f"Dynamics 365 refused to change {words}: the portal's application user may not update it. "
            f"{describe_error(error)} Give it the privilege, then retry the change.",
        )
    except M365Error as error:
        _fail(change, f"{describe_error(error)} Nothing was changed. Fix the cause, then retry the change.")
    except ImproperlyConfigured as error:
        _fail(change, f"The Microsoft 365 configuration is incomplete: {error}. Fix it, then retry the change.")
    except JobTimeoutException as error:  # RQ's time limit for the job: carry on in a fresh job
        _retry_later(change, f"The job ran out of time ({error}).", seconds=None)
    except Exception as error:
        _fail(
            change,
            f"An unexpected error stopped the change ({type(error).__name__}). The worker's log has the details; "
            "retry the change once the cause is fixed.",
        )
        raise


def _conflict(found: int | None, words: str, *, expected: int | None, when: str) -> _Conflict:
    return _Conflict(
        f"Not changed: {words} in Dynamics 365 now tracks “{rule_label(found)}”, not “{rule_label(expected)}” — "
        f"someone changed it in Dynamics 365 {when}. Nothing was overwritten. Check with the mailbox's owners, "
        "then request a new change if it is still needed.",
        found=found,
    )


def _write(
    client: DataverseClient,
    change: TrackingChange,
    entity_set: str,
    key: str,
    words: str,
    *,
    found: int | None,
    etag: str | None,
) -> bool:
    """PATCH the new rule with ``If-Match``; on 412 read once more and carry on only if the rule is as read.

    Returns whether this job wrote (False: someone else set the same rule meanwhile).
    """
    try:
        client.update(entity_set, key, {COLUMN: change.to_rule}, etag=etag)
        return True
    except ConcurrencyError:
        again, etag = _read(client, entity_set, key, words)
    if again == change.to_rule:
        return False
    if again != found:
        raise _conflict(again, words, expected=found, when="while the change was being applied")
    # Something else on the record changed, not its tracking rule: write against the new version.
    try:
        client.update(entity_set, key, {COLUMN: change.to_rule}, etag=etag)
    except ConcurrencyError as error:
        raise TransientError(
            message=f"{words} kept changing in Dynamics 365 while the rule was being written ({error.message})",
            status=error.status,
            code=error.code,
            request_id=error.request_id,
            service=error.service,
        ) from error
    return True


def _applied(change: TrackingChange, *, before: int | None, written: bool) -> None:
    now = timezone.now()
    with transaction.atomic():
        locked = _locked_change(change.pk)
        if locked.status != TrackingChangeStatus.APPLYING:
            logger.warning("tracking change %s was %s when it finished applying", change.pk, locked.status)
            return
        mailbox = ManagedMailbox.objects.select_for_update().get(pk=locked.mailbox_id)
        locked.status = TrackingChangeStatus.APPLIED
        locked.applied_at = now
        locked.error = ""
        locked.updated_at = now
        locked.save(update_fields=["status", "applied_at", "error", "updated_at"])
        mailbox.tracking_rule = locked.to_rule
        mailbox.save(update_fields=["tracking_rule"])
        audit_record(
            actor=None,
            action="tracking_change.applied",
            object_type="tracking_change",
            object_id=locked.pk,
            before={COLUMN: before},
            after={COLUMN: locked.to_rule, "written": written, "mailbox": mailbox.pk, "attempt": locked.attempts},
        )


def _fail(change: TrackingChange, message: str, *, found: int | None = None) -> None:
    """Applying → failed, with the reason; what Dataverse was seen to hold is kept on the mailbox."""
    with transaction.atomic():
        locked = TrackingChange.objects.select_for_update().filter(pk=change.pk).first()
        if locked is None or locked.status != TrackingChangeStatus.APPLYING:
            return
        locked.status = TrackingChangeStatus.FAILED
        locked.error = message[:4000]
        locked.updated_at = timezone.now()
        locked.save(update_fields=["status", "error", "updated_at"])
        if found is not None:
            ManagedMailbox.objects.filter(pk=locked.mailbox_id).update(tracking_rule=found)
        audit_record(
            actor=None,
            action="tracking_change.failed",
            object_type="tracking_change",
            object_id=locked.pk,
            before={"status": TrackingChangeStatus.APPLYING, COLUMN: locked.remote_before},
            after={"status": locked.status, **({"found": found} if found is not None else {})},
            outcome=Outcome.FAILURE,
            reason=message[:1000],
        )


def _retry_later(change: TrackingChange, message: str, *, seconds: float | None) -> None:
    """A temporary failure: back to approved, and the job again later (it re-reads before writing)."""
    attempts = TrackingChange.objects.filter(pk=change.pk).values_list("attempts", flat=True).first() or 0
    if attempts >= MAX_ATTEMPTS:
        _fail(
            change,
            f"The change kept failing with temporary errors ({attempts} attempts). The last one: {message} "
            "Retry it later.",
        )
        return
    if seconds is None:
        seconds = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2 ** max(attempts - 1, 0))
    with transaction.atomic():
        locked = TrackingChange.objects.select_for_update().filter(pk=change.pk).first()
        if locked is None or locked.status != TrackingChangeStatus.APPLYING:
            return
        locked.status = TrackingChangeStatus.APPROVED
        locked.error = f"Temporary error, trying again: {message}"[:4000]
        locked.updated_at = timezone.now()
        locked.save(update_fields=["status", "error", "updated_at"])
        audit_record(
            actor=None,
            action="tracking_change.retry_scheduled",
            object_type="tracking_change",
            object_id=locked.pk,
            before={"status": TrackingChangeStatus.APPLYING},
            after={"status": locked.status, "attempt": attempts, "retry_in_seconds": seconds},
            outcome=Outcome.FAILURE,
            reason=message[:1000],
        )
        _schedule_apply(locked.pk, seconds=seconds)
