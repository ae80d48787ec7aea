"""Mailbox requests, their approval route, and the provisioning that follows.

State lives here; every change to it goes through a function in
``onboarding/services/`` that locks the row, checks the state, saves with
``update_fields`` and writes the audit event in the same transaction.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from django.conf import settings
from django.db import models

from portal.accounts.roles import Role
from portal.policy.models import TrackingRule

# --- the request -------------------------------------------------------------------------------


class MailboxKind(models.TextChoices):
    SHARED = "shared", "Shared mailbox"
    QUEUE = "queue", "Queue mailbox"


class RequestStatus(models.TextChoices):
    DRAFT = "draft", "Draft"
    SUBMITTED = "submitted", "Waiting for approval"
    RETURNED = "returned", "Returned for more information"
    REJECTED = "rejected", "Rejected"
    WITHDRAWN = "withdrawn", "Withdrawn"
    PROVISIONING = "provisioning", "Being set up"
    ACTIVE = "active", "Active"
    NEEDS_ATTENTION = "needs_attention", "Needs attention"


# Statuses in which the requester may still withdraw (provisioning has not started).
WITHDRAWABLE = (RequestStatus.DRAFT, RequestStatus.SUBMITTED, RequestStatus.RETURNED)
# Statuses in which the requester may change the answers.
EDITABLE = (RequestStatus.DRAFT, RequestStatus.RETURNED)
# Statuses that hold an address against new requests.
OPEN = (
    RequestStatus.DRAFT,
    RequestStatus.SUBMITTED,
    RequestStatus.RETURNED,
    RequestStatus.PROVISIONING,
    RequestStatus.NEEDS_ATTENTION,
    RequestStatus.ACTIVE,
)


class QueueVisibility(models.IntegerChoices):
    """Dataverse's ``queueviewtype``."""

    PUBLIC = 0, "Public"
    PRIVATE = 1, "Private"


class DataClassification(models.TextChoices):
    OFFICIAL = "official", "OFFICIAL"
    OFFICIAL_SENSITIVE = "official_sensitive", "OFFICIAL-SENSITIVE"


def mailbox_address(local_part: str, domain: str) -> str:
    """The address a request asks for, once both its parts are known."""
    return f"{local_part}@{domain}" if local_part and domain else ""


