"""The legacy inventory: every Dataverse mailbox, how its email reaches Dynamics 365, and what blocks it.

Discovery writes ``InventoryMailbox`` rows from Dataverse (and Graph for
Exchange Online hosting); classification explains each one; imported Email
Router configurations record which mailboxes a legacy router still serves.
Waves, migration runs and decommissioning build on these in later work.
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
