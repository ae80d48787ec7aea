"""Requests for new shared and queue mailboxes: drafts, answers, submission, withdrawal.

Only the requester changes a request's answers, and only while it is a draft or
has been returned for more information. Each function locks the request row,
checks its status inside the lock, saves with ``update_fields`` and writes the
audit event in the same transaction.

An address is held by every open request (``OPEN``) and by anything that
already uses it in Microsoft 365. Microsoft 365 cannot take part in our
transaction, so it is asked before the transaction starts rather than while a
row lock and a database connection are held across network calls; the
provisioning job checks the tenant again before it creates anything.
"""

from __future__ import annotations

import hashlib
import logging
import re
import unicodedata
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import connection, transaction
from django.utils import timezone

from onboarding.models import (
    EDITABLE,
    OPEN,
    WITHDRAWABLE,
    DataClassification,
    MailboxKind,
    MailboxRequest,
    NotificationEvent,
    QueueVisibility,
    RequestMember,
    RequestStatus,
)
from onboarding.selectors.mailbox_requests import allowed_domains, teams_for
from onboarding.services import approvals
from onboarding.services.notifications import notify
from portal.accounts.models import User
from portal.accounts.roles import perm
from portal.audit.services import audit_record
from portal.exceptions import InvalidStateError, PermissionDeniedError, PortalError
from portal.m365.errors import M365Error
from portal.m365.exchange import ExchangeAdminClient
from portal.m365.graph import GraphClient
from portal.policy.models import TrackingRule

logger = logging.getLogger(__name__)

AUDIT_OBJECT_TYPE = "mailbox_request"

# Bounds shared with the forms, so a page and the service never disagree.
LOCAL_PART_MAX = 64
# Exchange limits a mailbox's Name to 64 characters; keeping the display name within it lets it serve as one.
DISPLAY_NAME_MAX = 64
JUSTIFICATION_MAX = 5000
TRACKING_REASON_MAX = 1000
TICKET_REFERENCE_MAX = 50
WITHDRAW_REASON_MAX = 1000
DAILY_VOLUME_MAX = 100_000
# Exchange Online's largest message is 150 MB.
ATTACHMENT_KB_MAX = 153_600
RETENTION_MONTHS_MIN = 1
RETENTION_MONTHS_MAX = 240
MEMBERS_MAX = 100
EMAIL_MAX = 254

# Exchange alias rules: these characters, no leading, trailing or doubled full stop.
_ALIAS_CHARACTERS = re.compile(r"^[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~.]+$")
_JOINERS = {"\u200c", "\u200d"}
ALIAS_CHARACTERS_TEXT = "letters, numbers and ! # $ % & ' * + - / = ? ^ _ ` { | } ~ ."

ANSWER_FIELDS = (
    "kind",
    "display_name",
    "local_part",
    "domain",
    "team",
    "owner",
    "backup_owner",
    "justification",
    "ticket_reference",
    "queue_visibility",
    "tracking_rule",
    "tracking_reason",
    "expected_daily_volume",
    "typical_attachment_kb",
    "retention_months",
    "data_classification",
)
_RELATIONS = ("team", "owner", "backup_owner")
_MULTILINE = ("justification", "tracking_reason")
_TEXT_LIMITS = {
    "display_name": DISPLAY_NAME_MAX,
    "justification": JUSTIFICATION_MAX,
    "tracking_reason": TRACKING_REASON_MAX,
    "ticket_reference": TICKET_REFERENCE_MAX,
}
_NUMBER_LIMITS = {
    "expected_daily_volume": (0, DAILY_VOLUME_MAX),
    "typical_attachment_kb": (0, ATTACHMENT_KB_MAX),
    "retention_months": (RETENTION_MONTHS_MIN, RETENTION_MONTHS_MAX),
}
_CHOICES = {
    "kind": MailboxKind.values,
    "queue_visibility": QueueVisibility.values,
    "tracking_rule": TrackingRule.values,
    "data_classification": DataClassification.values,
}
_MEMBER_PERMISSIONS = ("full_access", "automapping", "send_as", "send_on_behalf")

# Each answer a submission needs, with the message shown when it is missing.
MISSING_MESSAGES = {
    "kind": "Select the kind of mailbox",
    "display_name": "Enter a name for the mailbox",
    "local_part": "Enter the email address of the mailbox",
    "team": "Select the team that will own the mailbox",
    "owner": "Enter the accountable owner's email address",
    "backup_owner": "Enter the backup owner's email address",
    "queue_visibility": "Select whether the queue is public or private",
    "tracking_rule": "Select which email messages the queue tracks",
    "tracking_reason": "Enter why the queue needs to track all email messages",
    "expected_daily_volume": "Enter how many email messages the mailbox expects each day",
    "typical_attachment_kb": "Enter the typical size of an attachment",
    "retention_months": "Enter how many months email is kept",
    "data_classification": "Select the data classification",
    "justification": "Enter why your team needs this mailbox",
}

