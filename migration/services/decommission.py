"""Decommissioning legacy sources: a plan per source with an owner, a due date and a checklist,
evidence per item, and the migration lead's sign-off — refused while any mailbox the source served
is not migrated or a manual item is not done.

Every change locks the plan, re-checks it inside the transaction and writes the audit event there.
The organisation's "Process Email Using" setting is read live from Dataverse on request.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import uuid
from dataclasses import dataclass

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Count
from django.utils import timezone

from migration.models import (
    Classification,
    DecommissionEvidence,
    DecommissionItem,
    DecommissionPlan,
    InventoryMailbox,
    LegacySource,
    LegacySourceKind,
)
from migration.selectors.decommission import (
    ALL_MIGRATED,
    CHANNEL_LABELS,
    CHECKLISTS,
    ORG_CHECK_ACTION,
    remaining_mailboxes,
)
from portal.accounts.models import User
from portal.accounts.roles import perm
from portal.audit.models import Outcome
from portal.audit.services import audit_record
from portal.exceptions import ConfigurationError, InvalidStateError, PermissionDeniedError, PortalError
from portal.m365.dataverse import DataverseClientPool
from portal.m365.errors import M365Error
from portal.m365.rows import Organization

logger = logging.getLogger(__name__)

MAX_EVIDENCE_BYTES = 10 * 1024 * 1024
EVIDENCE_NOTE_MAX = 5000
# How many mailboxes a refused sign-off names before "and N more".
REFUSAL_NAMES = 10
OUTLOOK_SOURCE_PREFIX = "Outlook client: "

MESSAGE_SIGNED_OFF = "This plan has been signed off, so it can no longer be changed."


class DecommissionError(PortalError):
    """A decommission rule refused the change."""


class SignOffRefused(DecommissionError):
    """Sign-off refused; ``not_migrated`` and ``not_done`` say what is still missing."""

    def __init__(self, message: str, *, not_migrated: list[str], not_migrated_count: int, not_done: list[str]):
        super().__init__(message)
        self.not_migrated = not_migrated
        self.not_migrated_count = not_migrated_count
        self.not_done = not_done


# --- plans --------------------------------------------------------------------------------------


def _audit_plan(actor: User | None, action: str, plan: DecommissionPlan, **kwargs) -> None:
    audit_record(actor=actor, action=action, object_type="legacy_source", object_id=plan.source_id, **kwargs)


def _create_plan(
    *, actor: User | None, source: LegacySource, business_unit_id=None, business_unit_name: str = ""
) -> DecommissionPlan:
    plan = DecommissionPlan.objects.create(
        source=source,
        business_unit_id=business_unit_id,
        business_unit_name=business_unit_name,
        created_at=timezone.now(),
    )
    DecommissionItem.objects.bulk_create(
        DecommissionItem(plan=plan, code=code, label=label) for code, label in CHECKLISTS[source.kind]
    )
    _audit_plan(
        actor,
        "decommission_plan.created",
        plan,
        after={"source": source.name, "kind": source.kind, "items": [code for code, _ in CHECKLISTS[source.kind]]},
    )
    return plan


def decommission_plan_ensure(*, actor: User, source_id: int) -> DecommissionPlan:
    """The source's plan, created with its checklist the first time it is asked for."""
    with transaction.atomic():
        source = LegacySource.objects.select_for_update().filter(pk=source_id).first()
        if source is None:
            raise DecommissionError("That legacy source no longer exists.")
        existing = DecommissionPlan.objects.filter(source=source).first()
        if existing is not None:
            return existing
        if source.kind not in CHECKLISTS:
            raise DecommissionError(f"{source.name} is not a kind of source the portal can decommission.")
        return _create_plan(actor=actor, source=source)


