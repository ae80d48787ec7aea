"""The legacy inventory: every Dataverse mailbox, how its email reaches Dynamics 365, and what blocks it.

Discovery writes ``InventoryMailbox`` rows from Dataverse (and Graph for
Exchange Online hosting); classification explains each one; imported Email
Router configurations record which mailboxes a legacy router still serves.
Waves move inventory mailboxes to server-side sync: a pre-flight reads each one's live
state, a second person approves, and a run per mailbox goes through checkpointed steps that
snapshot what they change so it can be rolled back. Decommission plans track each legacy source
until it is signed off.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models


class Classification(models.TextChoices):
    OUTLOOK_CLIENT = "outlook_client", "Outlook client"
    EMAIL_ROUTER = "email_router", "Email Router"
    FORWARD_MAILBOX = "forward_mailbox", "Forward mailbox"
    SSS_WRONG_PROFILE = "sss_wrong_profile", "Server-side sync on a non-compliant profile"
    NOT_IN_EXCHANGE_ONLINE = "not_in_exchange_online", "Not in Exchange Online"
    NO_EMAIL = "no_email", "Disabled or no email"
    COMPLIANT_SSS = "compliant_sss", "Compliant server-side sync"


class Readiness(models.TextChoices):
    READY = "ready", "Ready to migrate"
    BLOCKED = "blocked", "Blocked"
    COMPLIANT = "compliant", "Compliant"


class OwnerType(models.TextChoices):
    USER = "user", "User"
    QUEUE = "queue", "Queue"
    NONE = "none", "No owner (forward mailbox)"


class ExchangePresence(models.TextChoices):
    UNKNOWN = "unknown", "Not checked yet"
    EXCHANGE_ONLINE = "exchange_online", "In Exchange Online"
    NOT_IN_EXCHANGE_ONLINE = "not_in_exchange_online", "Not in Exchange Online"
    NOT_FOUND = "not_found", "No such user in the directory"


class InventoryMailbox(models.Model):
    """One Dataverse mailbox as discovery last saw it, with its classification and blockers."""

    dataverse_id = models.UUIDField(unique=True)
    name = models.CharField(max_length=300, blank=True)
    email_address = models.CharField(max_length=320, blank=True, db_index=True)

    owner_type = models.CharField(max_length=10, choices=OwnerType.choices, default=OwnerType.NONE)
    owner_dataverse_id = models.UUIDField(null=True, blank=True)
    owner_name = models.CharField(max_length=300, blank=True)
    owner_disabled = models.BooleanField(default=False)
    business_unit_id = models.UUIDField(null=True, blank=True)
    business_unit_name = models.CharField(max_length=300, blank=True)
    team_name = models.CharField(max_length=300, blank=True)

    profile_id = models.UUIDField(null=True, blank=True)
    profile_name = models.CharField(max_length=300, blank=True)
    incoming_delivery = models.PositiveSmallIntegerField(null=True, blank=True)
    outgoing_delivery = models.PositiveSmallIntegerField(null=True, blank=True)
    act_delivery = models.PositiveSmallIntegerField(null=True, blank=True)
    email_approval = models.PositiveSmallIntegerField(null=True, blank=True)
    incoming_status = models.PositiveSmallIntegerField(null=True, blank=True)
    outgoing_status = models.PositiveSmallIntegerField(null=True, blank=True)
    act_status = models.PositiveSmallIntegerField(null=True, blank=True)
    is_forward_mailbox = models.BooleanField(default=False)
    open_error_alerts = models.PositiveIntegerField(default=0)

    exchange_presence = models.CharField(
        max_length=30, choices=ExchangePresence.choices, default=ExchangePresence.UNKNOWN
    )
    user_purpose = models.CharField(max_length=20, blank=True)
    presence_checked_at = models.DateTimeField(null=True, blank=True)

    classification = models.CharField(max_length=30, choices=Classification.choices, db_index=True)
    readiness = models.CharField(max_length=20, choices=Readiness.choices, db_index=True)
    blockers = models.JSONField(default=list)  # [{"code", "message", "fix"}]
    explanation = models.TextField(blank=True)  # why this classification, in plain English

    # Dataverse's modifiedon of the row, for incremental discovery.
    dataverse_modified_on = models.DateTimeField(null=True, blank=True)
    first_seen_at = models.DateTimeField()
    last_seen_at = models.DateTimeField()
    last_sync = models.ForeignKey("InventorySync", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    removed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name", "id"]
        indexes = [
            models.Index(fields=["classification", "name", "id"], name="inventory_class_name_idx"),
            models.Index(fields=["readiness", "name", "id"], name="inventory_readiness_name_idx"),
            models.Index(fields=["team_name", "name", "id"], name="inventory_team_name_idx"),
            models.Index(fields=["business_unit_name", "name", "id"], name="inventory_bu_name_idx"),
            models.Index(fields=["owner_type", "name", "id"], name="inventory_owner_type_idx"),
            models.Index(fields=["name", "id"], name="inventory_name_idx"),
            models.Index(fields=["removed_at"], name="inventory_removed_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.name} <{self.email_address}>"


class InventoryAnnotation(models.Model):
    """What people know that Dataverse does not: corrections, notes, exclusions. Survives every sync."""

    mailbox = models.OneToOneField(InventoryMailbox, on_delete=models.CASCADE, related_name="annotation")
    owner_correction = models.CharField(
        max_length=320, blank=True, help_text="The real owner, when Dataverse is wrong."
    )
    notes = models.TextField(blank=True)
    excluded = models.BooleanField(default=False, help_text="Left out of migration on purpose.")
    exclusion_reason = models.TextField(blank=True)
    updated_at = models.DateTimeField()
    updated_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")

    def __str__(self) -> str:
        return f"Annotation of {self.mailbox}"


class InventoryChange(models.Model):
    """History: what discovery saw change on a mailbox (classification, delivery, profile, …)."""

    mailbox = models.ForeignKey(InventoryMailbox, on_delete=models.CASCADE, related_name="changes")
    sync = models.ForeignKey("InventorySync", on_delete=models.SET_NULL, null=True, related_name="+")
    at = models.DateTimeField()
    changes = models.JSONField()  # {"field": [before, after]}

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [models.Index(fields=["mailbox", "-at"], name="inventory_change_mailbox_idx")]

    def __str__(self) -> str:
        return f"Change to {self.mailbox_id} at {self.at}"


class SyncKind(models.TextChoices):
    FULL = "full", "Full"
    INCREMENTAL = "incremental", "Changed mailboxes only"


class SyncStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Finished"
    FAILED = "failed", "Failed"


class InventorySync(models.Model):
    """One discovery run, with progress for the page that watches it."""

    kind = models.CharField(max_length=20, choices=SyncKind.choices)
    status = models.CharField(max_length=20, choices=SyncStatus.choices, default=SyncStatus.QUEUED)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    requested_at = models.DateTimeField()
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # The newest modifiedon seen; the next incremental run asks for rows modified after it.
    high_water_mark = models.DateTimeField(null=True, blank=True)
    phase = models.CharField(max_length=100, blank=True)
    mailboxes_seen = models.PositiveIntegerField(default=0)
    mailboxes_changed = models.PositiveIntegerField(default=0)
    mailboxes_removed = models.PositiveIntegerField(default=0)
    presence_checked = models.PositiveIntegerField(default=0)
    requests_made = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-requested_at", "-id"]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} discovery {self.pk} ({self.status})"


class OrganizationSnapshot(models.Model):
    """The organisation's email settings as Dataverse holds them, from the last discovery."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1, editable=False)
    organization_id = models.UUIDField(null=True, blank=True)
    name = models.CharField(max_length=300, blank=True)
    default_profile_id = models.UUIDField(null=True, blank=True)
    email_connection_channel = models.PositiveSmallIntegerField(null=True, blank=True)  # 0 SSS, 1 Email Router
    require_approval_user_email = models.BooleanField(default=False)
    require_approval_queue_email = models.BooleanField(default=False)
    max_upload_file_size = models.PositiveIntegerField(null=True, blank=True)
    taken_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"Organisation settings of {self.name}"


