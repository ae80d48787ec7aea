"""Provisioning an approved request in Exchange Online and Dataverse as checkpointed steps.

One :class:`ProvisioningRun` per request, with one :class:`ProvisioningStep` per thing to make
true in Microsoft 365. Every step reads the remote state first and records what it found, so a
retried, duplicated or resumed job changes nothing twice; the step's database row is the
checkpoint, and the remote check covers the gap between a change and its checkpoint (a lost
response, a killed worker).

Work is claimed atomically with a lease (``lease_owner``, ``lease_expires_at``). A live worker
renews its lease from a heartbeat thread and re-checks it before every write to Microsoft 365;
a worker that dies stops renewing, and the watchdog job queues the run again once the lease has
expired. Waiting (Test & Enable, a late mailbox record, throttling) never holds a worker: the
run becomes WAITING and a job is scheduled for later.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import django_rq
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import IntegrityError, transaction
from django.db.models import DateTimeField, F, Q, Value
from django.db.models.functions import Coalesce
from django.utils import timezone
from rq.timeouts import JobTimeoutException

from onboarding.models import (
    MailboxKind,
    MailboxRequest,
    NotificationEvent,
    ProvisioningRun,
    ProvisioningStep,
    RequestStatus,
    RunStatus,
    StepStatus,
)
from portal import correlation
from portal.accounts.models import User
from portal.accounts.roles import ROLE_GROUP_NAMES, Role
from portal.audit.models import Outcome
from portal.audit.services import audit_record
from portal.exceptions import InvalidStateError, PortalError
from portal.leases import LeaseHeartbeat, new_lease_owner
from portal.m365.dataverse import DataverseClient, DataverseClientPool, bind, odata_string, row_id
from portal.m365.errors import (
    AccessDeniedError,
    ConcurrencyError,
    M365Error,
    NotFoundError,
    TransientError,
    describe_error,
)
from portal.m365.exchange import ExchangeAdminClient
from portal.m365.rows import (
    ActDeliveryMethod,
    EmailApproval,
    EmailServerProfile,
    IncomingDeliveryMethod,
    Mailbox,
    OutgoingDeliveryMethod,
    Queue,
    TestStatus,
    TraceLog,
)
from portal.policy.models import PolicySettings
from portal.policy.services import policy_get
from portal.queue import enqueue_on_commit

from .notifications import notify

logger = logging.getLogger(__name__)

# A worker holds a run for this long and renews it every HEARTBEAT_SECONDS while it works, so a
# dead worker's run is resumed within about LEASE_SECONDS + WATCHDOG_MARGIN_SECONDS.
LEASE_SECONDS = 20
HEARTBEAT_SECONDS = 5
WATCHDOG_MARGIN_SECONDS = 5
# How early a scheduled job may arrive (clocks of different hosts) and still take a waiting run.
CLAIM_TOLERANCE_SECONDS = 1
# One job works through as many steps as it can; RQ stops it after this, and the run resumes.
RUN_JOB_TIMEOUT = 900
WATCHDOG_JOB_TIMEOUT = 60
# Temporary errors (throttling, 5xx, timeouts, dropped connections) are retried with backoff,
# honouring Retry-After, until a step has been failing this long.
TRANSIENT_BACKOFF_BASE_SECONDS = 2
TRANSIENT_BACKOFF_CAP_SECONDS = 300
TRANSIENT_GIVE_UP = dt.timedelta(hours=2)
# Dataverse creates a new queue's mailbox record itself, sometimes late.
MAILBOX_RECORD_BACKOFF_CAP_SECONDS = 60
MAILBOX_RECORD_GIVE_UP = dt.timedelta(minutes=30)
# Dataverse's "mailbox changed since read" (412) is retried almost at once with a fresh read.
CONCURRENCY_RETRY_SECONDS = 1

DONE_STATUSES = (StepStatus.SUCCEEDED, StepStatus.SKIPPED, StepStatus.DONE_BY_HAND)
IN_FLIGHT = (RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.WAITING)

SHARED_MAILBOX = "SharedMailbox"
SERVER_SIDE_SYNC = IncomingDeliveryMethod.SERVER_SIDE_SYNC_OR_EMAIL_ROUTER.value  # 2, also outgoing
ACT_NONE = ActDeliveryMethod.NONE.value  # 2: appointments, contacts and tasks off


# --- errors and outcomes ------------------------------------------------------------------------


class StepFailed(Exception):
    """A step cannot finish without a person: the message says what happened and what to do."""

    def __init__(self, message: str, *, code: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class LeaseLost(Exception):
    """Another worker holds the run now (this one was too slow); stop without touching anything."""


@dataclass(frozen=True)
class Done:
    result: dict[str, Any]


@dataclass(frozen=True)
class Wait:
    seconds: float
    reason: str


# --- the steps ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepSpec:
    name: str
    title: str
    description: str
    run: Callable[[StepContext], Done | Wait]
    queue_only: bool = False


def step_specs(kind: str) -> list[StepSpec]:
    """The steps a request of ``kind`` needs, in order (shared mailboxes stop after permissions)."""
    return [spec for spec in STEPS if kind == MailboxKind.QUEUE or not spec.queue_only]


def step_title(name: str) -> str:
    spec = _SPECS.get(name)
    return spec.title if spec else name.replace("_", " ").capitalize()


def step_description(name: str) -> str:
    spec = _SPECS.get(name)
    return spec.description if spec else ""


# Retrying the wait for a finished test cannot change its outcome: it retries from scheduling.
RETRY_FROM = {"await_test": "schedule_test"}


@dataclass
class StepContext:
    """What one attempt of one step works with; the step fills ``found`` before it acts."""

    run_id: int
    step: ProvisioningStep
    request: MailboxRequest
    owner: str
    policy: PolicySettings
    found: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, Any] = field(default_factory=dict)
    remembered: dict[str, str] = field(default_factory=dict)
    _dataverse: DataverseClient | None = None
    _exchange: ExchangeAdminClient | None = None

    @property
    def dataverse(self) -> DataverseClient:
        if self._dataverse is None:
            self._dataverse = DataverseClientPool(_m365_config()).client()
        return self._dataverse

    @property
    def exchange(self) -> ExchangeAdminClient:
        if self._exchange is None:
            self._exchange = ExchangeAdminClient(_m365_config())
        return self._exchange

    @property
    def address(self) -> str:
        return self.request.address

    def before_write(self) -> None:
        """Renew the lease, or stop if another worker has taken the run over: never write without it."""
        renewed = ProvisioningRun.objects.filter(
            pk=self.run_id, status=RunStatus.RUNNING, lease_owner=self.owner
        ).update(lease_expires_at=timezone.now() + dt.timedelta(seconds=LEASE_SECONDS))
        if not renewed:
            raise LeaseLost(f"run {self.run_id} is no longer held by {self.owner}")

    def changed(self, action: str, *, before: Any, after: Any) -> None:
        """Record a change just made in Microsoft 365, at once (it cannot be rolled back)."""
        with transaction.atomic():
            audit_record(
                actor=None,
                action=action,
                object_type="mailbox_request",
                object_id=self.request.pk,
                before=before,
                after={"reference": self.request.reference, "step": self.step.name, **(after or {})},
            )

    def remember(self, **ids: str) -> None:
        """Ids found or made, saved on the request when the step succeeds."""
        self.remembered.update(ids)

    def queue_id(self) -> str:
        if self.request.dataverse_queue_id:
            return self.request.dataverse_queue_id
        queues = _queues_with_address(self.dataverse, self.address)
        if len(queues) != 1:
            raise StepFailed(
                f"The portal does not know which Dynamics 365 queue belongs to {self.address} "
                f"({len(queues)} queues use that address). Retry from the step that creates the queue.",
                code="queue_unknown",
            )
        self.remember(dataverse_queue_id=queues[0].id)
        return queues[0].id

    def mailbox_id(self) -> str:
        if self.request.dataverse_mailbox_id:
            return self.request.dataverse_mailbox_id
        mailbox = _queue_mailbox(self.dataverse, self.queue_id())
        if mailbox is None:
            raise StepFailed(
                f"Dynamics 365 has no mailbox record for the queue of {self.address}. "
                "Retry from the step that finds the queue's mailbox record.",
                code="mailbox_unknown",
            )
        self.remember(dataverse_mailbox_id=mailbox.id)
        return mailbox.id


def _m365_config():
    config = settings.M365
    if not config.enabled:
        raise StepFailed(
            "The Microsoft 365 integration is switched off (M365_TENANT_ID is not set), so nothing can be "
            "created. Configure it, then retry.",
            code="m365_disabled",
        )
    return config


def _exchange_summary(mailbox: dict[str, Any]) -> dict[str, Any]:
    keys = ("RecipientTypeDetails", "PrimarySmtpAddress", "DisplayName", "Alias", "Guid", "ExternalDirectoryObjectId")
    return {"exists": True, **{key: mailbox.get(key) for key in keys if key in mailbox}}


def _exchange_id(mailbox: dict[str, Any]) -> str:
    return str(mailbox.get("Guid") or mailbox.get("ExternalDirectoryObjectId") or mailbox.get("ExchangeGuid") or "")


def _other_request_owning_mailbox(request: MailboxRequest, *, exchange_id: str) -> MailboxRequest | None:
    """Another portal request that already owns this address or this Exchange mailbox."""
    same_address = Q(
        local_part__iexact=request.local_part,
        domain__iexact=request.domain,
        status__in=[RequestStatus.PROVISIONING, RequestStatus.NEEDS_ATTENTION, RequestStatus.ACTIVE],
    )
    same_mailbox = Q(exchange_mailbox_id__iexact=exchange_id) if exchange_id else Q(pk__in=[])
    return MailboxRequest.objects.exclude(pk=request.pk).filter(same_address | same_mailbox).order_by("pk").first()


def _other_request_owning_queue(request: MailboxRequest, *, queue_id: str) -> MailboxRequest | None:
    return MailboxRequest.objects.exclude(pk=request.pk).filter(dataverse_queue_id__iexact=queue_id).first()


_RECIPIENT_KINDS = {
    "UserMailbox": "person's mailbox",
    "RoomMailbox": "room mailbox",
    "EquipmentMailbox": "equipment mailbox",
    "LinkedMailbox": "linked mailbox",
    "SchedulingMailbox": "scheduling mailbox",
}


def _ensure_exchange_mailbox(ctx: StepContext) -> Done:
    request = ctx.request
    address = ctx.address
    mailbox = ctx.exchange.get_mailbox(address)
    ctx.found = _exchange_summary(mailbox) if mailbox else {"exists": False}
    if mailbox is not None:
        kind = str(mailbox.get("RecipientTypeDetails") or "")
        if kind != SHARED_MAILBOX:
            raise StepFailed(
                f"{address} already belongs to a {_RECIPIENT_KINDS.get(kind, kind or 'recipient')} in Exchange "
                "Online, and only a shared mailbox can be adopted. Free the address or change the request's "
                "address, then retry.",
                code="address_in_use",
            )
        exchange_id = _exchange_id(mailbox)
        other = _other_request_owning_mailbox(request, exchange_id=exchange_id)
        if other is not None:
            raise StepFailed(
                f"The shared mailbox {address} already belongs to request {other.reference}, so this request "
                "cannot adopt it.",
                code="owned_by_another_request",
            )
        ctx.remember(exchange_mailbox_id=exchange_id)
        return Done({"action": "adopted", "exchange_mailbox_id": exchange_id, "address": address})
    ctx.before_write()
    created = ctx.exchange.new_shared_mailbox(
        name=request.local_part,
        display_name=request.display_name,
        primary_smtp_address=address,
        alias=request.local_part,
    )
    exchange_id = _exchange_id(created)
    ctx.changed("m365.exchange.mailbox_created", before=None, after=_exchange_summary(created))
    ctx.remember(exchange_mailbox_id=exchange_id)
    return Done({"action": "created", "exchange_mailbox_id": exchange_id, "address": address})


def _rights(row: dict[str, Any]) -> set[str]:
    rights = row.get("AccessRights") or []
    if isinstance(rights, str):
        rights = [part.strip() for part in rights.split(",")]
    return {str(right).lower() for right in rights}


def _grant_permissions(ctx: StepContext) -> Done:
    address = ctx.address
    members = list(ctx.request.members.all())
    mailbox = ctx.exchange.get_mailbox(address)
    if mailbox is None:
        raise StepFailed(
            f"The shared mailbox {address} is not in Exchange Online any more. Retry from the first step.",
            code="mailbox_missing",
        )
    full_access = {
        str(row.get("User", "")).lower()
        for row in ctx.exchange.invoke("Get-MailboxPermission", {"Identity": address})
        if "fullaccess" in _rights(row) and not row.get("Deny")
    }
    send_as = {
        str(row.get("Trustee", "")).lower()
        for row in ctx.exchange.invoke("Get-RecipientPermission", {"Identity": address})
        if "sendas" in _rights(row) and str(row.get("AccessControlType", "Allow")).lower() == "allow"
    }
    on_behalf = [str(user) for user in (mailbox.get("GrantSendOnBehalfTo") or [])]
    ctx.found = {
        "full_access": sorted(full_access),
        "send_as": sorted(send_as),
        "send_on_behalf": sorted(user.lower() for user in on_behalf),
    }
    granted: dict[str, list[str]] = {"full_access": [], "send_as": [], "send_on_behalf": []}
    try:
        for member in members:
            email = member.email.lower()
            if member.full_access and email not in full_access:
                ctx.before_write()
                ctx.exchange.add_mailbox_permission(
                    identity=address, user=member.email, auto_mapping=member.automapping
                )
                ctx.changed(
                    "m365.exchange.full_access_granted",
                    before=None,
                    after={"mailbox": address, "user": member.email, "automapping": member.automapping},
                )
                granted["full_access"].append(member.email)
            if member.send_as and email not in send_as:
                ctx.before_write()
                ctx.exchange.add_recipient_permission(identity=address, trustee=member.email)
                ctx.changed(
                    "m365.exchange.send_as_granted", before=None, after={"mailbox": address, "user": member.email}
                )
                granted["send_as"].append(member.email)
        missing = [
            m.email for m in members if m.send_on_behalf and m.email.lower() not in {u.lower() for u in on_behalf}
        ]
        if missing:
            ctx.before_write()
            ctx.exchange.set_send_on_behalf(identity=address, users=[*on_behalf, *missing])
            ctx.changed(
                "m365.exchange.send_on_behalf_set",
                before={"mailbox": address, "send_on_behalf": on_behalf},
                after={"mailbox": address, "send_on_behalf": [*on_behalf, *missing]},
            )
            granted["send_on_behalf"] = missing
    except NotFoundError as error:
        raise StepFailed(
            f"Exchange Online could not find a member or the mailbox while granting access: {error.message} "
            "Check the member's address, give access by hand in the Exchange admin centre and mark this step "
            "as done, or retry once the account exists.",
            code=error.code or "not_found",
        ) from error
    wanted = {
        "full_access": sorted(m.email for m in members if m.full_access),
        "send_as": sorted(m.email for m in members if m.send_as),
        "send_on_behalf": sorted(m.email for m in members if m.send_on_behalf),
    }
    return Done({"granted": granted, "wanted": wanted})


def _queues_with_address(client: DataverseClient, address: str) -> list[Queue]:
    return list(client.iter_typed(Queue, filter=f"emailaddress eq {odata_string(address)}"))


def _queue_summary(queue: Queue) -> dict[str, Any]:
    return {
        "queueid": queue.id,
        "name": queue.name,
        "emailaddress": queue.email_address,
        "queueviewtype": None if queue.view_type is None else int(queue.view_type),
        "incomingemailfilteringmethod": (
            None if queue.incoming_filtering_method is None else int(queue.incoming_filtering_method)
        ),
        "emailrouteraccessapproval": None if queue.email_approval is None else int(queue.email_approval),
        "defaultmailbox": queue.default_mailbox_id,
    }


def _queue_settings(ctx: StepContext) -> dict[str, Any]:
    request = ctx.request
    rule = request.tracking_rule if request.tracking_rule is not None else ctx.policy.default_tracking_rule_queue
    return {
        "queueviewtype": int(request.queue_visibility or 0),
        "incomingemailfilteringmethod": int(rule),
    }


def _ensure_queue(ctx: StepContext) -> Done:
    request = ctx.request
    address = ctx.address
    wanted = _queue_settings(ctx)
    queues = _queues_with_address(ctx.dataverse, address)
    ctx.found = {"queues": [_queue_summary(queue) for queue in queues]}
    if len(queues) > 1:
        raise StepFailed(
            f"{len(queues)} Dynamics 365 queues already use {address}. Keep only the right one (or give the others "
            "another address), then retry.",
            code="several_queues",
        )
    if queues:
        queue = queues[0]
        other = _other_request_owning_queue(request, queue_id=queue.id)
        if other is not None:
            raise StepFailed(
                f"The Dynamics 365 queue for {address} already belongs to request {other.reference}.",
                code="owned_by_another_request",
            )
        current = _queue_summary(queue)
        changes = {column: value for column, value in wanted.items() if current.get(column) != value}
        if changes:
            ctx.before_write()
            ctx.dataverse.update("queues", queue.id, changes, etag=queue.etag)
            ctx.changed(
                "m365.dataverse.queue_updated",
                before={"queueid": queue.id, **{column: current.get(column) for column in changes}},
                after={"queueid": queue.id, **changes},
            )
        ctx.remember(dataverse_queue_id=queue.id)
        return Done({"action": "adopted", "queueid": queue.id, "changed": sorted(changes)})
    payload = {
        "name": request.display_name,
        "emailaddress": address,
        "description": f"Queue mailbox for {request.display_name}, set up for request {request.reference}.",
        "incomingemaildeliverymethod": SERVER_SIDE_SYNC,
        "outgoingemaildeliverymethod": SERVER_SIDE_SYNC,
        **wanted,
    }
    ctx.before_write()
    queue_id = ctx.dataverse.create("queues", payload)
    ctx.changed("m365.dataverse.queue_created", before=None, after={"queueid": queue_id, **payload})
    ctx.remember(dataverse_queue_id=queue_id)
    return Done({"action": "created", "queueid": queue_id, **wanted})


def _queue_mailbox(client: DataverseClient, queue_id: str) -> Mailbox | None:
    mailboxes = list(client.iter_typed(Mailbox, filter=f"_regardingobjectid_value eq {row_id(queue_id)}"))
    if mailboxes:
        return mailboxes[0]
    queue = client.get_typed(Queue, queue_id)
    if queue.default_mailbox_id:
        try:
            return client.get_typed(Mailbox, queue.default_mailbox_id)
        except NotFoundError:
            return None
    return None


def _mailbox_summary(mailbox: Mailbox) -> dict[str, Any]:
    def value(choice: Any) -> Any:
        return None if choice is None else int(choice)

    return {
        "mailboxid": mailbox.id,
        "emailaddress": mailbox.email_address,
        "emailserverprofile": mailbox.email_server_profile_id,
        "incomingemaildeliverymethod": value(mailbox.incoming_delivery_method),
        "outgoingemaildeliverymethod": value(mailbox.outgoing_delivery_method),
        "actdeliverymethod": value(mailbox.act_delivery_method),
        "emailrouteraccessapproval": value(mailbox.email_approval),
        "incomingemailstatus": value(mailbox.incoming_status),
        "outgoingemailstatus": value(mailbox.outgoing_status),
        "testemailconfigurationscheduled": mailbox.test_scheduled,
    }


def _find_queue_mailbox(ctx: StepContext) -> Done | Wait:
    queue_id = ctx.queue_id()
    ctx.inputs["queueid"] = queue_id
    mailbox = _queue_mailbox(ctx.dataverse, queue_id)
    ctx.found = {"mailbox": _mailbox_summary(mailbox) if mailbox else None}
    if mailbox is None:
        waited = timezone.now() - (ctx.step.started_at or timezone.now())
        if waited > MAILBOX_RECORD_GIVE_UP:
            raise StepFailed(
                f"Dynamics 365 has not created the mailbox record for the queue of {ctx.address} after "
                f"{int(MAILBOX_RECORD_GIVE_UP.total_seconds() // 60)} minutes. Check the queue in Dynamics 365, "
                "then retry.",
                code="mailbox_record_missing",
            )
        pause = min(MAILBOX_RECORD_BACKOFF_CAP_SECONDS, 5 * 2 ** min(max(ctx.step.attempts - 1, 0), 6))
        return Wait(pause, "Dynamics 365 has not created the queue's mailbox record yet")
    ctx.remember(dataverse_mailbox_id=mailbox.id)
    return Done({"mailboxid": mailbox.id, "queueid": queue_id})


def _exchange_online_profile(ctx: StepContext) -> EmailServerProfile:
    policy = ctx.policy
    if policy.exchange_online_profile_id:
        try:
            return ctx.dataverse.get_typed(EmailServerProfile, policy.exchange_online_profile_id)
        except NotFoundError as error:
            raise StepFailed(
                f"The Exchange Online server profile set in the portal's policy ({policy.exchange_online_profile_id}) "
                "does not exist in Dynamics 365. Correct the policy, then retry.",
                code="profile_missing",
            ) from error
    name = policy.exchange_online_profile_name
    profiles = list(
        ctx.dataverse.iter_typed(EmailServerProfile, filter=f"name eq {odata_string(name)} and statecode eq 0")
    )
    if len(profiles) != 1:
        found = "No active email server profile is" if not profiles else f"{len(profiles)} active profiles are"
        raise StepFailed(
            f"{found} named “{name}” in Dynamics 365. Set the Exchange Online profile's id or exact name in the "
            "portal's policy, then retry.",
            code="profile_missing" if not profiles else "profile_ambiguous",
        )
    return profiles[0]


def _bind_profile(ctx: StepContext) -> Done:
    mailbox_id = ctx.mailbox_id()
    profile = _exchange_online_profile(ctx)
    ctx.inputs.update({"mailboxid": mailbox_id, "emailserverprofile": profile.id, "profile_name": profile.name})
    mailbox = ctx.dataverse.get_typed(Mailbox, mailbox_id)
    current = _mailbox_summary(mailbox)
    ctx.found = current
    wanted = {
        "incomingemaildeliverymethod": SERVER_SIDE_SYNC,
        "outgoingemaildeliverymethod": OutgoingDeliveryMethod.SERVER_SIDE_SYNC_OR_EMAIL_ROUTER.value,
        "actdeliverymethod": ACT_NONE,
    }
    changes: dict[str, Any] = {column: value for column, value in wanted.items() if current[column] != value}
    if current["emailserverprofile"] != profile.id:
        changes["emailserverprofile@odata.bind"] = bind("emailserverprofiles", profile.id)
    if not changes:
        return Done({"changed": False, "emailserverprofile": profile.id, **wanted})
    ctx.before_write()
    ctx.dataverse.update("mailboxes", mailbox_id, changes, etag=mailbox.etag)
    before = {column: current[column] for column in wanted if column in changes}
    if "emailserverprofile@odata.bind" in changes:
        before["emailserverprofile"] = current["emailserverprofile"]
    after = {column: value for column, value in changes.items() if column in wanted}
    after["emailserverprofile"] = profile.id
    ctx.changed("m365.dataverse.mailbox_updated", before={"mailboxid": mailbox_id, **before}, after=after)
    return Done({"changed": True, "emailserverprofile": profile.id, **wanted})


APPROVAL_REFUSED = (
    "Dynamics 365 refused to approve the email address {address}: the portal's application user may not "
    "approve email addresses ({detail}). With Exchange Online, an Exchange administrator or Global "
    "administrator must approve it: in Dynamics 365, open Settings, Email Configuration, Mailboxes, select "
    "“{name}” and choose Approve Email. Then mark this step as done by hand, or retry it once the "
    "portal has been given the “Approve Email Addresses for Users or Queues” privilege."
)


def _approve_address(ctx: StepContext) -> Done:
    queue_id = ctx.queue_id()
    mailbox_id = ctx.mailbox_id()
    ctx.inputs.update({"queueid": queue_id, "mailboxid": mailbox_id})
    queue = ctx.dataverse.get_typed(Queue, queue_id)
    mailbox = ctx.dataverse.get_typed(Mailbox, mailbox_id)
    ctx.found = {
        "queue_emailrouteraccessapproval": _queue_summary(queue)["emailrouteraccessapproval"],
        "mailbox_emailrouteraccessapproval": _mailbox_summary(mailbox)["emailrouteraccessapproval"],
    }
    approved: list[str] = []
    try:
        if queue.email_approval != EmailApproval.APPROVED:
            ctx.before_write()
            ctx.dataverse.update("queues", queue_id, {"emailrouteraccessapproval": 1}, etag=queue.etag)
            ctx.changed(
                "m365.dataverse.address_approved",
                before={"queueid": queue_id, "emailrouteraccessapproval": ctx.found["queue_emailrouteraccessapproval"]},
                after={"queueid": queue_id, "emailrouteraccessapproval": 1},
            )
            approved.append("queue")
            # Approving the queue usually carries over to its mailbox; read it again before deciding.
            mailbox = ctx.dataverse.get_typed(Mailbox, mailbox_id)
        if mailbox.email_approval != EmailApproval.APPROVED:
            before = _mailbox_summary(mailbox)["emailrouteraccessapproval"]
            ctx.before_write()
            ctx.dataverse.update("mailboxes", mailbox_id, {"emailrouteraccessapproval": 1}, etag=mailbox.etag)
            ctx.changed(
                "m365.dataverse.address_approved",
                before={"mailboxid": mailbox_id, "emailrouteraccessapproval": before},
                after={"mailboxid": mailbox_id, "emailrouteraccessapproval": 1},
            )
            approved.append("mailbox")
    except AccessDeniedError as error:
        raise StepFailed(
            APPROVAL_REFUSED.format(address=ctx.address, detail=error.message, name=ctx.request.display_name),
            code=error.code or "access_denied",
        ) from error
    return Done({"approved": approved, "emailrouteraccessapproval": 1})


def _schedule_test(ctx: StepContext) -> Done:
    mailbox_id = ctx.mailbox_id()
    ctx.inputs["mailboxid"] = mailbox_id
    mailbox = ctx.dataverse.get_typed(Mailbox, mailbox_id)
    ctx.found = _mailbox_summary(mailbox)
    if mailbox.test_scheduled:
        return Done({"action": "already_scheduled"})
    if mailbox.incoming_status == TestStatus.SUCCESS and mailbox.outgoing_status == TestStatus.SUCCESS:
        return Done({"action": "already_passed"})
    ctx.before_write()
    ctx.dataverse.update("mailboxes", mailbox_id, {"testemailconfigurationscheduled": True}, etag=mailbox.etag)
    ctx.changed(
        "m365.dataverse.test_enable_scheduled",
        before={"mailboxid": mailbox_id, "testemailconfigurationscheduled": False},
        after={"mailboxid": mailbox_id, "testemailconfigurationscheduled": True},
    )
    return Done({"action": "scheduled"})


_STATUS_WORDS = {None: "not run", 0: "not run", 1: "success", 2: "failure"}


def _alerts(ctx: StepContext, mailbox_id: str, *, limit: int = 3) -> list[dict[str, Any]]:
    rows = ctx.dataverse.iter_typed(
        TraceLog,
        filter=f"_regardingobjectid_value eq {row_id(mailbox_id)}",
        orderby="modifiedon desc",
        page_size=limit,
    )
    return [
        {
            "text": alert.text or "",
            "tracecode": alert.trace_code,
            "level": None if alert.level is None else int(alert.level),
            "errordetails": alert.error_details or "",
            "modifiedon": alert.modified_on.isoformat() if alert.modified_on else None,
        }
        for alert in itertools.islice(rows, limit)
    ]


def _await_test(ctx: StepContext) -> Done | Wait:
    mailbox_id = ctx.mailbox_id()
    policy = ctx.policy
    ctx.inputs.update(
        {
            "mailboxid": mailbox_id,
            "poll_seconds": policy.test_enable_poll_seconds,
            "timeout_minutes": policy.test_enable_timeout_minutes,
        }
    )
    mailbox = ctx.dataverse.get_typed(Mailbox, mailbox_id)
    ctx.found = _mailbox_summary(mailbox)
    incoming, outgoing = mailbox.incoming_status, mailbox.outgoing_status
    if not mailbox.test_scheduled:
        if incoming == TestStatus.SUCCESS and outgoing == TestStatus.SUCCESS:
            return Done(
                {
                    "incomingemailstatus": 1,
                    "outgoingemailstatus": 1,
                    "completed_on": mailbox.test_completed_on.isoformat() if mailbox.test_completed_on else None,
                }
            )
        if TestStatus.FAILURE in (incoming, outgoing):
            alerts = _alerts(ctx, mailbox_id)
            ctx.found["alerts"] = alerts
            texts = " ".join(f"Alert: {alert['text']}" for alert in alerts if alert["text"])
            raise StepFailed(
                f"Test & Enable failed for {ctx.address} (incoming email: "
                f"{_STATUS_WORDS.get(None if incoming is None else int(incoming))}, outgoing email: "
                f"{_STATUS_WORDS.get(None if outgoing is None else int(outgoing))}). "
                + (texts or "Dynamics 365 recorded no alert for the mailbox.")
                + " Fix the cause, then retry this step to test again.",
                code="test_enable_failed",
            )
    waited = timezone.now() - (ctx.step.started_at or timezone.now())
    if waited > dt.timedelta(minutes=policy.test_enable_timeout_minutes):
        raise StepFailed(
            f"Test & Enable for {ctx.address} did not finish within {policy.test_enable_timeout_minutes} minutes "
            f"(incoming email: {_STATUS_WORDS.get(None if incoming is None else int(incoming))}, outgoing email: "
            f"{_STATUS_WORDS.get(None if outgoing is None else int(outgoing))}). Check the mailbox in Dynamics 365, "
            "then retry this step to test again.",
            code="test_enable_timeout",
        )
    return Wait(policy.test_enable_poll_seconds, "Test & Enable has not finished yet")


STEPS: tuple[StepSpec, ...] = (
    StepSpec(
        "exchange_mailbox",
        "Create the shared mailbox in Exchange Online",
        "Looks the address up in Exchange Online first. Creates a shared mailbox when there is none; adopts an "
        "existing one only if it is a shared mailbox that no other request owns.",
        _ensure_exchange_mailbox,
    ),
    StepSpec(
        "mailbox_permissions",
        "Give members access",
        "Reads who already has Full Access, Send As and Send on Behalf, then adds only what is missing.",
        _grant_permissions,
    ),
    StepSpec(
        "dataverse_queue",
        "Create the Dynamics 365 queue",
        "Looks for a queue with this address first and adopts it; otherwise creates the queue with its "
        "address, visibility and email tracking rule.",
        _ensure_queue,
        queue_only=True,
    ),
    StepSpec(
        "dataverse_mailbox",
        "Find the queue's mailbox record",
        "Dynamics 365 creates the mailbox record for a new queue, sometimes late: this step looks for it and "
        "waits, with growing pauses, until it appears.",
        _find_queue_mailbox,
        queue_only=True,
    ),
    StepSpec(
        "server_profile",
        "Connect the mailbox to Exchange Online",
        "Binds the Exchange Online server profile and sets incoming and outgoing email to server-side "
        "synchronisation, with appointments, contacts and tasks off. Changes nothing that is already so.",
        _bind_profile,
        queue_only=True,
    ),
    StepSpec(
        "approve_address",
        "Approve the email address",
        "Approves the address on the queue and its mailbox, unless it is already approved. With Exchange "
        "Online this needs an Exchange or Global administrator's approval.",
        _approve_address,
        queue_only=True,
    ),
    StepSpec(
        "schedule_test",
        "Schedule Test & Enable",
        "Asks Dynamics 365 to test the mailbox, unless a test is already scheduled or has passed.",
        _schedule_test,
        queue_only=True,
    ),
    StepSpec(
        "await_test",
        "Wait for Test & Enable",
        "Checks the mailbox until incoming and outgoing email both succeed or one fails; on failure it reads "
        "the mailbox's alerts.",
        _await_test,
        queue_only=True,
    ),
)
_SPECS = {spec.name: spec for spec in STEPS}


def _static_inputs(request: MailboxRequest, spec: StepSpec, policy: PolicySettings) -> dict[str, Any]:
    address = request.address
    if spec.name == "exchange_mailbox":
        return {
            "address": address,
            "display_name": request.display_name,
            "name": request.local_part,
            "alias": request.local_part,
        }
    if spec.name == "mailbox_permissions":
        return {
            "address": address,
            "members": [
                {
                    "email": member.email,
                    "full_access": member.full_access,
                    "automapping": member.automapping,
                    "send_as": member.send_as,
                    "send_on_behalf": member.send_on_behalf,
                }
                for member in request.members.all()
            ],
        }
    if spec.name == "dataverse_queue":
        rule = request.tracking_rule if request.tracking_rule is not None else policy.default_tracking_rule_queue
        return {
            "name": request.display_name,
            "emailaddress": address,
            "queueviewtype": int(request.queue_visibility or 0),
            "incomingemailfilteringmethod": int(rule),
        }
    if spec.name == "server_profile":
        return {
            "address": address,
            "profile": policy.exchange_online_profile_id or policy.exchange_online_profile_name,
            "incomingemaildeliverymethod": SERVER_SIDE_SYNC,
            "outgoingemaildeliverymethod": SERVER_SIDE_SYNC,
            "actdeliverymethod": ACT_NONE,
        }
    return {"address": address}


# --- starting -----------------------------------------------------------------------------------


def provisioning_start(*, request: MailboxRequest, actor: User) -> ProvisioningRun:
    """Called by the final approval inside its transaction, with ``request`` locked and set to PROVISIONING.

    Creates the run and its steps (one run per request, ever) and queues the job after commit.
    A second call returns the run that exists.
    """
    existing = ProvisioningRun.objects.filter(request=request).first()
    if existing is not None:
        return existing
    if request.status != RequestStatus.PROVISIONING:
        raise InvalidStateError(f"Request {request.reference} is not ready to be set up (it is {request.status}).")
    if not request.address or request.kind not in MailboxKind.values:
        raise InvalidStateError(f"Request {request.reference} has no address or kind, so it cannot be set up.")
    policy = policy_get()
    now = timezone.now()
    try:
        with transaction.atomic():
            run = ProvisioningRun.objects.create(request=request, status=RunStatus.QUEUED, created_at=now)
    except IntegrityError:
        return ProvisioningRun.objects.get(request=request)
    specs = step_specs(request.kind)
    ProvisioningStep.objects.bulk_create(
        ProvisioningStep(
            run=run,
            order=order,
            name=spec.name,
            idempotency_key=f"{request.reference}:{spec.name}",
            inputs=_static_inputs(request, spec, policy),
        )
        for order, spec in enumerate(specs, start=1)
    )
    audit_record(
        actor=actor,
        action="provisioning.started",
        object_type="mailbox_request",
        object_id=request.pk,
        after={"reference": request.reference, "run": run.pk, "steps": [spec.name for spec in specs]},
    )
    _queue_run(run.pk)
    return run


def _queue_run(run_id: int) -> None:
    from onboarding.jobs import provisioning_run_job

    enqueue_on_commit(
        provisioning_run_job,
        run_id,
        job_timeout=RUN_JOB_TIMEOUT,
        on_enqueue_error=lambda exc: _queue_unavailable(run_id, waiting_as=RunStatus.QUEUED),
    )


def _queue_unavailable(run_id: int, *, waiting_as: str) -> None:
    """Redis refused the job: say so on the run, so it does not wait for a job that never comes."""
    with transaction.atomic():
        run = ProvisioningRun.objects.select_for_update().filter(pk=run_id).first()
        if run is None or run.status != waiting_as:
            return
        message = (
            "The background job queue was unavailable, so provisioning could not carry on. "
            "Retry from the step where it stopped."
        )
        run.status = RunStatus.NEEDS_ATTENTION
        run.next_attempt_at = None
        run.last_error = message
        run.save(update_fields=["status", "next_attempt_at", "last_error"])
        request = MailboxRequest.objects.select_for_update().get(pk=run.request_id)
        if request.status == RequestStatus.PROVISIONING:
            request.status = RequestStatus.NEEDS_ATTENTION
            request.updated_at = timezone.now()
            request.save(update_fields=["status", "updated_at"])
        audit_record(
            actor=None,
            action="provisioning.not_queued",
            object_type="mailbox_request",
            object_id=run.request_id,
            before={"status": waiting_as},
            after={"status": run.status},
            outcome=Outcome.FAILURE,
            reason=message,
        )


def _schedule(
    func: Callable[..., Any],
    run_id: int,
    *,
    seconds: float,
    job_timeout: int,
    on_error: Callable[[], None],
) -> None:
    """Queue ``func(run_id)`` to run ``seconds`` from now, once the current transaction commits."""
    correlation_id = correlation.current() or correlation.new_id()

    def _enqueue() -> None:
        try:
            django_rq.get_queue("default").enqueue_in(
                dt.timedelta(seconds=max(0.0, seconds)),
                func,
                run_id,
                job_timeout=job_timeout,
                correlation_id=correlation_id,
            )
        except Exception:  # Redis down or refusing: record it, do not leave the run waiting for nothing
            logger.exception("could not schedule %s for run %s", getattr(func, "__name__", func), run_id)
            on_error()

    transaction.on_commit(_enqueue)


def _schedule_run(run_id: int, *, seconds: float) -> None:
    from onboarding.jobs import provisioning_run_job

    _schedule(
        provisioning_run_job,
        run_id,
        seconds=seconds,
        job_timeout=RUN_JOB_TIMEOUT,
        on_error=lambda: _queue_unavailable(run_id, waiting_as=RunStatus.WAITING),
    )


def _schedule_watchdog(run_id: int, *, seconds: float) -> None:
    """The safety net for a worker that dies; without Redis there is no worker to die, so failing is only logged."""
    from onboarding.jobs import provisioning_watchdog_job

    _schedule(
        provisioning_watchdog_job, run_id, seconds=seconds, job_timeout=WATCHDOG_JOB_TIMEOUT, on_error=lambda: None
    )


# --- the job ------------------------------------------------------------------------------------


def _claim(run_id: int, owner: str) -> str | None:
    """Take the run if it is queued, due, or abandoned (expired lease); None when there is nothing to take."""
    now = timezone.now()
    fields = {
        "status": RunStatus.RUNNING,
        "lease_owner": owner,
        "lease_expires_at": now + dt.timedelta(seconds=LEASE_SECONDS),
        "next_attempt_at": None,
        "attempts": F("attempts") + 1,
        "started_at": Coalesce("started_at", Value(now, output_field=DateTimeField())),
    }
    runs = ProvisioningRun.objects.filter(pk=run_id)
    due = Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now + dt.timedelta(seconds=CLAIM_TOLERANCE_SECONDS))
    with transaction.atomic():
        if runs.filter(status=RunStatus.QUEUED).update(**fields):
            kind = "claimed"
        elif runs.filter(due, status=RunStatus.WAITING).update(**fields):
            kind = "due"
        elif runs.filter(status=RunStatus.RUNNING, lease_expires_at__lt=now).update(**fields):
            kind = "taken_over"
        else:
            return None
        if kind != "due":  # waking for a poll or a retry is recorded on the step, not here
            request_id = ProvisioningRun.objects.values_list("request_id", flat=True).get(pk=run_id)
            audit_record(
                actor=None,
                action="provisioning.run_claimed" if kind == "claimed" else "provisioning.run_taken_over",
                object_type="mailbox_request",
                object_id=request_id,
                after={"run": run_id, "worker": owner},
                reason="" if kind == "claimed" else "the previous worker's lease had expired",
            )
        _schedule_watchdog(run_id, seconds=LEASE_SECONDS + WATCHDOG_MARGIN_SECONDS)
    return kind


def _heartbeat(run_id: int, owner: str) -> LeaseHeartbeat:
    """Renews the run's lease while this worker holds it."""
    held = ProvisioningRun.objects.filter(pk=run_id, status=RunStatus.RUNNING, lease_owner=owner)
    return LeaseHeartbeat(
        held, lease_seconds=LEASE_SECONDS, every_seconds=HEARTBEAT_SECONDS, name=f"provisioning-lease-{run_id}"
    )