def decommission_outlook_populations_sync(*, actor: User) -> list[LegacySource]:
    """One Outlook-client legacy source (with its plan) per business unit whose live inventory
    mailboxes still use the Outlook client. Returns the sources created; existing ones are kept."""
    units = (
        InventoryMailbox.objects.filter(classification=Classification.OUTLOOK_CLIENT, removed_at__isnull=True)
        .exclude(business_unit_id__isnull=True)
        .values("business_unit_id", "business_unit_name")
        .annotate(count=Count("id"))
        .order_by("business_unit_name", "business_unit_id")
    )
    created: list[LegacySource] = []
    with transaction.atomic():
        # Two people pressing the button at once must not add each business unit twice. PostgreSQL
        # only: the embedded SQLite database already lets one writer in at a time.
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", ["decommission_outlook_populations_sync"])
        known = set(
            DecommissionPlan.objects.filter(
                source__kind=LegacySourceKind.OUTLOOK_CLIENT, business_unit_id__isnull=False
            ).values_list("business_unit_id", flat=True)
        )
        for unit in units:
            unit_id: uuid.UUID = unit["business_unit_id"]
            if unit_id in known:
                continue
            known.add(unit_id)
            source = _outlook_source_create(actor=actor, unit_id=unit_id, unit_name=unit["business_unit_name"])
            _create_plan(
                actor=actor, source=source, business_unit_id=unit_id, business_unit_name=unit["business_unit_name"]
            )
            created.append(source)
    return created


def _outlook_source_create(*, actor: User, unit_id: uuid.UUID, unit_name: str) -> LegacySource:
    base = f"{OUTLOOK_SOURCE_PREFIX}{unit_name or 'business unit ' + str(unit_id)[:8]}"[:190]
    name, attempt = base, 1
    # Another source may already hold the name (two business units with one name, or a router).
    while True:
        try:
            with transaction.atomic():
                source = LegacySource.objects.create(
                    kind=LegacySourceKind.OUTLOOK_CLIENT, name=name, created_at=timezone.now(), created_by=actor
                )
        except IntegrityError:
            attempt += 1
            name = f"{base} ({attempt})"
            continue
        audit_record(
            actor=actor,
            action="legacy_source.created",
            object_type="legacy_source",
            object_id=source.pk,
            after={"kind": source.kind, "name": source.name, "business_unit_id": str(unit_id)},
        )
        return source


def _plan_for_update(plan_id: int) -> DecommissionPlan:
    plan = DecommissionPlan.objects.select_for_update().select_related("source").filter(pk=plan_id).first()
    if plan is None:
        raise DecommissionError("That decommission plan no longer exists.")
    return plan


def decommission_plan_update(
    *, actor: User, plan_id: int, owner: User | None, due_date: dt.date | None
) -> DecommissionPlan:
    """Set who owns the decommissioning and when it is due."""
    with transaction.atomic():
        plan = _plan_for_update(plan_id)
        if plan.signed_off_at is not None:
            raise InvalidStateError(MESSAGE_SIGNED_OFF)
        before = {"owner": plan.owner_id, "due_date": plan.due_date.isoformat() if plan.due_date else None}
        plan.owner = owner
        plan.due_date = due_date
        plan.save(update_fields=["owner", "due_date", "updated_at"])
        after = {"owner": plan.owner_id, "due_date": due_date.isoformat() if due_date else None}
        _audit_plan(actor, "decommission_plan.updated", plan, before=before, after=after)
    return plan


# --- checklist items and evidence ---------------------------------------------------------------

# Content sniffing: the first bytes decide the type, never the file name or the browser's claim.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"%PDF-", "application/pdf"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
)
_TEXT_EXTENSIONS = {".txt": "text/plain", ".log": "text/plain", ".csv": "text/csv"}
EVIDENCE_TYPES_TEXT = "a PDF, PNG, JPEG, plain text or CSV file"


def evidence_content_type(file_name: str, content: bytes) -> str | None:
    """The safe type the content really is, or None when it is none of them."""
    for magic, content_type in _MAGIC:
        if content.startswith(magic):
            return content_type
    sample = content[:65536]
    if b"\x00" in sample:
        return None
    try:
        # A multibyte character cut at the sample's end is not a reason to refuse.
        sample.decode("utf-8")
    except UnicodeDecodeError as error:
        if error.start < len(sample) - 4:
            return None
    lowered = sample.lstrip()[:20].lower()
    if lowered.startswith((b"<!doctype", b"<html", b"<svg", b"<?xml", b"<script")):
        return None  # markup could run in a browser that ignores the download header
    extension = "." + file_name.rsplit(".", 1)[-1].lower() if "." in file_name else ""
    return _TEXT_EXTENSIONS.get(extension, "text/plain")


