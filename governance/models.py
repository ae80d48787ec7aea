"""Keeping managed mailboxes healthy: their status and alerts, tracking rules, volume and retention.

A health sync reads, incrementally, what Dataverse knows about the mailboxes the portal manages
(those it onboarded and those on compliant server-side sync): their test statuses, their
``tracelogs`` alerts (one record per mailbox and cause, updated when it recurs), their tracking
rule, and the emails and attachments they handled — ids, directions, days and sizes, never bodies.
People review the alerts here; over-tracking is changed through an approved request and a job.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

from portal.policy.models import TrackingRule


class ManagedKind(models.TextChoices):
    QUEUE = "queue", "Queue mailbox"
    SHARED = "shared", "Shared mailbox"
    USER = "user", "User mailbox"


class ManagedSource(models.TextChoices):
    ONBOARDING = "onboarding", "Onboarded through the portal"
    INVENTORY = "inventory", "On server-side sync (inventory)"


class ManagedMailbox(models.Model):
    """A Dataverse mailbox the portal keeps healthy, with what the last health sync read about it."""

    dataverse_id = models.UUIDField(unique=True)
    name = models.CharField(max_length=300, blank=True)
    email_address = models.CharField(max_length=320, blank=True)
    kind = models.CharField(max_length=10, choices=ManagedKind.choices)
    source = models.CharField(max_length=20, choices=ManagedSource.choices)
    # The queue or user that owns the mailbox in Dataverse (its tracking rule lives there).
    owner_dataverse_id = models.UUIDField(null=True, blank=True)
    request = models.ForeignKey(
        "onboarding.MailboxRequest", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    inventory = models.ForeignKey(
        "migration.InventoryMailbox", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    team = models.ForeignKey("accounts.Team", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    owners = models.ManyToManyField(settings.AUTH_USER_MODEL, related_name="managed_mailboxes", blank=True)

    retention_months = models.PositiveSmallIntegerField(null=True, blank=True)
    review_due_on = models.DateField(null=True, blank=True)

    tracking_rule = models.PositiveSmallIntegerField(choices=TrackingRule.choices, null=True, blank=True)
    incoming_status = models.PositiveSmallIntegerField(null=True, blank=True)
    outgoing_status = models.PositiveSmallIntegerField(null=True, blank=True)
    act_status = models.PositiveSmallIntegerField(null=True, blank=True)
    enabled_for_incoming = models.BooleanField(null=True, blank=True)
    enabled_for_outgoing = models.BooleanField(null=True, blank=True)
    # The platform gave up on it after repeated failures: failing and no longer enabled.
    disabled_by_platform = models.BooleanField(default=False)
    status_read_at = models.DateTimeField(null=True, blank=True)

    is_active = models.BooleanField(default=True)
    added_at = models.DateTimeField()

    class Meta:
        ordering = ["name", "id"]
        indexes = [
            models.Index(fields=["is_active", "kind"], name="managed_active_kind_idx"),
            # The health list's order (disabled ones first, then by name), so a page is read, not sorted.
            models.Index(fields=["is_active", "-disabled_by_platform", "name", "id"], name="managed_list_order_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.name} <{self.email_address}>"


class HealthSyncStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Finished"
    FAILED = "failed", "Failed"


class HealthSync(models.Model):
    """One health sync: what it read, what it changed, and where the next one carries on from."""

    status = models.CharField(max_length=20, choices=HealthSyncStatus.choices, default=HealthSyncStatus.QUEUED)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    requested_at = models.DateTimeField()
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)
    counts = models.JSONField(default=dict)
    # Dataverse's own clock values the next run reads from (modifiedon / createdon).
    alerts_since = models.DateTimeField(null=True, blank=True)
    statuses_since = models.DateTimeField(null=True, blank=True)
    emails_since = models.DateTimeField(null=True, blank=True)
    attachments_since = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-requested_at", "-id"]
        constraints = [
            # At most one sync waits or runs at a time; asking again while one does returns it.
            models.UniqueConstraint(
                fields=["status"],
                condition=models.Q(status__in=["queued", "running"]),
                name="health_sync_one_active",
            )
        ]

    def __str__(self) -> str:
        return f"Health sync {self.pk} ({self.status})"


class AlertSource(models.TextChoices):
    DATAVERSE = "dataverse", "Dataverse alert"
    THRESHOLD = "threshold", "Portal threshold"


class AlertLevel(models.IntegerChoices):
    INFORMATION = 1, "Information"
    WARNING = 2, "Warning"
    ERROR = 3, "Error"


class AlertStatus(models.TextChoices):
    OPEN = "open", "Open"
    ACKNOWLEDGED = "acknowledged", "Acknowledged"
    RESOLVED = "resolved", "Resolved"


OPEN_STATUSES = (AlertStatus.OPEN, AlertStatus.ACKNOWLEDGED)


class MailboxAlert(models.Model):
    """One alert to review: a Dataverse ``tracelogs`` record, or a portal threshold breach.

    Dataverse keeps one record per mailbox and cause and bumps its ``modifiedon`` when the
    problem recurs, so here too a recurrence updates the record (count, last seen) and reopens
    it if it had been resolved.
    """

    key = models.CharField(max_length=200, unique=True)  # tracelog id, or threshold:<mailbox>:<code>:<day>
    source = models.CharField(max_length=20, choices=AlertSource.choices)
    mailbox = models.ForeignKey(ManagedMailbox, on_delete=models.CASCADE, null=True, blank=True, related_name="alerts")
    # Alerts about a server profile have no mailbox.
    profile_id = models.UUIDField(null=True, blank=True)
    profile_name = models.CharField(max_length=300, blank=True)
    level = models.PositiveSmallIntegerField(choices=AlertLevel.choices)
    code = models.CharField(max_length=60)  # Dataverse tracecode, or the threshold's name
    text = models.TextField()
    details = models.TextField(blank=True)
    first_seen_at = models.DateTimeField()
    last_seen_at = models.DateTimeField()
    occurrences = models.PositiveIntegerField(default=1)
    urgent = models.BooleanField(default=False)

    status = models.CharField(max_length=20, choices=AlertStatus.choices, default=AlertStatus.OPEN)
    assigned_to = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    resolution_note = models.TextField(blank=True)
    reopened_count = models.PositiveIntegerField(default=0)
    updated_at = models.DateTimeField()

    class Meta:
        ordering = ["-urgent", "-level", "-last_seen_at", "id"]
        indexes = [
            models.Index(fields=["status", "-urgent", "-level", "-last_seen_at"], name="alert_queue_idx"),
            models.Index(fields=["mailbox", "status"], name="alert_mailbox_idx"),
            # The review queue's first sort keys over open alerts only: the queue reads its first
            # groups in order and looks up just their mailboxes, instead of joining every managed one.
            models.Index(
                fields=["-urgent", "-level"],
                condition=models.Q(status__in=["open", "acknowledged"]),
                name="alert_open_order_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_level_display()} {self.code}: {self.text[:60]}"


class MailboxEmail(models.Model):
    """One email a managed mailbox sent or received, as counted for volume: no subject, no body."""

    activity_id = models.UUIDField(primary_key=True)
    mailbox = models.ForeignKey(ManagedMailbox, on_delete=models.CASCADE, related_name="+")
    day = models.DateField()
    outgoing = models.BooleanField()
    created_on = models.DateTimeField()

    class Meta:
        indexes = [models.Index(fields=["mailbox", "day"], name="mailbox_email_day_idx")]

    def __str__(self) -> str:
        return f"{'Sent' if self.outgoing else 'Received'} email {self.activity_id} on {self.day}"


class EmailAttachment(models.Model):
    """One attachment of a counted email: its size only."""

    attachment_id = models.UUIDField(primary_key=True)
    email = models.ForeignKey(MailboxEmail, on_delete=models.CASCADE, related_name="attachments")
    size_bytes = models.BigIntegerField()

    def __str__(self) -> str:
        return f"Attachment {self.attachment_id} ({self.size_bytes} bytes)"


class TrackingChangeStatus(models.TextChoices):
    PENDING = "pending", "Waiting for approval"
    APPROVED = "approved", "Approved, waiting to be applied"
    APPLYING = "applying", "Being applied"
    APPLIED = "applied", "Applied"
    REJECTED = "rejected", "Rejected"
    FAILED = "failed", "Failed"


class TrackingChange(models.Model):
    """A request to change a mailbox's tracking rule: approved by a second person, applied by a job."""

    mailbox = models.ForeignKey(ManagedMailbox, on_delete=models.CASCADE, related_name="tracking_changes")
    from_rule = models.PositiveSmallIntegerField(choices=TrackingRule.choices, null=True, blank=True)
    to_rule = models.PositiveSmallIntegerField(choices=TrackingRule.choices)
    reason = models.TextField(blank=True)
    status = models.CharField(max_length=20, choices=TrackingChangeStatus.choices, default=TrackingChangeStatus.PENDING)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    requested_at = models.DateTimeField()
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    decision_reason = models.TextField(blank=True)
    # What Dataverse held just before the change was applied, and when it was applied.
    remote_before = models.PositiveSmallIntegerField(null=True, blank=True)
    applied_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    updated_at = models.DateTimeField()

    class Meta:
        ordering = ["-requested_at", "-id"]
        constraints = [
            # One change in flight per mailbox.
            models.UniqueConstraint(
                fields=["mailbox"],
                condition=models.Q(status__in=["pending", "approved", "applying"]),
                name="tracking_change_one_open",
            )
        ]

    def __str__(self) -> str:
        return f"Tracking change {self.pk} for {self.mailbox_id} ({self.status})"


class DigestDelivery(models.Model):
    """The weekly digest sent to one owner for one week (so a rerun sends nothing twice)."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    week_start = models.DateField()
    sent_at = models.DateTimeField()
    alerts = models.PositiveIntegerField()
    breaches = models.PositiveIntegerField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "week_start"], name="digest_once_a_week")]

    def __str__(self) -> str:
        return f"Digest for {self.user_id}, week of {self.week_start}"