class MailboxRequest(models.Model):
    reference = models.CharField(max_length=20, unique=True)
    kind = models.CharField(max_length=10, choices=MailboxKind.choices, blank=True)
    status = models.CharField(max_length=20, choices=RequestStatus.choices, default=RequestStatus.DRAFT)
    requester = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="mailbox_requests")
    team = models.ForeignKey("accounts.Team", on_delete=models.PROTECT, null=True, blank=True, related_name="+")

    display_name = models.CharField(max_length=256, blank=True)
    local_part = models.CharField(max_length=64, blank=True)
    domain = models.CharField(max_length=253, blank=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    backup_owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    justification = models.TextField(blank=True)
    ticket_reference = models.CharField(max_length=50, blank=True)

    # Queue mailboxes only.
    queue_visibility = models.PositiveSmallIntegerField(choices=QueueVisibility.choices, null=True, blank=True)
    tracking_rule = models.PositiveSmallIntegerField(choices=TrackingRule.choices, null=True, blank=True)
    tracking_reason = models.TextField(blank=True)

    expected_daily_volume = models.PositiveIntegerField(null=True, blank=True)
    typical_attachment_kb = models.PositiveIntegerField(null=True, blank=True)
    retention_months = models.PositiveSmallIntegerField(null=True, blank=True)
    data_classification = models.CharField(max_length=30, choices=DataClassification.choices, blank=True)

    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()
    submitted_at = models.DateTimeField(null=True, blank=True)
    decided_at = models.DateTimeField(null=True, blank=True)
    activated_at = models.DateTimeField(null=True, blank=True)
    # Set when provisioning finds them; shown on the status page.
    exchange_mailbox_id = models.CharField(max_length=64, blank=True)
    dataverse_queue_id = models.CharField(max_length=36, blank=True)
    dataverse_mailbox_id = models.CharField(max_length=36, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["status", "submitted_at"], name="mailbox_request_status_idx"),
            models.Index(fields=["local_part", "domain"], name="mailbox_request_address_idx"),
            models.Index(fields=["requester", "created_at"], name="mailbox_request_requester_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.reference} {self.display_name or '(untitled)'}"

    @property
    def address(self) -> str:
        return mailbox_address(self.local_part, self.domain)

    @property
    def is_queue(self) -> bool:
        return self.kind == MailboxKind.QUEUE

    def facts(self) -> dict[str, Any]:
        """What approvers decide on. Changing any of these resets approvals already given."""
        members = sorted(
            (m.email.lower(), m.full_access, m.send_as, m.send_on_behalf, m.automapping) for m in self.members.all()
        )
        return {
            "kind": self.kind,
            "display_name": self.display_name,
            "address": self.address.lower(),
            "team": self.team_id,
            "owner": self.owner_id,
            "backup_owner": self.backup_owner_id,
            "justification": self.justification,
            "queue_visibility": self.queue_visibility,
            "tracking_rule": self.tracking_rule,
            "tracking_reason": self.tracking_reason,
            "expected_daily_volume": self.expected_daily_volume,
            "typical_attachment_kb": self.typical_attachment_kb,
            "retention_months": self.retention_months,
            "data_classification": self.data_classification,
            "members": members,
        }

    def facts_hash(self) -> str:
        encoded = json.dumps(self.facts(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(encoded.encode("utf-8")).hexdigest()


class RequestMember(models.Model):
    request = models.ForeignKey(MailboxRequest, on_delete=models.CASCADE, related_name="members")
    email = models.EmailField(max_length=254)
    full_access = models.BooleanField(default=True)
    automapping = models.BooleanField(default=True)
    send_as = models.BooleanField(default=False)
    send_on_behalf = models.BooleanField(default=False)

    class Meta:
        ordering = ["email"]
        constraints = [
            models.UniqueConstraint(fields=["request", "email"], name="request_member_unique_email"),
        ]

    def __str__(self) -> str:
        return self.email


# --- approval route ----------------------------------------------------------------------------


class ApproverKind(models.TextChoices):
    TEAM_OWNER = "team_owner", "The team's business owners"
    ROLE = "role", "Everyone with a role"
    NAMED = "named", "Named people"


class ApprovalStage(models.Model):
    """One stage of the approval route, as platform admins configure it."""

    order = models.PositiveSmallIntegerField(unique=True)
    name = models.CharField(max_length=100)
    approver_kind = models.CharField(max_length=20, choices=ApproverKind.choices)
    role = models.CharField(max_length=30, choices=Role.choices, blank=True)
    # With ``role``: only holders of the role who are members or business owners of the request's team.
    team_scoped = models.BooleanField(default=False)
    approvers = models.ManyToManyField(settings.AUTH_USER_MODEL, related_name="+", blank=True)
    fallback_approvers = models.ManyToManyField(settings.AUTH_USER_MODEL, related_name="+", blank=True)
    sla_hours = models.PositiveIntegerField(default=48)
    reason_required = models.BooleanField(default=False)
    is_active = models.BooleanField(default=True)

    class Meta:
        ordering = ["order"]

    def __str__(self) -> str:
        return f"{self.order}. {self.name}"


class StageStatus(models.TextChoices):
    PENDING = "pending", "Not started"
    WAITING = "waiting", "Waiting for a decision"
    APPROVED = "approved", "Approved"
    REJECTED = "rejected", "Rejected"
    RETURNED = "returned", "Returned"
    CANCELLED = "cancelled", "Cancelled"


class RequestStage(models.Model):
    """A stage of one request's route: a snapshot of the configured stage taken at submission."""

    request = models.ForeignKey(MailboxRequest, on_delete=models.CASCADE, related_name="stages")
    stage = models.ForeignKey(ApprovalStage, on_delete=models.SET_NULL, null=True, related_name="+")
    order = models.PositiveSmallIntegerField()
    name = models.CharField(max_length=100)
    approver_kind = models.CharField(max_length=20, choices=ApproverKind.choices)
    role = models.CharField(max_length=30, choices=Role.choices, blank=True)
    team_scoped = models.BooleanField(default=False)
    approvers = models.ManyToManyField(settings.AUTH_USER_MODEL, related_name="+", blank=True)
    fallback_approvers = models.ManyToManyField(settings.AUTH_USER_MODEL, related_name="+", blank=True)
    sla_hours = models.PositiveIntegerField()
    reason_required = models.BooleanField(default=False)

    status = models.CharField(max_length=20, choices=StageStatus.choices, default=StageStatus.PENDING)
    waiting_since = models.DateTimeField(null=True, blank=True)
    due_at = models.DateTimeField(null=True, blank=True)
    escalated_at = models.DateTimeField(null=True, blank=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    reason = models.TextField(blank=True)
    # The request's facts when this stage approved; a resubmission with other facts resets it.
    approved_facts_hash = models.CharField(max_length=64, blank=True)

    class Meta:
        ordering = ["request", "order"]
        constraints = [models.UniqueConstraint(fields=["request", "order"], name="request_stage_unique_order")]
        indexes = [models.Index(fields=["status", "waiting_since"], name="request_stage_waiting_idx")]

    def __str__(self) -> str:
        return f"{self.request.reference} stage {self.order} ({self.status})"


class DecisionOutcome(models.TextChoices):
    APPROVE = "approve", "Approve"
    REJECT = "reject", "Reject"
    RETURN = "return", "Return for more information"


class Decision(models.Model):
    """Every decision ever made, kept when a stage is later reset."""

    request = models.ForeignKey(MailboxRequest, on_delete=models.CASCADE, related_name="decisions")
    stage = models.ForeignKey(RequestStage, on_delete=models.CASCADE, related_name="decisions")
    decided_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    # Set when a delegate decided for someone who is out of office.
    on_behalf_of = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    outcome = models.CharField(max_length=10, choices=DecisionOutcome.choices)
    reason = models.TextField(blank=True)
    decided_at = models.DateTimeField()

    class Meta:
        ordering = ["decided_at", "id"]
        # "Decided by you", newest first: an approver's page reads twenty rows off this index.
        indexes = [models.Index(fields=["decided_by", "-decided_at", "-id"], name="decision_by_person_idx")]

    def __str__(self) -> str:
        return f"{self.request.reference}: {self.outcome} by {self.decided_by}"


class Delegation(models.Model):
    """Out-of-office: ``delegate`` may decide what waits for ``delegator`` between the dates."""

    delegator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="delegations")
    delegate = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    starts_on = models.DateField()
    ends_on = models.DateField()
    created_at = models.DateTimeField()
    cancelled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-starts_on"]
        constraints = [
            models.CheckConstraint(condition=models.Q(ends_on__gte=models.F("starts_on")), name="delegation_dates"),
            models.CheckConstraint(condition=~models.Q(delegator=models.F("delegate")), name="delegation_not_to_self"),
        ]

    def __str__(self) -> str:
        return f"{self.delegator} → {self.delegate} ({self.starts_on} to {self.ends_on})"


# --- notifications -----------------------------------------------------------------------------


class NotificationEvent(models.TextChoices):
    SUBMITTED = "submitted", "Request submitted"
    DECISION_NEEDED = "decision_needed", "Decision needed"
    APPROVED = "approved", "Stage approved"
    REJECTED = "rejected", "Request rejected"
    RETURNED = "returned", "Returned for more information"
    ESCALATED = "escalated", "Decision overdue"
    WITHDRAWN = "withdrawn", "Request withdrawn"
    ACTIVE = "active", "Mailbox ready"
    NEEDS_ATTENTION = "needs_attention", "Set-up needs attention"


class NotificationStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    SENT = "sent", "Sent"
    FAILED = "failed", "Failed"


class Notification(models.Model):
    request = models.ForeignKey(MailboxRequest, on_delete=models.CASCADE, related_name="notifications")
    event = models.CharField(max_length=30, choices=NotificationEvent.choices)
    recipients = models.JSONField(default=list)
    subject = models.CharField(max_length=200)
    status = models.CharField(max_length=10, choices=NotificationStatus.choices, default=NotificationStatus.QUEUED)
    created_at = models.DateTimeField()
    sent_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)
    context = models.JSONField(default=dict)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.request.reference}: {self.event} to {len(self.recipients)}"


# --- provisioning ------------------------------------------------------------------------------


class RunStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    WAITING = "waiting", "Waiting for Microsoft 365"
    SUCCEEDED = "succeeded", "Succeeded"
    NEEDS_ATTENTION = "needs_attention", "Needs attention"


class ProvisioningRun(models.Model):
    """One request's provisioning. Resumed, never duplicated: one run per request."""

    request = models.OneToOneField(MailboxRequest, on_delete=models.CASCADE, related_name="provisioning")
    status = models.CharField(max_length=20, choices=RunStatus.choices, default=RunStatus.QUEUED)
    # Which worker holds the run and until when; an expired lease lets another worker resume it.
    lease_owner = models.CharField(max_length=64, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField()
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)

    class Meta:
        indexes = [models.Index(fields=["status", "lease_expires_at"], name="provisioning_run_lease_idx")]

    def __str__(self) -> str:
        return f"Provisioning of {self.request.reference} ({self.status})"


class StepStatus(models.TextChoices):
    PENDING = "pending", "Not started"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Done"
    SKIPPED = "skipped", "Not needed"
    FAILED = "failed", "Failed"
    DONE_BY_HAND = "done_by_hand", "Done by hand"


class ProvisioningStep(models.Model):
    """One checkpointed step: its inputs, what it found before acting, its result and when."""

    run = models.ForeignKey(ProvisioningRun, on_delete=models.CASCADE, related_name="steps")
    order = models.PositiveSmallIntegerField()
    name = models.CharField(max_length=50)
    status = models.CharField(max_length=20, choices=StepStatus.choices, default=StepStatus.PENDING)
    idempotency_key = models.CharField(max_length=100, unique=True)
    inputs = models.JSONField(default=dict)
    before_state = models.JSONField(null=True, blank=True)
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    error_code = models.CharField(max_length=100, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    done_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    note = models.TextField(blank=True)

    class Meta:
        ordering = ["run", "order"]
        constraints = [models.UniqueConstraint(fields=["run", "order"], name="provisioning_step_unique_order")]

    def __str__(self) -> str:
        return f"{self.order}. {self.name} ({self.status})"