def _clean_file_name(file_name: str) -> str:
    name = file_name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(character for character in name if character.isprintable() and character not in '"')
    return name.strip()[:255] or "evidence"


def decommission_item_update(
    *,
    actor: User,
    item_id: int,
    done: bool,
    evidence_note: str,
    evidence_file: tuple[str, bytes] | None = None,
) -> DecommissionItem:
    """Mark a manual checklist item done or not done, with its evidence note and optionally a file."""
    evidence_note = evidence_note.strip()
    if len(evidence_note) > EVIDENCE_NOTE_MAX:
        raise DecommissionError(
            f"The evidence note must be {EVIDENCE_NOTE_MAX:,} characters or fewer", field="evidence_note"
        )
    upload = _evidence_checked(evidence_file) if evidence_file is not None else None
    with transaction.atomic():
        item = DecommissionItem.objects.select_for_update().filter(pk=item_id).first()
        if item is None:
            raise DecommissionError("That checklist item no longer exists.")
        plan = _plan_for_update(item.plan_id)
        if plan.signed_off_at is not None:
            raise InvalidStateError(MESSAGE_SIGNED_OFF)
        if item.code == ALL_MIGRATED:
            raise InvalidStateError(
                "“All its mailboxes migrated” is worked out from the mailboxes, so it cannot be ticked by hand."
            )
        before = {"done": item.done, "evidence_note": item.evidence_note}
        if done and not item.done:
            item.done_by, item.done_at = actor, timezone.now()
        elif not done:
            item.done_by, item.done_at = None, None
        item.done = done
        item.evidence_note = evidence_note
        item.save(update_fields=["done", "done_by", "done_at", "evidence_note"])
        after: dict = {"done": item.done, "evidence_note": item.evidence_note}
        if upload is not None:
            name, content, content_type = upload
            evidence = DecommissionEvidence.objects.create(
                item=item,
                file_name=name,
                content_type=content_type,
                size=len(content),
                sha256=hashlib.sha256(content).hexdigest(),
                content=content,
                uploaded_by=actor,
                uploaded_at=timezone.now(),
            )
            after["evidence"] = {
                "id": evidence.pk,
                "file_name": evidence.file_name,
                "content_type": evidence.content_type,
                "size": evidence.size,
                "sha256": evidence.sha256,
            }
        _audit_plan(actor, "decommission_item.updated", plan, before=before, after={"item": item.code, **after})
    return item


def _evidence_checked(evidence_file: tuple[str, bytes]) -> tuple[str, bytes, str]:
    file_name, content = evidence_file
    if not content:
        raise DecommissionError("The selected file is empty", field="evidence_file")
    if len(content) > MAX_EVIDENCE_BYTES:
        raise DecommissionError("The selected file must be smaller than 10MB", field="evidence_file")
    name = _clean_file_name(file_name)
    content_type = evidence_content_type(name, content)
    if content_type is None:
        raise DecommissionError(f"The selected file must be {EVIDENCE_TYPES_TEXT}", field="evidence_file")
    return name, content, content_type


# --- sign-off -----------------------------------------------------------------------------------


def _refusal_message(*, source: LegacySource, names: list[str], count: int, not_done: list[str]) -> str:
    sentences = [f"{source.name} cannot be signed off yet."]
    if count:
        listed = ", ".join(names[:REFUSAL_NAMES])
        more = f" and {count - REFUSAL_NAMES:,} more" if count > REFUSAL_NAMES else ""
        noun = "1 mailbox it served is" if count == 1 else f"{count:,} mailboxes it served are"
        sentences.append(f"{noun} not migrated: {listed}{more}.")
    if not_done:
        sentences.append("Not done: " + "; ".join(f"“{label}”" for label in not_done) + ".")
    return " ".join(sentences)


