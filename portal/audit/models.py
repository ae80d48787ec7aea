"""The append-only, hash-chained audit trail.

Each event stores the hash of the event before it and a SHA-256 hash over its
own canonical serialisation (see :mod:`portal.audit.chain`). The database
refuses UPDATE and DELETE on the table (a trigger, see the migrations), and
``verify_audit`` recomputes the chain so that a change made with the trigger
out of the way is still found.
"""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.db import models


class Outcome(models.TextChoices):
    SUCCESS = "success", "Success"
    FAILURE = "failure", "Failure"
    DENIED = "denied", "Denied"


class AuditEvent(models.Model):
    seq = models.PositiveBigIntegerField(unique=True, editable=False)
    created_at = models.DateTimeField(editable=False, db_index=True)
    # No foreign-key constraint and no cascade: the trail outlives accounts, and
    # the table refuses the UPDATE a SET_NULL would need.
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        null=True,
        blank=True,
        related_name="+",
    )
    actor_name = models.CharField(max_length=300)
    action = models.CharField(max_length=100, db_index=True)
    object_type = models.CharField(max_length=100, blank=True)
    object_id = models.CharField(max_length=100, blank=True)
    # Canonical JSON text, stored exactly as hashed.
    before_json = models.TextField(default="null")
    after_json = models.TextField(default="null")
    outcome = models.CharField(max_length=20, choices=Outcome.choices)
    reason = models.TextField(blank=True)
    correlation_id = models.CharField(max_length=64, blank=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64, unique=True)

    class Meta:
        ordering = ["-seq"]
        indexes = [
            models.Index(fields=["object_type", "object_id"], name="audit_event_object_idx"),
            models.Index(fields=["actor", "seq"], name="audit_event_actor_idx"),
        ]

    def __str__(self) -> str:
        return f"#{self.seq} {self.action} by {self.actor_name}"

    @property
    def before(self) -> Any:
        return json.loads(self.before_json)

    @property
    def after(self) -> Any:
        return json.loads(self.after_json)


class AuditChainHead(models.Model):
    """The newest event's sequence number and hash: one row, locked to append.

    Appends serialise on this row, which keeps the chain linear across
    processes. It also lets verification notice events removed from the end.
    """

    id = models.PositiveSmallIntegerField(primary_key=True, default=1, editable=False)
    seq = models.PositiveBigIntegerField(default=0)
    hash = models.CharField(max_length=64)

    class Meta:
        constraints = [models.CheckConstraint(condition=models.Q(id=1), name="audit_chain_head_singleton")]

    def __str__(self) -> str:
        return f"Audit chain head at #{self.seq}"


class VerificationStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    PASSED = "passed", "Chain intact"
    FAILED = "failed", "Chain broken"
    ERROR = "error", "Could not finish"


class AuditVerification(models.Model):
    """A background check of the whole chain, requested from the audit page."""

    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    requested_at = models.DateTimeField()
    status = models.CharField(max_length=20, choices=VerificationStatus.choices, default=VerificationStatus.QUEUED)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    events_checked = models.PositiveBigIntegerField(default=0)
    first_bad_seq = models.PositiveBigIntegerField(null=True, blank=True)
    message = models.TextField(blank=True)

    class Meta:
        ordering = ["-requested_at", "-id"]

    def __str__(self) -> str:
        return f"Audit verification {self.pk} ({self.status})"