class ServerProfile(models.Model):
    """An email server profile in Dataverse, and whether it is the Exchange Online one."""

    dataverse_id = models.UUIDField(unique=True)
    name = models.CharField(max_length=300)
    server_type = models.PositiveSmallIntegerField(null=True, blank=True)
    incoming_credentials = models.PositiveSmallIntegerField(null=True, blank=True)
    outgoing_credentials = models.PositiveSmallIntegerField(null=True, blank=True)
    is_exchange_online = models.BooleanField(default=False)
    is_legacy = models.BooleanField(default=False, help_text="POP3/SMTP or IMAP: the Email Router era.")
    active = models.BooleanField(default=True)
    taken_at = models.DateTimeField()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


# --- legacy sources ---------------------------------------------------------------------------


class LegacySourceKind(models.TextChoices):
    EMAIL_ROUTER = "email_router", "Email Router server"
    OUTLOOK_CLIENT = "outlook_client", "Dynamics 365 for Outlook deployment"


class LegacySource(models.Model):
    """A legacy component still serving mailboxes, tracked until it is decommissioned."""

    kind = models.CharField(max_length=20, choices=LegacySourceKind.choices)
    name = models.CharField(max_length=200, unique=True, help_text="For a router, its server's name.")
    created_at = models.DateTimeField()
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class ImportStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Reading the file"
    SUCCEEDED = "succeeded", "Imported"
    FAILED = "failed", "Could not import"