def provisioning_advance(*, run_id: int) -> None:
    """The job's work: claim the run, then do its steps in order until done, waiting or failed.

    A duplicate job finds nothing to claim and does nothing.
    """
    owner = new_lease_owner()
    if _claim(run_id, owner) is None:
        logger.info("provisioning run %s: nothing to claim (held, waiting or finished)", run_id)
        return
    try:
        with _heartbeat(run_id, owner):
            while True:
                step = (
                    ProvisioningStep.objects.filter(run_id=run_id)
                    .exclude(status__in=DONE_STATUSES)
                    .order_by("order")
                    .first()
                )
                if step is None:
                    _finish(run_id, owner)
                    return
                if not _attempt(run_id, step.pk, owner):
                    return
    except LeaseLost:
        logger.warning("provisioning run %s was taken over by another worker; stopping", run_id)


def _lock_run(run_id: int, owner: str) -> ProvisioningRun:
    run = ProvisioningRun.objects.select_for_update().get(pk=run_id)
    if run.status != RunStatus.RUNNING or run.lease_owner != owner:
        raise LeaseLost(f"run {run_id} is no longer held by {owner}")
    return run


def _attempt(run_id: int, step_id: int, owner: str) -> bool:
    """One attempt at one step; True when the run should go on to the next step."""
    now = timezone.now()
    with transaction.atomic():
        _lock_run(run_id, owner)
        step = ProvisioningStep.objects.select_for_update().get(pk=step_id)
        first = step.status == StepStatus.PENDING
        step.status = StepStatus.RUNNING
        step.attempts += 1
        step.started_at = step.started_at if not first and step.started_at else now
        step.save(update_fields=["status", "attempts", "started_at"])
        if first:
            request_id = ProvisioningRun.objects.values_list("request_id", flat=True).get(pk=run_id)
            audit_record(
                actor=None,
                action="provisioning.step_started",
                object_type="mailbox_request",
                object_id=request_id,
                after={"step": step.name, "order": step.order},
            )
    request = (
        MailboxRequest.objects.select_related("requester", "owner", "backup_owner")
        .prefetch_related("members")
        .get(provisioning__pk=run_id)
    )
    ctx = StepContext(run_id=run_id, step=step, request=request, owner=owner, policy=policy_get())
    spec = _SPECS.get(step.name)
    try:
        if spec is None:
            raise StepFailed(f"The portal does not know how to do the step “{step.name}”.", code="unknown_step")
        outcome = spec.run(ctx)
    except LeaseLost:
        raise
    except StepFailed as failure:
        _fail(ctx, failure.message, code=failure.code)
        return False
    except ConcurrencyError as error:
        _retry_later(ctx, error, seconds=CONCURRENCY_RETRY_SECONDS)
        return False
    except TransientError as error:
        _retry_later(ctx, error, seconds=error.retry_after)
        return False
    except M365Error as error:
        _fail(ctx, describe_error(error), code=error.code or (f"http_{error.status}" if error.status else "m365_error"))
        return False
    except ImproperlyConfigured as error:
        _fail(ctx, f"The Microsoft 365 configuration is incomplete: {error}", code="configuration")
        return False
    except JobTimeoutException as error:  # RQ's time limit for the job: carry on in a fresh job
        _retry_later(ctx, error, seconds=TRANSIENT_BACKOFF_BASE_SECONDS)
        return False
    except Exception as error:
        _fail(
            ctx,
            f"An unexpected error stopped this step ({type(error).__name__}). The worker's log has the details; "
            "retry once the cause is fixed.",
            code="unexpected",
        )
        raise
    if isinstance(outcome, Wait):
        _wait(ctx, outcome)
        return False
    _succeed(ctx, outcome)
    return True


