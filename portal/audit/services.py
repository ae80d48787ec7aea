"""Writing to the audit trail and checking its integrity."""

from __future__ import annotations

import logging
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from portal import correlation
from portal.queue import enqueue_on_commit

from .chain import GENESIS_HASH, ChainReport, event_hash, to_canonical_json, verify_events
from .models import AuditChainHead, AuditEvent, AuditVerification, Outcome, VerificationStatus

logger = logging.getLogger(__name__)

SYSTEM_ACTOR_NAME = "System"


def actor_label(actor: Any) -> str:
    """How an actor is named in the trail: the name they had at the time, and their username."""
    full_name = actor.get_full_name()
    return f"{full_name} ({actor.username})" if full_name else actor.username


def _clean(text: str, limit: int | None = None) -> str:
    # PostgreSQL text cannot hold NUL or unpaired surrogates; keep the rest as typed.
    text = text.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")
    return text[:limit] if limit else text


def _lock_head() -> AuditChainHead:
    try:
        return AuditChainHead.objects.select_for_update().get(pk=1)
    except AuditChainHead.DoesNotExist:
        pass
    # Only an empty or freshly flushed database lacks the head; start it from
    # the newest event so an existing chain is continued, not forked.
    last = AuditEvent.objects.order_by("-seq").only("seq", "hash").first()
    try:
        with transaction.atomic():
            AuditChainHead.objects.create(pk=1, seq=last.seq if last else 0, hash=last.hash if last else GENESIS_HASH)
    except IntegrityError:
        pass  # another process created it first
    return AuditChainHead.objects.select_for_update().get(pk=1)


def audit_record(
    *,
    actor: Any | None,
    action: str,
    object_type: str = "",
    object_id: str | int = "",
    before: Any = None,
    after: Any = None,
    outcome: str = Outcome.SUCCESS,
    reason: str = "",
    actor_name: str | None = None,
    correlation_id: str | None = None,
) -> AuditEvent:
    """Append one event to the chain.

    Call it inside the transaction that makes the change it records, so the
    change and its record commit or roll back together. Appends serialise on
    the chain head row.
    """
    if outcome not in Outcome.values:
        raise ValueError(f"unknown audit outcome {outcome!r}")
    name = actor_name or (actor_label(actor) if actor is not None else SYSTEM_ACTOR_NAME)
    with transaction.atomic():
        head = _lock_head()
        fields: dict[str, Any] = {
            "seq": head.seq + 1,
            "created_at": timezone.now(),
            "actor_id": actor.pk if actor is not None else None,
            "actor_name": _clean(name, 300),
            "action": _clean(action, 100),
            "object_type": _clean(object_type, 100),
            "object_id": _clean(str(object_id), 100),
            "before_json": to_canonical_json(before),
            "after_json": to_canonical_json(after),
            "outcome": str(outcome),
            "reason": _clean(reason),
            "correlation_id": _clean(correlation_id or correlation.current(), 64),
            "prev_hash": head.hash,
        }
        fields["hash"] = event_hash(**fields)
        event = AuditEvent.objects.create(**fields)
        head.seq = event.seq
        head.hash = event.hash
        head.save(update_fields=["seq", "hash"])
    return event


def audit_chain_verify(*, chunk_size: int = 2000) -> ChainReport:
    """Recompute every event's hash and link, oldest first, without loading the table at once."""
    head = AuditChainHead.objects.filter(pk=1).first()
    events = AuditEvent.objects.order_by("seq").iterator(chunk_size=chunk_size)
    return verify_events(
        events,
        head_seq=head.seq if head else None,
        head_hash=head.hash if head else None,
    )


def audit_verification_request(*, actor: Any) -> AuditVerification:
    """Ask for a background check of the whole chain."""
    with transaction.atomic():
        verification = AuditVerification.objects.create(
            requested_by=actor, requested_at=timezone.now(), status=VerificationStatus.QUEUED
        )
        audit_record(
            actor=actor,
            action="audit.verification_requested",
            object_type="audit_verification",
            object_id=verification.pk,
        )
        from .jobs import audit_verification_job

        enqueue_on_commit(
            audit_verification_job,
            verification.pk,
            job_timeout=3600,
            on_enqueue_error=lambda exc: _verification_not_queued(verification.pk),
        )
    return verification


def _verification_not_queued(verification_id: int) -> None:
    with transaction.atomic():
        updated = AuditVerification.objects.filter(pk=verification_id, status=VerificationStatus.QUEUED).update(
            status=VerificationStatus.ERROR,
            finished_at=timezone.now(),
            message="The background job queue is unavailable, so the check was not started. Try again later.",
        )
        if updated:
            audit_record(
                actor=None,
                action="audit.verification_not_queued",
                object_type="audit_verification",
                object_id=verification_id,
                outcome=Outcome.FAILURE,
                reason="job queue unavailable",
            )


def audit_verification_run(*, verification_id: int) -> AuditVerification | None:
    """Run a requested check. A duplicate or late job finds nothing to claim and does nothing."""
    claimed = AuditVerification.objects.filter(pk=verification_id, status=VerificationStatus.QUEUED).update(
        status=VerificationStatus.RUNNING, started_at=timezone.now()
    )
    if not claimed:
        logger.info("audit verification %s already claimed or finished", verification_id)
        return None
    try:
        report = audit_chain_verify()
    except Exception as exc:
        _verification_finish(
            verification_id,
            status=VerificationStatus.ERROR,
            report=None,
            message=f"The check stopped before finishing ({type(exc).__name__}).",
        )
        raise
    return _verification_finish(
        verification_id,
        status=VerificationStatus.PASSED if report.intact else VerificationStatus.FAILED,
        report=report,
        message=report.describe(),
    )


def _verification_finish(
    verification_id: int, *, status: str, report: ChainReport | None, message: str
) -> AuditVerification:
    with transaction.atomic():
        verification = AuditVerification.objects.select_for_update().get(pk=verification_id)
        verification.status = status
        verification.finished_at = timezone.now()
        verification.message = message
        if report is not None:
            verification.events_checked = report.events_checked
            verification.first_bad_seq = report.first_bad_seq
        verification.save(update_fields=["status", "finished_at", "message", "events_checked", "first_bad_seq"])
        audit_record(
            actor=None,
            action="audit.verified",
            object_type="audit_verification",
            object_id=verification_id,
            after={
                "status": status,
                "events_checked": verification.events_checked,
                "first_bad_seq": verification.first_bad_seq,
            },
            outcome=Outcome.SUCCESS if status == VerificationStatus.PASSED else Outcome.FAILURE,
            reason=message,
        )
    return verification