class RouterImport(models.Model):
    """One uploaded Email Router configuration, parsed in the background within size and time bounds."""

    source = models.ForeignKey(LegacySource, on_delete=models.CASCADE, related_name="imports")
    status = models.CharField(max_length=20, choices=ImportStatus.choices, default=ImportStatus.QUEUED)
    file_name = models.CharField(max_length=255)
    file_size = models.PositiveIntegerField()
    file_sha256 = models.CharField(max_length=64)
    content = models.BinaryField()
    state_file_name = models.CharField(max_length=255, blank=True)
    state_content = models.BinaryField(null=True, blank=True)
    uploaded_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    uploaded_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    system_configuration = models.JSONField(default=dict)
    warnings = models.JSONField(default=list)
    error = models.TextField(blank=True)
    profiles_found = models.PositiveIntegerField(default=0)
    mailboxes_found = models.PositiveIntegerField(default=0)
    mailboxes_matched = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-uploaded_at", "-id"]

    def __str__(self) -> str:
        return f"{self.file_name} for {self.source}"


class LegacyProfile(models.Model):
    """An incoming or outgoing profile defined in a router's configuration."""

    source = models.ForeignKey(LegacySource, on_delete=models.CASCADE, related_name="profiles")
    router_import = models.ForeignKey(RouterImport, on_delete=models.CASCADE, related_name="profiles")
    name = models.CharField(max_length=300)
    direction = models.CharField(max_length=20)  # incoming / outgoing
    protocol = models.CharField(max_length=50, blank=True)  # Exchange, POP3, SMTP, …
    server = models.CharField(max_length=500, blank=True)
    authentication = models.CharField(max_length=100, blank=True)
    settings = models.JSONField(default=dict)

    class Meta:
        ordering = ["name", "direction"]

    def __str__(self) -> str:
        return f"{self.name} ({self.direction})"


class LegacyMailboxLink(models.Model):
    """A mailbox a legacy source serves: what the file says, and the inventory mailbox it matched."""

    source = models.ForeignKey(LegacySource, on_delete=models.CASCADE, related_name="links")
    router_import = models.ForeignKey(RouterImport, on_delete=models.CASCADE, related_name="links")
    mailbox = models.ForeignKey(
        InventoryMailbox, on_delete=models.SET_NULL, null=True, blank=True, related_name="legacy_links"
    )
    email_address = models.CharField(max_length=320)
    object_type = models.CharField(max_length=20, blank=True)  # user, queue, forward
    object_name = models.CharField(max_length=300, blank=True)
    directions = models.JSONField(default=list)
    profile_names = models.JSONField(default=list)
    raw = models.JSONField(default=dict)

    class Meta:
        ordering = ["email_address"]
        constraints = [
            models.UniqueConstraint(fields=["router_import", "email_address"], name="legacy_link_unique_address")
        ]
        indexes = [models.Index(fields=["source", "mailbox"], name="legacy_link_source_idx")]

    def __str__(self) -> str:
        return f"{self.email_address} via {self.source}"


# --- pre-flight ---------------------------------------------------------------------------------


class PreflightStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Checking"
    FINISHED = "finished", "Finished"
    FAILED = "failed", "Could not finish"


class PreflightVerdict(models.TextChoices):
    READY = "ready", "Would migrate"
    BLOCKED = "blocked", "Would fail"
    ALREADY_COMPLIANT = "already_compliant", "Already compliant"
    GONE = "gone", "No longer in Dynamics 365"


class PreflightRun(models.Model):
    """A dry run over a set of inventory mailboxes: what would change and what would fail."""

    wave = models.ForeignKey("Wave", on_delete=models.CASCADE, null=True, blank=True, related_name="preflights")
    status = models.CharField(max_length=20, choices=PreflightStatus.choices, default=PreflightStatus.QUEUED)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    requested_at = models.DateTimeField()
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    mailboxes_total = models.PositiveIntegerField(default=0)
    mailboxes_checked = models.PositiveIntegerField(default=0)
    # Counts by verdict, and anything that stopped the run.
    summary = models.JSONField(default=dict)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-requested_at", "-id"]

    def __str__(self) -> str:
        return f"Pre-flight {self.pk} ({self.status})"