def _step_fields(ctx: StepContext) -> dict[str, Any]:
    inputs = {**(ctx.step.inputs or {}), **ctx.inputs}
    return {"inputs": inputs, "before_state": ctx.found or None}


def _save_request_ids(ctx: StepContext) -> None:
    if not ctx.remembered:
        return
    request = MailboxRequest.objects.select_for_update().get(pk=ctx.request.pk)
    changed = [name for name, value in ctx.remembered.items() if getattr(request, name) != value]
    for name in changed:
        setattr(request, name, ctx.remembered[name])
    if changed:
        request.updated_at = timezone.now()
        request.save(update_fields=[*changed, "updated_at"])


def _succeed(ctx: StepContext, done: Done) -> None:
    now = timezone.now()
    with transaction.atomic():
        run = _lock_run(ctx.run_id, ctx.owner)
        step = ProvisioningStep.objects.select_for_update().get(pk=ctx.step.pk)
        for name, value in _step_fields(ctx).items():
            setattr(step, name, value)
        step.status = StepStatus.SUCCEEDED
        step.result = done.result
        step.error = ""
        step.error_code = ""
        step.finished_at = now
        step.save(update_fields=["inputs", "before_state", "status", "result", "error", "error_code", "finished_at"])
        _save_request_ids(ctx)
        run.lease_expires_at = now + dt.timedelta(seconds=LEASE_SECONDS)
        run.last_error = ""
        run.save(update_fields=["lease_expires_at", "last_error"])
        audit_record(
            actor=None,
            action="provisioning.step_succeeded",
            object_type="mailbox_request",
            object_id=ctx.request.pk,
            before={"step": step.name, "found": ctx.found or None},
            after={"step": step.name, "order": step.order, "result": done.result},
        )