SAME_OWNERS = "The backup owner must be a different person from the accountable owner"
TENANT_UNAVAILABLE = "We could not check that address with Microsoft 365. Try again in a few minutes."


class RequestIncompleteError(PortalError):
    """Submission refused: answers are missing. ``problems`` lists ``(field, message)`` for each."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        field, message = problems[0]
        super().__init__(message, field=field)
        self.problems = problems


@dataclass(frozen=True)
class MemberAnswer:
    email: str
    full_access: bool
    automapping: bool
    send_as: bool
    send_on_behalf: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "email": self.email,
            "full_access": self.full_access,
            "automapping": self.automapping,
            "send_as": self.send_as,
            "send_on_behalf": self.send_on_behalf,
        }


# --- checks shared with the forms --------------------------------------------------------------


def local_part_problem(value: str) -> str | None:
    """Why ``value`` cannot be the part of an Exchange address before the @, or ``None``."""
    if not value:
        return "Enter the first part of the email address"
    if len(value) > LOCAL_PART_MAX:
        return f"The first part of the email address must be {LOCAL_PART_MAX} characters or fewer"
    if not _ALIAS_CHARACTERS.match(value):
        return f"The first part of the email address can only contain {ALIAS_CHARACTERS_TEXT}"
    if value.startswith(".") or value.endswith("."):
        return "The first part of the email address cannot start or end with a full stop"
    if ".." in value:
        return "The first part of the email address cannot contain two full stops in a row"
    return None


def text_problem(value: str, *, multiline: bool = False) -> str | None:
    """Why ``value`` is not plain text a person typed (control or direction-override characters)."""
    allowed = {"\n", "\r", "\t"} if multiline else set()
    for character in value:
        if character in allowed:
            continue
        category = unicodedata.category(character)
        # Cc: control characters (NUL, escape, ...); Cf: invisible formatting such as the
        # right-to-left override that makes text read differently from what it stores (the
        # zero-width joiners some scripts and emoji need are kept). Cs: unpaired surrogates,
        # which the database cannot store.
        if category in ("Cc", "Cs") or (category == "Cf" and character not in _JOINERS):
            return "can only contain letters, numbers, spaces and punctuation"
    return None


def mailbox_request_missing_answers(request: MailboxRequest) -> list[tuple[str, str]]:
    """``(field, message)`` for every answer a submission still needs, in the order they are asked."""
    missing = []
    for field in ("kind", "display_name", "local_part", "team", "owner", "backup_owner"):
        value = getattr(request, f"{field}_id") if field in _RELATIONS else getattr(request, field)
        if field == "local_part":
            value = request.address
        if not value:
            missing.append((field, MISSING_MESSAGES[field]))
    if request.is_queue:
        for field in ("queue_visibility", "tracking_rule"):
            if getattr(request, field) is None:
                missing.append((field, MISSING_MESSAGES[field]))
        if request.tracking_rule == TrackingRule.ALL and not request.tracking_reason.strip():
            missing.append(("tracking_reason", MISSING_MESSAGES["tracking_reason"]))
    for field in ("expected_daily_volume", "typical_attachment_kb", "retention_months"):
        if getattr(request, field) is None:
            missing.append((field, MISSING_MESSAGES[field]))
    for field in ("data_classification", "justification"):
        if not getattr(request, field):
            missing.append((field, MISSING_MESSAGES[field]))
    return missing


# --- the transitions ---------------------------------------------------------------------------


def mailbox_request_create_draft(*, actor: User) -> MailboxRequest:
    """A new draft owned by ``actor`` with its reference (``MBX-000123``); audited."""
    _require_requester_role(actor)
    now = timezone.now()
    with transaction.atomic():
        # The reference comes from the primary key, which exists only after the insert.
        request = MailboxRequest.objects.create(
            reference=f"NEW-{uuid.uuid4().hex[:16]}",
            requester=actor,
            status=RequestStatus.DRAFT,
            created_at=now,
            updated_at=now,
        )
        request.reference = f"MBX-{request.pk:06d}"
        request.save(update_fields=["reference"])
        audit_record(
            actor=actor,
            action="mailbox_request.created",
            object_type=AUDIT_OBJECT_TYPE,
            object_id=request.pk,
            after={"reference": request.reference, "status": request.status},
        )
    return request


def mailbox_request_update(
    *, actor: User, request_id: int, changes: dict[str, Any], members: list[dict[str, Any]] | None = None
) -> MailboxRequest:
    """Change a draft's or returned request's answers (and optionally its members); audited with before/after."""
    unknown = set(changes) - set(ANSWER_FIELDS)
    if unknown:
        raise ValueError(f"not answers of a mailbox request: {', '.join(sorted(unknown))}")
    _require_requester_role(actor)
    current = MailboxRequest.objects.get(pk=request_id)
    _require_requester(current, actor)
    _require_editable(current)
    changes = _normalised(changes)
    _check_answers(actor=actor, changes=changes)
    new_members = _normalised_members(members) if members is not None else None
    local_part = changes.get("local_part", current.local_part)
    domain = changes.get("domain", current.domain)
    address_changed = (local_part, domain) != (current.local_part, current.domain)
    if address_changed and local_part and domain:
        _check_address_in_tenant(f"{local_part}@{domain}")

    with transaction.atomic():
        request = _locked(request_id)
        _require_requester(request, actor)
        _require_editable(request)
        if address_changed and local_part and domain:
            _lock_address(f"{local_part}@{domain}")
            _check_address_in_requests(local_part=local_part, domain=domain, exclude_id=request.pk)

        changes = _consistent(request, changes)
        before: dict[str, Any] = {}
        after: dict[str, Any] = {}
        for field, value in changes.items():
            old = _audit_value(request, field)
            setattr(request, field, value)
            new = _audit_value(request, field)
            if old != new:
                before[field], after[field] = old, new
        if new_members is not None:
            old_members = [_member_answer(member).as_dict() for member in request.members.all()]
            if old_members != [member.as_dict() for member in new_members]:
                before["members"] = old_members
                after["members"] = [member.as_dict() for member in new_members]
                request.members.all().delete()
                RequestMember.objects.bulk_create(
                    RequestMember(request=request, **member.as_dict()) for member in new_members
                )
        if not after:
            return request

        request.updated_at = timezone.now()
        fields = [field for field in after if field != "members"]
        request.save(update_fields=[*fields, "updated_at"])
        audit_record(
            actor=actor,
            action="mailbox_request.updated",
            object_type=AUDIT_OBJECT_TYPE,
            object_id=request.pk,
            before=before,
            after=after,
        )
    return request


def mailbox_request_submit(*, actor: User, request_id: int) -> MailboxRequest:
    """Submit (or resubmit after a return): checks every answer and the address, then starts the approval route."""
    _require_requester_role(actor)
    current = MailboxRequest.objects.get(pk=request_id)
    _require_requester(current, actor)
    _require_submittable(current)
    if current.address:
        _check_address_in_tenant(current.address)

    with transaction.atomic():
        request = _locked(request_id)
        _require_requester(request, actor)
        _require_submittable(request)
        if request.address != current.address:
            raise PortalError(
                "The address changed while the request was being submitted. Check it and submit again.",
                field="local_part",
            )
        problems = mailbox_request_missing_answers(request)
        if problems:
            raise RequestIncompleteError(problems)
        _check_submitted_answers(request, actor=actor)
        _lock_address(request.address)
        _check_address_in_requests(local_part=request.local_part, domain=request.domain, exclude_id=request.pk)

        previous = request.status
        now = timezone.now()
        request.status = RequestStatus.SUBMITTED
        request.submitted_at = now
        request.updated_at = now
        request.save(update_fields=["status", "submitted_at", "updated_at"])
        approvals.approval_route_start(request=request, actor=actor)
        resubmitted = previous == RequestStatus.RETURNED
        audit_record(
            actor=actor,
            action="mailbox_request.resubmitted" if resubmitted else "mailbox_request.submitted",
            object_type=AUDIT_OBJECT_TYPE,
            object_id=request.pk,
            before={"status": previous},
            after={"status": request.status, "facts_hash": request.facts_hash()},
        )
        notify(
            request=request,
            event=NotificationEvent.SUBMITTED,
            recipients=[actor],
            context={"resubmitted": resubmitted},
        )
    return request


def mailbox_request_withdraw(*, actor: User, request_id: int, reason: str = "") -> MailboxRequest:
    """The requester withdraws before provisioning starts; waiting stages are cancelled."""
    reason = (reason or "").strip()
    if len(reason) > WITHDRAW_REASON_MAX:
        raise PortalError(f"The reason must be {WITHDRAW_REASON_MAX:,} characters or fewer", field="reason")
    if text_problem(reason, multiline=True):
        raise PortalError("The reason can only contain letters, numbers, spaces and punctuation", field="reason")

    with transaction.atomic():
        request = _locked(request_id)
        if request.requester_id != actor.pk:
            raise PermissionDeniedError("Only the person who made a request can withdraw it.")
        if request.status not in WITHDRAWABLE:
            raise InvalidStateError(
                f"This request cannot be withdrawn because it is {request.get_status_display().lower()}."
            )
        previous = request.status
        request.status = RequestStatus.WITHDRAWN
        request.updated_at = timezone.now()
        request.save(update_fields=["status", "updated_at"])
        if previous != RequestStatus.DRAFT:
            # A draft never started a route, so it has no stages to cancel. The route tells the
            # approvers it was waiting for; the requester is told here.
            approvals.approval_route_cancel(request=request, actor=actor)
        audit_record(
            actor=actor,
            action="mailbox_request.withdrawn",
            object_type=AUDIT_OBJECT_TYPE,
            object_id=request.pk,
            before={"status": previous},
            after={"status": request.status},
            reason=reason,
        )
        if previous != RequestStatus.DRAFT:
            notify(
                request=request,
                event=NotificationEvent.WITHDRAWN,
                recipients=[actor],
                context={"reason": reason},
            )
    return request


# --- helpers -----------------------------------------------------------------------------------


def _locked(request_id: int) -> MailboxRequest:
    return MailboxRequest.objects.select_for_update().get(pk=request_id)


def _require_requester_role(actor: User) -> None:
    if not actor.is_active or not actor.has_perm(perm("submit_mailbox_requests")):
        raise PermissionDeniedError("You do not have permission to request mailboxes.")


def _require_requester(request: MailboxRequest, actor: User) -> None:
    if request.requester_id != actor.pk:
        raise PermissionDeniedError("Only the person who made a request can change or submit it.")


def _require_editable(request: MailboxRequest) -> None:
    if request.status not in EDITABLE:
        raise InvalidStateError(f"This request cannot be changed because it is {request.get_status_display().lower()}.")


def _require_submittable(request: MailboxRequest) -> None:
    if request.status not in (RequestStatus.DRAFT, RequestStatus.RETURNED):
        raise InvalidStateError(
            f"This request cannot be submitted because it is {request.get_status_display().lower()}."
        )


def _normalised(changes: dict[str, Any]) -> dict[str, Any]:
    result = {}
    for field, value in changes.items():
        if isinstance(value, str):
            value = value.strip()
            if field in ("local_part", "domain"):
                value = value.lower()
        result[field] = value
    return result


def _check_answers(*, actor: User, changes: dict[str, Any]) -> None:
    """Refuse answers no page should have let through, and the rules that need the database."""
    for field, limit in _TEXT_LIMITS.items():
        value = changes.get(field)
        if value is None:
            continue
        if not isinstance(value, str):
            raise PortalError("Enter text", field=field)
        if len(value) > limit:
            raise PortalError(f"The answer must be {limit} characters or fewer", field=field)
        problem = text_problem(value, multiline=field in _MULTILINE)
        if problem:
            raise PortalError(f"The answer {problem}", field=field)
    for field, (low, high) in _NUMBER_LIMITS.items():
        value = changes.get(field)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high):
            raise PortalError(f"Enter a whole number between {low:,} and {high:,}", field=field)
    for field, allowed in _CHOICES.items():
        value = changes.get(field)
        if value not in (None, "") and value not in allowed:
            raise PortalError("Select one of the options", field=field)
    if changes.get("local_part"):
        problem = local_part_problem(changes["local_part"])
        if problem:
            raise PortalError(problem, field="local_part")
    if changes.get("domain") and changes["domain"] not in allowed_domains():
        raise PortalError("Select a domain from the list", field="domain")
    if changes.get("team") is not None and not teams_for(actor).filter(pk=changes["team"].pk).exists():
        raise PortalError("Select one of your teams", field="team")
    for field in ("owner", "backup_owner"):
        person = changes.get(field)
        if person is not None and not person.is_active:
            raise PortalError(f"{person.email} cannot be an owner because their account is not active", field=field)
    owner, backup = changes.get("owner"), changes.get("backup_owner")
    if owner is not None and backup is not None and owner.pk == backup.pk:
        raise PortalError(
            "The backup owner must be a different person from the accountable owner", field="backup_owner"
        )


def _check_submitted_answers(request: MailboxRequest, *, actor: User) -> None:
    """The rules that may have stopped holding since the answers were given."""
    if request.domain not in allowed_domains():
        raise PortalError("Select a domain from the list: this one is no longer allowed", field="domain")
    if not teams_for(actor).filter(pk=request.team_id).exists():
        raise PortalError("Select one of your teams", field="team")
    owners = {user.pk: user for user in User.objects.filter(pk__in=[request.owner_id, request.backup_owner_id])}
    for field in ("owner", "backup_owner"):
        person = owners[getattr(request, f"{field}_id")]
        if not person.is_active:
            raise PortalError(f"{person.email} cannot be an owner because their account is not active", field=field)
    if request.owner_id == request.backup_owner_id:
        raise PortalError(
            "The backup owner must be a different person from the accountable owner", field="backup_owner"
        )


def _consistent(request: MailboxRequest, changes: dict[str, Any]) -> dict[str, Any]:
    """Answers that no longer apply are cleared, so approvers never decide on stale ones."""
    changes = dict(changes)
    kind = changes.get("kind", request.kind)
    if kind == MailboxKind.SHARED:
        changes.update({"queue_visibility": None, "tracking_rule": None, "tracking_reason": ""})
    elif changes.get("tracking_rule", request.tracking_rule) != TrackingRule.ALL:
        changes["tracking_reason"] = ""
    return changes


def _audit_value(request: MailboxRequest, field: str) -> Any:
    return getattr(request, f"{field}_id") if field in _RELATIONS else getattr(request, field)


def _member_answer(member: RequestMember) -> MemberAnswer:
    return MemberAnswer(
        email=member.email,
        full_access=member.full_access,
        automapping=member.automapping,
        send_as=member.send_as,
        send_on_behalf=member.send_on_behalf,
    )


def _normalised_members(members: Iterable[dict[str, Any]]) -> list[MemberAnswer]:
    result: dict[str, MemberAnswer] = {}
    for member in members:
        email = str(member.get("email", "")).strip().lower()
        if len(email) > EMAIL_MAX:
            raise PortalError(f"The email address must be {EMAIL_MAX} characters or fewer", field="email")
        try:
            validate_email(email)
        except ValidationError:
            raise PortalError(
                "Enter an email address in the correct format, like name@example.gov.uk", field="email"
            ) from None
        if email in result:
            raise PortalError(f"{email} is already a member", field="email")
        granted = {name: bool(member.get(name, False)) for name in _MEMBER_PERMISSIONS}
        # Auto-mapping adds the mailbox to Outlook through full access; without it there is nothing to map.
        granted["automapping"] = granted["automapping"] and granted["full_access"]
        if not (granted["full_access"] or granted["send_as"] or granted["send_on_behalf"]):
            raise PortalError("Select at least one permission", field="permissions")
        result[email] = MemberAnswer(email=email, **granted)
    if len(result) > MEMBERS_MAX:
        raise PortalError(f"A mailbox can have at most {MEMBERS_MAX} members", field="email")
    return sorted(result.values(), key=lambda member: member.email)


def _check_address_in_requests(*, local_part: str, domain: str, exclude_id: int) -> None:
    other = (
        MailboxRequest.objects.filter(local_part=local_part, domain=domain, status__in=OPEN)
        .exclude(pk=exclude_id)
        .only("reference")
        .first()
    )
    if other is not None:
        raise PortalError(f"That address is already used by request {other.reference}", field="local_part")


def _check_address_in_tenant(address: str) -> None:
    """Refuse an address Microsoft 365 already uses; nothing to ask when no tenant is configured."""
    config = settings.M365
    if not config.enabled:
        return
    try:
        user = GraphClient(config).get_user(address)
        mailbox = None if user else ExchangeAdminClient(config).get_mailbox(address)
    except M365Error as error:
        logger.warning("could not check whether %s is free in Microsoft 365: %s", address, error)
        raise PortalError(TENANT_UNAVAILABLE, field="local_part") from error
    if user is not None:
        holder = user.display_name or user.user_principal_name or user.mail or "someone else"
    elif mailbox is not None:
        holder = str(mailbox.get("DisplayName") or mailbox.get("PrimarySmtpAddress") or "another mailbox")
    else:
        return
    raise PortalError(f"That address is already used by {holder} in Microsoft 365", field="local_part")


_ADDRESS_LOCK_NAMESPACE = 0x4D4258  # "MBX"


def _lock_address(address: str) -> None:
    """Serialise claims on one address until the transaction ends, so two requests cannot both pass the check.

    PostgreSQL only; the embedded SQLite database already lets one writer in at a time.
    """
    if connection.vendor != "postgresql":
        return
    key = int.from_bytes(hashlib.sha256(address.lower().encode("utf-8")).digest()[:4], "big", signed=True)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [_ADDRESS_LOCK_NAMESPACE, key])