class PreflightResult(models.Model):
    """One mailbox's pre-flight: live values, planned changes (before → after) and findings with fixes."""

    preflight = models.ForeignKey(PreflightRun, on_delete=models.CASCADE, related_name="results")
    mailbox = models.ForeignKey(InventoryMailbox, on_delete=models.CASCADE, related_name="preflight_results")
    verdict = models.CharField(max_length=20, choices=PreflightVerdict.choices)
    live_state = models.JSONField(default=dict)
    # [{"field", "label", "before", "after"}]
    changes = models.JSONField(default=list)
    # [{"code", "message", "fix", "blocking"}]
    findings = models.JSONField(default=list)
    checked_at = models.DateTimeField()

    class Meta:
        ordering = ["preflight", "id"]
        constraints = [models.UniqueConstraint(fields=["preflight", "mailbox"], name="preflight_result_unique_mailbox")]

    def __str__(self) -> str:
        return f"{self.mailbox}: {self.verdict}"


# --- waves --------------------------------------------------------------------------------------


class WaveStatus(models.TextChoices):
    DRAFT = "draft", "Draft"
    AWAITING_APPROVAL = "awaiting_approval", "Waiting for approval"
    APPROVED = "approved", "Approved"
    RUNNING = "running", "Running"
    PAUSED = "paused", "Paused"
    COMPLETED = "completed", "Completed"
    CANCELLED = "cancelled", "Cancelled"