def decommission_plan_sign_off(*, actor: User, plan_id: int, note: str = "") -> DecommissionPlan:
    """The migration lead's sign-off that the source is retired; refused while anything is missing."""
    if not actor.has_perm(perm("lead_migration")):
        raise PermissionDeniedError("Only a migration lead can sign off a decommission plan.")
    note = note.strip()
    refused: SignOffRefused | None = None
    with transaction.atomic():
        plan = _plan_for_update(plan_id)
        if plan.signed_off_at is not None:
            raise InvalidStateError(f"{plan.source.name} was already signed off.")
        remaining = remaining_mailboxes(plan.source, business_unit_id=plan.business_unit_id)
        names = [
            mailbox.email_address or mailbox.name or str(mailbox.dataverse_id)
            for mailbox in remaining.only("name", "email_address", "dataverse_id")[:REFUSAL_NAMES]
        ]
        count = remaining.count() if len(names) == REFUSAL_NAMES else len(names)
        not_done = list(
            DecommissionItem.objects.filter(plan=plan, done=False)
            .exclude(code=ALL_MIGRATED)
            .order_by("id")
            .values_list("label", flat=True)
        )
        if count or not_done:
            message = _refusal_message(source=plan.source, names=names, count=count, not_done=not_done)
            refused = SignOffRefused(message, not_migrated=names, not_migrated_count=count, not_done=not_done)
        else:
            plan.signed_off_by = actor
            plan.signed_off_at = timezone.now()
            plan.sign_off_note = note
            plan.save(update_fields=["signed_off_by", "signed_off_at", "sign_off_note", "updated_at"])
            DecommissionItem.objects.filter(plan=plan, code=ALL_MIGRATED).update(done=True, done_at=plan.signed_off_at)
            _audit_plan(
                actor,
                "decommission_plan.signed_off",
                plan,
                after={"source": plan.source.name, "note": note, "signed_off_at": plan.signed_off_at.isoformat()},
            )
    if refused is not None:
        _audit_plan(
            actor,
            "decommission_plan.sign_off_refused",
            plan,
            outcome=Outcome.FAILURE,
            reason=refused.message,
            after={"not_migrated": refused.not_migrated_count, "not_done": refused.not_done},
        )
        raise refused
    return plan


# --- "Process Email Using" ----------------------------------------------------------------------


@dataclass(frozen=True)
class EmailChannelCheck:
    channel: int | None
    organization_name: str

    @property
    def is_sss(self) -> bool:
        return self.channel == 0

    @property
    def label(self) -> str:
        if self.channel is None:
            return "Not set"
        return f"{CHANNEL_LABELS.get(self.channel, 'Unknown value')} ({self.channel})"


def organization_email_channel_check(*, actor: User) -> EmailChannelCheck:
    """Read the organisation's "Process Email Using" setting from Dataverse now, and audit what it said."""
    if not settings.M365.enabled:
        raise ConfigurationError(
            "The portal is not connected to Microsoft 365, so the organisation's setting cannot be checked."
        )
    try:
        client = DataverseClientPool(settings.M365).client()
        rows = [Organization.from_row(row) for row in client.iter_rows("organizations", select=Organization.SELECT)]
    except M365Error as error:
        logger.warning("organisation email channel check failed: %s", error)
        audit_record(
            actor=actor,
            action=ORG_CHECK_ACTION,
            object_type="organization",
            outcome=Outcome.FAILURE,
            reason=str(error)[:500],
        )
        raise DecommissionError(
            "Dynamics 365 could not be reached to check the setting. Try again in a few minutes."
        ) from error
    if not rows:
        raise DecommissionError("Dynamics 365 returned no organisation, so the setting is unknown.")
    organisation = rows[0]
    channel = int(organisation.email_connection_channel) if organisation.email_connection_channel is not None else None
    audit_record(
        actor=actor,
        action=ORG_CHECK_ACTION,
        object_type="organization",
        object_id=organisation.id,
        after={"email_connection_channel": channel},
    )
    return EmailChannelCheck(channel=channel, organization_name=organisation.name or "")