def _wait(ctx: StepContext, wait: Wait) -> None:
    now = timezone.now()
    with transaction.atomic():
        run = _lock_run(ctx.run_id, ctx.owner)
        step = ProvisioningStep.objects.select_for_update().get(pk=ctx.step.pk)
        for name, value in _step_fields(ctx).items():
            setattr(step, name, value)
        step.save(update_fields=["inputs", "before_state"])
        run.status = RunStatus.WAITING
        run.next_attempt_at = now + dt.timedelta(seconds=wait.seconds)
        run.lease_owner = ""
        run.lease_expires_at = None
        run.save(update_fields=["status", "next_attempt_at", "lease_owner", "lease_expires_at"])
        if step.attempts == 1:  # the first wait of a step is news; each later check is counted in attempts
            audit_record(
                actor=None,
                action="provisioning.waiting",
                object_type="mailbox_request",
                object_id=ctx.request.pk,
                after={"step": step.name, "seconds": wait.seconds},
                reason=wait.reason,
            )
        _schedule_run(ctx.run_id, seconds=wait.seconds)


def _retry_later(ctx: StepContext, error: BaseException, *, seconds: float | None) -> None:
    """A temporary failure: note it and try the whole (re-checking) step again later."""
    started = ctx.step.started_at or timezone.now()
    message = describe_error(error) if isinstance(error, M365Error) else f"{type(error).__name__}: {error}"
    if timezone.now() - started > TRANSIENT_GIVE_UP:
        hours = int(TRANSIENT_GIVE_UP.total_seconds() // 3600)
        _fail(
            ctx,
            f"This step kept failing with temporary errors for over {hours} hours. The last one: {message}",
            code=getattr(error, "code", "") or "transient",
        )
        return
    if seconds is None and ctx.step.name == "await_test":
        seconds = ctx.policy.test_enable_poll_seconds  # its attempts count polls, not failures
    if seconds is None:
        exponent = min(max(ctx.step.attempts - 1, 0), 10)
        seconds = min(TRANSIENT_BACKOFF_CAP_SECONDS, TRANSIENT_BACKOFF_BASE_SECONDS * 2**exponent)
    now = timezone.now()
    with transaction.atomic():
        run = _lock_run(ctx.run_id, ctx.owner)
        step = ProvisioningStep.objects.select_for_update().get(pk=ctx.step.pk)
        for name, value in _step_fields(ctx).items():
            setattr(step, name, value)
        step.error = f"Temporary error, trying again: {message}"[:4000]
        step.error_code = str(getattr(error, "code", "") or "transient")[:100]
        step.save(update_fields=["inputs", "before_state", "error", "error_code"])
        run.status = RunStatus.WAITING
        run.next_attempt_at = now + dt.timedelta(seconds=seconds)
        run.lease_owner = ""
        run.lease_expires_at = None
        run.last_error = message[:4000]
        run.save(update_fields=["status", "next_attempt_at", "lease_owner", "lease_expires_at", "last_error"])
        audit_record(
            actor=None,
            action="provisioning.step_retry_scheduled",
            object_type="mailbox_request",
            object_id=ctx.request.pk,
            after={"step": step.name, "attempt": step.attempts, "retry_in_seconds": seconds},
            outcome=Outcome.FAILURE,
            reason=message[:1000],
        )
        _schedule_run(ctx.run_id, seconds=seconds)


def _platform_admins() -> Iterable[User]:
    return User.objects.filter(groups__name=ROLE_GROUP_NAMES[Role.PLATFORM_ADMIN], is_active=True).distinct()


def _request_people(request: MailboxRequest) -> list[User]:
    return [person for person in (request.requester, request.owner, request.backup_owner) if person is not None]


def _fail(ctx: StepContext, message: str, *, code: str) -> None:
    now = timezone.now()
    with transaction.atomic():
        run = _lock_run(ctx.run_id, ctx.owner)
        step = ProvisioningStep.objects.select_for_update().get(pk=ctx.step.pk)
        request = MailboxRequest.objects.select_for_update().get(pk=ctx.request.pk)
        for name, value in _step_fields(ctx).items():
            setattr(step, name, value)
        step.status = StepStatus.FAILED
        step.error = message[:4000]
        step.error_code = code[:100]
        step.finished_at = now
        step.save(update_fields=["inputs", "before_state", "status", "error", "error_code", "finished_at"])
        _save_request_ids(ctx)
        request.refresh_from_db()
        run.status = RunStatus.NEEDS_ATTENTION
        run.lease_owner = ""
        run.lease_expires_at = None
        run.next_attempt_at = None
        run.last_error = message[:4000]
        run.save(update_fields=["status", "lease_owner", "lease_expires_at", "next_attempt_at", "last_error"])
        before_status = request.status
        if request.status == RequestStatus.PROVISIONING:
            request.status = RequestStatus.NEEDS_ATTENTION
            request.updated_at = now
            request.save(update_fields=["status", "updated_at"])
        audit_record(
            actor=None,
            action="provisioning.step_failed",
            object_type="mailbox_request",
            object_id=request.pk,
            before={"status": before_status, "step": step.name, "found": ctx.found or None},
            after={"status": request.status, "step": step.name, "order": step.order, "error_code": step.error_code},
            outcome=Outcome.FAILURE,
            reason=message[:1000],
        )
        notify(
            request=request,
            event=NotificationEvent.NEEDS_ATTENTION,
            recipients=[*_request_people(request), *_platform_admins()],
            context={"step": step_title(step.name), "error": message[:1500]},
        )


def _finish(run_id: int, owner: str) -> None:
    now = timezone.now()
    with transaction.atomic():
        run = _lock_run(run_id, owner)
        request = MailboxRequest.objects.select_for_update().get(pk=run.request_id)
        run.status = RunStatus.SUCCEEDED
        run.finished_at = now
        run.lease_owner = ""
        run.lease_expires_at = None
        run.next_attempt_at = None
        run.last_error = ""
        run.save(
            update_fields=["status", "finished_at", "lease_owner", "lease_expires_at", "next_attempt_at", "last_error"]
        )
        before = {"status": request.status}
        if request.status in (RequestStatus.PROVISIONING, RequestStatus.NEEDS_ATTENTION):
            request.status = RequestStatus.ACTIVE
            request.activated_at = request.activated_at or now
            request.updated_at = now
            request.save(update_fields=["status", "activated_at", "updated_at"])
        ids = {
            "exchange_mailbox_id": request.exchange_mailbox_id,
            "dataverse_queue_id": request.dataverse_queue_id,
            "dataverse_mailbox_id": request.dataverse_mailbox_id,
        }
        audit_record(
            actor=None,
            action="provisioning.succeeded",
            object_type="mailbox_request",
            object_id=request.pk,
            before=before,
            after={"status": request.status, "run": run.pk, **ids},
        )
        notify(
            request=request,
            event=NotificationEvent.ACTIVE,
            recipients=_request_people(request),
            context={"kind": request.kind, "address": request.address},
        )


# --- the watchdog -------------------------------------------------------------------------------


def provisioning_recover(*, run_id: int) -> None:
    """The watchdog: a run whose lease expired (its worker died) is queued again.

    While a live worker still renews the lease, the watchdog looks again just after it would expire.
    """
    from onboarding.jobs import provisioning_run_job

    now = timezone.now()
    with transaction.atomic():
        run = ProvisioningRun.objects.select_for_update().filter(pk=run_id).first()
        if run is None or run.status != RunStatus.RUNNING:
            return
        if run.lease_expires_at is not None and run.lease_expires_at > now:
            remaining = (run.lease_expires_at - now).total_seconds()
            _schedule_watchdog(run_id, seconds=remaining + WATCHDOG_MARGIN_SECONDS)
            return
        before = {
            "status": run.status,
            "lease_owner": run.lease_owner,
            "lease_expires_at": run.lease_expires_at.isoformat() if run.lease_expires_at else None,
        }
        run.status = RunStatus.QUEUED
        run.lease_owner = ""
        run.lease_expires_at = None
        run.save(update_fields=["status", "lease_owner", "lease_expires_at"])
        audit_record(
            actor=None,
            action="provisioning.run_recovered",
            object_type="mailbox_request",
            object_id=run.request_id,
            before=before,
            after={"status": run.status},
            reason="the worker holding the run stopped renewing its lease",
        )
        enqueue_on_commit(provisioning_run_job, run_id, job_timeout=RUN_JOB_TIMEOUT)


# --- platform admin actions ---------------------------------------------------------------------


def retryable_orders(run: ProvisioningRun, steps: Iterable[ProvisioningStep]) -> set[int]:
    """The steps a platform admin may retry from now: any up to the first unfinished one."""
    if run.status != RunStatus.NEEDS_ATTENTION:
        return set()
    ordered = sorted(steps, key=lambda step: step.order)
    first_open = next((step.order for step in ordered if step.status not in DONE_STATUSES), None)
    if first_open is None:
        return set()
    return {step.order for step in ordered if step.order <= first_open}


def provisioning_retry_from_step(*, actor: User, run_id: int, step_order: int) -> ProvisioningRun:
    """A platform admin restarts a run that needs attention from one of its steps.

    That step and every later one go back to PENDING (their history stays in the audit trail);
    the request returns to PROVISIONING and the run is queued again.
    """
    now = timezone.now()
    with transaction.atomic():
        run = ProvisioningRun.objects.select_for_update().filter(pk=run_id).first()
        if run is None:
            raise InvalidStateError("There is no such provisioning run.")
        request = MailboxRequest.objects.select_for_update().get(pk=run.request_id)
        steps = list(run.steps.select_for_update().order_by("order"))
        if run.status != RunStatus.NEEDS_ATTENTION:
            raise InvalidStateError("This provisioning run does not need attention, so there is nothing to retry.")
        if step_order not in retryable_orders(run, steps):
            raise InvalidStateError("You can only retry from the step that needs attention or an earlier one.")
        chosen = next(step for step in steps if step.order == step_order)
        if chosen.name in RETRY_FROM:
            earlier = next((step for step in steps if step.name == RETRY_FROM[chosen.name]), None)
            if earlier is not None and earlier.order < chosen.order:
                chosen = earlier
        reset = [step for step in steps if step.order >= chosen.order]
        before = {
            "run_status": run.status,
            "request_status": request.status,
            "steps": {step.name: step.status for step in reset},
        }
        for step in reset:
            step.status = StepStatus.PENDING
            step.before_state = None
            step.result = None
            step.error = ""
            step.error_code = ""
            step.attempts = 0
            step.started_at = None
            step.finished_at = None
            step.done_by = None
            step.note = ""
        ProvisioningStep.objects.bulk_update(
            reset,
            [
                "status",
                "before_state",
                "result",
                "error",
                "error_code",
                "attempts",
                "started_at",
                "finished_at",
                "done_by",
                "note",
            ],
        )
        _requeue(run, request, now)
        audit_record(
            actor=actor,
            action="provisioning.retried_from_step",
            object_type="mailbox_request",
            object_id=request.pk,
            before=before,
            after={
                "run_status": run.status,
                "request_status": request.status,
                "from_step": chosen.name,
                "from_order": chosen.order,
            },
        )
        _queue_run(run.pk)
    return run


def provisioning_mark_step_done(*, actor: User, step_id: int, note: str) -> ProvisioningStep:
    """A platform admin records a step as done by hand (e.g. approval in the Exchange admin centre).

    Only the step that needs attention can be marked; the run then continues with the next step.
    """
    note = (note or "").strip()
    if not note:
        raise PortalError("Enter what you did to complete this step", field="note")
    now = timezone.now()
    with transaction.atomic():
        step = ProvisioningStep.objects.filter(pk=step_id).select_related("run").first()
        if step is None:
            raise InvalidStateError("There is no such provisioning step.")
        run = ProvisioningRun.objects.select_for_update().get(pk=step.run_id)
        request = MailboxRequest.objects.select_for_update().get(pk=run.request_id)
        step = ProvisioningStep.objects.select_for_update().get(pk=step_id)
        if run.status != RunStatus.NEEDS_ATTENTION or step.status != StepStatus.FAILED:
            raise InvalidStateError("Only the step that needs attention can be marked as done by hand.")
        before = {"step": step.name, "status": step.status, "error": step.error}
        step.status = StepStatus.DONE_BY_HAND
        step.done_by = actor
        step.note = note
        step.finished_at = now
        step.save(update_fields=["status", "done_by", "note", "finished_at"])
        _requeue(run, request, now)
        audit_record(
            actor=actor,
            action="provisioning.step_done_by_hand",
            object_type="mailbox_request",
            object_id=request.pk,
            before=before,
            after={"step": step.name, "status": step.status, "run_status": run.status},
            reason=note,
        )
        _queue_run(run.pk)
    return step


def _requeue(run: ProvisioningRun, request: MailboxRequest, now: dt.datetime) -> None:
    run.status = RunStatus.QUEUED
    run.lease_owner = ""
    run.lease_expires_at = None
    run.next_attempt_at = None
    run.finished_at = None
    run.last_error = ""
    run.save(
        update_fields=["status", "lease_owner", "lease_expires_at", "next_attempt_at", "finished_at", "last_error"]
    )
    if request.status == RequestStatus.NEEDS_ATTENTION:
        request.status = RequestStatus.PROVISIONING
        request.updated_at = now
        request.save(update_fields=["status", "updated_at"])