class Wave(models.Model):
    """A set of mailboxes migrated together, approved by a platform admin other than its creator."""

    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    status = models.CharField(max_length=20, choices=WaveStatus.choices, default=WaveStatus.DRAFT)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField()
    # How the wave was built: the inventory filters, or the uploaded CSV's name and counts.
    built_from = models.JSONField(default=dict)
    # Pacing, copied from policy when the wave is created: Test & Enables per window.
    test_enable_cap = models.PositiveIntegerField(default=200)
    cap_window_hours = models.PositiveSmallIntegerField(default=5)
    migrate_act_for_users = models.BooleanField(default=True)
    submitted_at = models.DateTimeField(null=True, blank=True)
    approved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    approved_at = models.DateTimeField(null=True, blank=True)
    approved_preflight = models.ForeignKey(
        PreflightRun, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    decision_note = models.TextField(blank=True)
    started_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return self.name


class WaveMailboxState(models.TextChoices):
    PENDING = "pending", "Not started"
    SCHEDULED = "scheduled", "Scheduled"
    RUNNING = "running", "Migrating"
    WAITING = "waiting", "Waiting for Test & Enable"
    MIGRATED = "migrated", "Migrated"
    NEEDS_ATTENTION = "needs_attention", "Needs attention"
    ROLLING_BACK = "rolling_back", "Rolling back"
    ROLLED_BACK = "rolled_back", "Rolled back"
    ROLLBACK_CONFLICT = "rollback_conflict", "Not rolled back: changed in Dynamics 365"
    CANCELLED = "cancelled", "Cancelled"


# A mailbox is in at most one wave in these states at a time.
ACTIVE_WAVE_MAILBOX_STATES = (
    WaveMailboxState.PENDING,
    WaveMailboxState.SCHEDULED,
    WaveMailboxState.RUNNING,
    WaveMailboxState.WAITING,
    WaveMailboxState.ROLLING_BACK,
)


class WaveMailbox(models.Model):
    """One mailbox in a wave: its place in the order, when it may start, and its migration run."""

    wave = models.ForeignKey(Wave, on_delete=models.CASCADE, related_name="mailboxes")
    mailbox = models.ForeignKey(InventoryMailbox, on_delete=models.PROTECT, related_name="wave_entries")
    # Queues before users, then priority (lower first), then name: the order the wave runs in.
    position = models.PositiveIntegerField(default=0)
    priority = models.PositiveSmallIntegerField(default=100)
    is_queue = models.BooleanField(default=False)
    state = models.CharField(max_length=20, choices=WaveMailboxState.choices, default=WaveMailboxState.PENDING)
    active = models.BooleanField(default=True)
    not_before = models.DateTimeField(null=True, blank=True)
    # Which worker holds the run and until when; an expired lease lets another worker resume it.
    lease_owner = models.CharField(max_length=64, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    # The Dataverse values before the migration changed anything, and their ETags.
    snapshot = models.JSONField(null=True, blank=True)
    snapshot_etags = models.JSONField(default=dict)
    test_enable_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    error_code = models.CharField(max_length=100, blank=True)
    rollback_report = models.JSONField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["wave", "position", "id"]
        constraints = [
            models.UniqueConstraint(fields=["wave", "mailbox"], name="wave_mailbox_unique"),
            models.UniqueConstraint(
                fields=["mailbox"], condition=models.Q(active=True), name="wave_mailbox_one_active_wave"
            ),
        ]
        indexes = [
            models.Index(fields=["wave", "state"], name="wave_mailbox_state_idx"),
            models.Index(fields=["state", "lease_expires_at"], name="wave_mailbox_lease_idx"),
            models.Index(fields=["test_enable_at"], name="wave_mailbox_test_enable_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.mailbox} in {self.wave} ({self.state})"


class MigrationStepStatus(models.TextChoices):
    PENDING = "pending", "Not started"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Done"
    SKIPPED = "skipped", "Not needed"
    FAILED = "failed", "Failed"


class MigrationStep(models.Model):
    """One checkpointed step of a mailbox's migration (or rollback): what it found, did and when."""

    entry = models.ForeignKey(WaveMailbox, on_delete=models.CASCADE, related_name="steps")
    order = models.PositiveSmallIntegerField()
    name = models.CharField(max_length=50)
    status = models.CharField(max_length=20, choices=MigrationStepStatus.choices, default=MigrationStepStatus.PENDING)
    idempotency_key = models.CharField(max_length=120, unique=True)
    before_state = models.JSONField(null=True, blank=True)
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    error_code = models.CharField(max_length=100, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["entry", "order"]
        constraints = [models.UniqueConstraint(fields=["entry", "order"], name="migration_step_unique_order")]

    def __str__(self) -> str:
        return f"{self.order}. {self.name} ({self.status})"


class MigrationProgressDay(models.Model):
    """Mailboxes by state at the end of a day (overwritten during the day), for the burn-down chart."""

    day = models.DateField(unique=True)
    legacy = models.PositiveIntegerField(default=0)
    compliant = models.PositiveIntegerField(default=0)
    migrated = models.PositiveIntegerField(default=0)
    needs_attention = models.PositiveIntegerField(default=0)
    recorded_at = models.DateTimeField()

    class Meta:
        ordering = ["day"]

    def __str__(self) -> str:
        return f"{self.day}: {self.legacy} legacy"


# --- decommissioning ----------------------------------------------------------------------------


class DecommissionPlan(models.Model):
    """Retiring one legacy source: owner, due date, checklist, and the migration lead's sign-off."""

    source = models.OneToOneField(LegacySource, on_delete=models.CASCADE, related_name="decommission")
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    due_date = models.DateField(null=True, blank=True)
    # For an Outlook-client population: the business unit it covers.
    business_unit_id = models.UUIDField(null=True, blank=True)
    business_unit_name = models.CharField(max_length=300, blank=True)
    signed_off_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    signed_off_at = models.DateTimeField(null=True, blank=True)
    sign_off_note = models.TextField(blank=True)
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"Decommissioning {self.source}"


class DecommissionItem(models.Model):
    """One checklist item; ``all_migrated`` is computed from the mailboxes, never ticked."""

    plan = models.ForeignKey(DecommissionPlan, on_delete=models.CASCADE, related_name="items")
    code = models.CharField(max_length=40)
    label = models.CharField(max_length=200)
    done = models.BooleanField(default=False)
    done_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    done_at = models.DateTimeField(null=True, blank=True)
    evidence_note = models.TextField(blank=True)

    class Meta:
        ordering = ["plan", "id"]
        constraints = [models.UniqueConstraint(fields=["plan", "code"], name="decommission_item_unique_code")]

    def __str__(self) -> str:
        return self.label


class DecommissionEvidence(models.Model):
    """A file attached to a checklist item as evidence (kept in the database, size-bounded)."""

    item = models.ForeignKey(DecommissionItem, on_delete=models.CASCADE, related_name="evidence")
    file_name = models.CharField(max_length=255)
    content_type = models.CharField(max_length=100)
    size = models.PositiveIntegerField()
    sha256 = models.CharField(max_length=64)
    content = models.BinaryField()
    uploaded_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    uploaded_at = models.DateTimeField()

    class Meta:
        ordering = ["item", "uploaded_at"]

    def __str__(self) -> str:
        return self.file_name
