"""The portal's central policy: one row of settings platform admins own (every change audited)."""

from __future__ import annotations

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models


class TrackingRule(models.IntegerChoices):
    """Dataverse's ``incomingemailfilteringmethod`` values, in plain English."""

    ALL = 0, "All email messages"
    RESPONSES = 1, "Email messages in response to Dynamics 365 email"
    LEADS_CONTACTS_ACCOUNTS = 2, "Email messages from Dynamics 365 leads, contacts and accounts"
    EMAIL_ENABLED_RECORDS = 3, "Email messages from Dynamics 365 records that are email enabled"
    NONE = 4, "No email messages"


def _default_domains() -> list[str]:
    return ["example.gov.uk"]


class PolicySettings(models.Model):
    id = models.PositiveSmallIntegerField(primary_key=True, default=1, editable=False)
    allowed_domains = models.JSONField(default=_default_domains)
    # The Exchange Online server profile: by id when known, otherwise found by this name.
    exchange_online_profile_id = models.CharField(max_length=36, blank=True)
    exchange_online_profile_name = models.CharField(max_length=200, default="Microsoft Exchange Online")
    # Tracking rules recommended for new mailboxes, and what the inventory treats as over-tracking.
    default_tracking_rule_queue = models.PositiveSmallIntegerField(
        choices=TrackingRule.choices, default=TrackingRule.EMAIL_ENABLED_RECORDS
    )
    default_tracking_rule_shared = models.PositiveSmallIntegerField(
        choices=TrackingRule.choices, default=TrackingRule.EMAIL_ENABLED_RECORDS
    )
    # Dataverse's own default for users' personal options.
    default_tracking_rule_user = models.PositiveSmallIntegerField(
        choices=TrackingRule.choices, default=TrackingRule.LEADS_CONTACTS_ACCOUNTS
    )
    # Queues on "All email messages" are always over-tracking; users only when this is on.
    flag_user_over_tracking = models.BooleanField(default=False)
    # What Dataverse's email address approval switches (organisation settings) should be.
    require_email_approval = models.BooleanField(default=True)
    # Provisioning: how often to look at an asynchronous Test & Enable, and for how long.
    test_enable_poll_seconds = models.PositiveIntegerField(default=30)
    test_enable_timeout_minutes = models.PositiveIntegerField(default=90)
    # Migration waves: Microsoft's rollout guidance is at most 200 Test & Enables per 5 hours.
    wave_test_enable_cap = models.PositiveIntegerField(default=200)
    wave_cap_window_hours = models.PositiveSmallIntegerField(default=5)
    # Whether migrating a user mailbox also moves appointments, contacts and tasks to server-side sync.
    migrate_act_for_users = models.BooleanField(default=True)
    # Governance reports: emails per mailbox per day (in and out) above which a mailbox is flagged.
    daily_volume_threshold = models.PositiveIntegerField(default=400)
    # An attachment at least this big is flagged…
    attachment_size_threshold_kb = models.PositiveIntegerField(default=4096)
    # …and so is one at or above this share of Dataverse's ``maxuploadfilesize``.
    attachment_near_limit_percent = models.PositiveSmallIntegerField(
        default=90, validators=[MinValueValidator(1), MaxValueValidator(100)]
    )
    # Names of the application registrations (``settings.M365.registrations[i].name``: "1", "2", …)
    # the portal may use for Microsoft 365 work. Empty: every configured registration.
    application_users = models.JSONField(default=list, blank=True)
    weekly_digest_enabled = models.BooleanField(default=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "policy settings"
        constraints = [models.CheckConstraint(condition=models.Q(id=1), name="policy_settings_singleton")]

    def __str__(self) -> str:
        return "Portal policy"


class BlackoutWindow(models.Model):
    """A period in which no migration Test & Enable starts (e.g. month-end close); the rest waits."""

    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField()
    reason = models.CharField(max_length=200)
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["starts_at"]
        constraints = [
            models.CheckConstraint(condition=models.Q(ends_at__gt=models.F("starts_at")), name="blackout_ends_after")
        ]

    def __str__(self) -> str:
        return f"{self.reason}: {self.starts_at:%Y-%m-%d %H:%M} to {self.ends_at:%Y-%m-%d %H:%M}"
