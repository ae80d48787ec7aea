"""Migrating one wave mailbox to server-side sync as checkpointed steps, and rolling it back.

Each :class:`WaveMailbox` runs five steps: snapshot what Dataverse holds now → bind the Exchange
Online profile and set server-side sync → approve the address where the organisation requires
it → schedule Test & Enable → wait for its result. Every step reads the remote state before it
acts and writes with ``If-Match``, so a step retried after a lost response, a killed worker or a
duplicated job finds its change already made and does not make it again. The step's row is the
checkpoint; the remote read covers the gap between a change and its checkpoint.

Runs are claimed atomically with a lease (a conditional UPDATE), renewed from a heartbeat thread
and re-checked before every write, so two workers never migrate the same mailbox; a run whose
worker died is taken over once its lease expires (the watchdog, and the wave's dispatcher, queue
it again). Waiting (Test & Enable, throttling) never holds a worker: the run is scheduled for later.

The dispatcher starts a wave's mailboxes queues first, in order, a bounded number at a time, within
the Test & Enable cap (counted over every wave) and outside blackout windows, and schedules itself
for when room returns. Rollback restores the snapshot with ``If-Match`` on the ETags recorded after
the migration's own changes; a record changed meanwhile in Dynamics 365 is reported, not overwritten.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import json
import logging
import os
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
from rq.job import Job
from rq.timeouts import JobTimeoutException

from migration.models import (
    InventoryMailbox,
    MigrationStep,
    MigrationStepStatus,
    Wave,
    WaveMailbox,
    WaveMailboxState,
    WaveStatus,
)
from portal import correlation
from portal.accounts.models import User
from portal.accounts.roles import perm
from portal.audit.models import Outcome
from portal.audit.services import audit_record
from portal.exceptions import InvalidStateError, PermissionDeniedError
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
from portal.policy.models import BlackoutWindow, PolicySettings
from portal.policy.services import policy_get

logger = logging.getLogger(__name__)

# A worker holds a run for this long and renews it every HEARTBEAT_SECONDS while it works, so a dead
# worker's run is resumed within about LEASE_SECONDS + WATCHDOG_MARGIN_SECONDS.
LEASE_SECONDS = 20
HEARTBEAT_SECONDS = 5
WATCHDOG_MARGIN_SECONDS = 5
# How early a scheduled job may arrive (clocks of different hosts) and still take a waiting run.
CLAIM_TOLERANCE_SECONDS = 1
RUN_JOB_TIMEOUT = 900
WATCHDOG_JOB_TIMEOUT = 60
DISPATCH_JOB_TIMEOUT = 120
# How many of a wave's mailboxes may be started and not yet waiting at once. Every run is its own
# job, so more workers work through more of them at once; this only bounds how far a wave runs ahead.
CONCURRENT_RUNS_PER_WAVE = 48
# While a wave has runs in flight its dispatcher looks again this often: it starts what may start and
# queues again any run whose worker died or whose job was lost.
SWEEP_SECONDS = 15
# A waiting run whose job has not come this long after it was due is queued again.
OVERDUE_SECONDS = 30
# Temporary errors (throttling, 5xx, timeouts, dropped connections) are retried with backoff,
# honouring Retry-After, until a step has been failing this long.
TRANSIENT_BACKOFF_BASE_SECONDS = 2
TRANSIENT_BACKOFF_CAP_SECONDS = 300
TRANSIENT_GIVE_UP = dt.timedelta(hours=2)
# Dataverse's "changed since read" (412) during a migration step: read again and retry almost at once.
CONCURRENCY_RETRY_SECONDS = 1

SERVER_SIDE_SYNC = 2  # incoming and outgoing email
ACT_SERVER_SIDE_SYNC = 1  # appointments, contacts and tasks are numbered differently
APPROVED = 1
SUCCESS, FAILURE = 1, 2

STEP_NAMES = ("snapshot", "bind_profile", "approve_address", "schedule_test", "await_test")
ROLLBACK_STEP = "rollback"
ROLLBACK_ORDER = 100
# Steps after which the mailbox's Test & Enable is under way: a paused wave lets these finish.
UNDER_WAY = ("await_test",)
# Retrying the wait for a finished test cannot change its outcome: a retry starts from scheduling.
RETRY_FROM = {"await_test": "schedule_test"}
DONE_STEP_STATUSES = (MigrationStepStatus.SUCCEEDED, MigrationStepStatus.SKIPPED)
FINISHED_STATES = (
    WaveMailboxState.MIGRATED,
    WaveMailboxState.NEEDS_ATTENTION,
    WaveMailboxState.ROLLED_BACK,
    WaveMailboxState.ROLLBACK_CONFLICT,
    WaveMailboxState.CANCELLED,
)
ROLLBACK_FROM = (WaveMailboxState.MIGRATED, WaveMailboxState.NEEDS_ATTENTION, WaveMailboxState.CANCELLED)

STEP_TITLES = {
    "snapshot": "Record the current settings",
    "bind_profile": "Connect the mailbox to Exchange Online",
    "approve_address": "Approve the email address",
    "schedule_test": "Schedule Test & Enable",
    "await_test": "Wait for Test & Enable",
    ROLLBACK_STEP: "Restore the recorded settings",
}

MAILBOX_COLUMNS = (
    "mailboxid",
    "name",
    "emailaddress",
    "_emailserverprofile_value",
    "incomingemaildeliverymethod",
    "outgoingemaildeliverymethod",
    "actdeliverymethod",
    "emailrouteraccessapproval",
    "incomingemailstatus",
    "outgoingemailstatus",
    "actstatus",
    "mailboxstatus",
    "enabledforincomingemail",
    "enabledforoutgoingemail",
    "enabledforact",
    "testemailconfigurationscheduled",
    "testmailboxaccesscompletedon",
    "_regardingobjectid_value",
    "isforwardmailbox",
    "statecode",
)
# What a rollback writes back to the mailbox (the profile goes back through its binding).
MAILBOX_RESTORED = (
    "incomingemaildeliverymethod",
    "outgoingemaildeliverymethod",
    "actdeliverymethod",
    "emailrouteraccessapproval",
    "incomingemailstatus",
    "outgoingemailstatus",
    "actstatus",
    "enabledforincomingemail",
    "enabledforoutgoingemail",
    "enabledforact",
    "testemailconfigurationscheduled",
    "testmailboxaccesscompletedon",
)
OWNER_RESTORED = ("emailrouteraccessapproval", "incomingemaildeliverymethod", "outgoingemaildeliverymethod")
QUEUE_COLUMNS = ("queueid", "name", "emailaddress", *OWNER_RESTORED, "incomingemailfilteringmethod")
USER_COLUMNS = ("systemuserid", "fullname", "internalemailaddress", *OWNER_RESTORED, "isdisabled")
USERSETTINGS_SET = "usersettingscollection"
USERSETTINGS_COLUMNS = ("systemuserid", "incomingemailfilteringmethod")
USERSETTINGS_RESTORED = ("incomingemailfilteringmethod",)
ORGANIZATION_COLUMNS = ("organizationid", "requireapprovalforuseremail", "requireapprovalforqueueemail")

LABELS = {
    "_emailserverprofile_value": "Email server profile",
    "incomingemaildeliverymethod": "Incoming email",
    "outgoingemaildeliverymethod": "Outgoing email",
    "actdeliverymethod": "Appointments, contacts and tasks",
    "emailrouteraccessapproval": "Email address approval",
    "incomingemailstatus": "Incoming email status",
    "outgoingemailstatus": "Outgoing email status",
    "actstatus": "Appointments, contacts and tasks status",
    "enabledforincomingemail": "Enabled for incoming email",
    "enabledforoutgoingemail": "Enabled for outgoing email",
    "enabledforact": "Enabled for appointments, contacts and tasks",
    "testemailconfigurationscheduled": "Test & Enable scheduled",
    "testmailboxaccesscompletedon": "Last tested",
    "incomingemailfilteringmethod": "Track incoming email",
}
RECORD_NAMES = {"mailbox": "the mailbox", "owner": "the mailbox's queue or user", "usersettings": "the user's options"}

APPROVAL_REFUSED = (
    "Dynamics 365 refused to approve the email address {address}: the portal's application user may not "
    "approve email addresses ({detail}). With Exchange Online, an Exchange administrator or Global "
    "administrator must approve it: in Dynamics 365, open Settings, Email Configuration, Mailboxes, select "
    "“{name}” and choose Approve Email. Then retry the mailbox."
)
_STATUS_WORDS = {None: "not run", 0: "not run", 1: "success", 2: "failure"}


# --- errors and outcomes ------------------------------------------------------------------------


class StepFailed(Exception):
    """A step cannot finish without a person: the message says what happened and what to do."""

    def __init__(self, message: str, *, code: str = "", report: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.report = report


class LeaseLost(Exception):
    """Another worker holds the run now (this one was too slow); stop without touching anything."""


@dataclass(frozen=True)
class Done:
    result: dict[str, Any]
    skipped: bool = False


@dataclass(frozen=True)
class Wait:
    seconds: float
    reason: str


# --- the context a step works with --------------------------------------------------------------


@dataclass
class JobClients:
    """The Microsoft 365 clients of one job; its application user is chosen once, when first needed."""

    _dataverse: DataverseClient | None = None

    @property
    def dataverse(self) -> DataverseClient:
        # The application user with most room now: spreads the mailboxes over every configured one.
        if self._dataverse is None:
            self._dataverse = DataverseClientPool(_m365_config()).client()
        return self._dataverse


@dataclass
class RunContext:
    entry_id: int
    owner: str
    rollback: bool
    step: MigrationStep
    entry: WaveMailbox
    policy: PolicySettings
    found: dict[str, Any] = field(default_factory=dict)
    # Rows as this job last read or wrote them (a write answers with the row and its new ETag), so the
    # next step in the same job need not read them again; every write is conditional on that ETag.
    memo: dict[str, dict[str, Any]] = field(default_factory=dict)
    clients: JobClients = field(default_factory=JobClients)

    @property
    def dataverse(self) -> DataverseClient:
        return self.clients.dataverse

    @property
    def working_state(self) -> str:
        return WaveMailboxState.ROLLING_BACK if self.rollback else WaveMailboxState.RUNNING

    @property
    def mailbox(self) -> InventoryMailbox:
        return self.entry.mailbox

    @property
    def address(self) -> str:
        return self.mailbox.email_address or str(self.mailbox.dataverse_id)

    @property
    def is_user(self) -> bool:
        return not self.entry.is_queue and self.mailbox.owner_type == "user"

    def before_write(self) -> None:
        """Renew the lease, or stop if another worker has taken the run over: never write without it."""
        renewed = WaveMailbox.objects.filter(pk=self.entry_id, state=self.working_state, lease_owner=self.owner).update(
            lease_expires_at=timezone.now() + dt.timedelta(seconds=LEASE_SECONDS)
        )
        if not renewed:
            raise LeaseLost(f"wave mailbox {self.entry_id} is no longer held by {self.owner}")

    def changed(self, action: str, *, before: Any, after: Any) -> None:
        """Record a change just made in Dynamics 365, at once."""
        with transaction.atomic():
            audit_record(
                actor=None,
                action=action,
                object_type="inventory_mailbox",
                object_id=self.mailbox.pk,
                before=before,
                after={"wave": self.entry.wave_id, "entry": self.entry_id, "step": self.step.name, **(after or {})},
            )

    def save_intent(self, intent: dict[str, Any]) -> None:
        """Checkpoint what is about to be written, before writing it (read back on a retry)."""
        MigrationStep.objects.filter(pk=self.step.pk).update(result={"intent": intent})
        self.step.result = {"intent": intent}


def _m365_config():
    config = settings.M365
    if not config.enabled:
        raise StepFailed(
            "The Microsoft 365 integration is switched off (M365_TENANT_ID is not set), so nothing can be "
            "migrated. Configure it, then retry the mailbox.",
            code="m365_disabled",
        )
    return config


def _etag(row: dict[str, Any] | None) -> str | None:
    return None if row is None else row.get("@odata.etag")


def _values(row: dict[str, Any] | None, columns: Iterable[str]) -> dict[str, Any]:
    return {} if row is None else {column: row.get(column) for column in columns}


def _read(client: DataverseClient, entity_set: str, key: str, columns: Iterable[str]) -> dict[str, Any] | None:
    try:
        return client.get(entity_set, key, select=list(columns))
    except NotFoundError:
        return None


def _read_mailbox(ctx: RunContext, *, fresh: bool = True) -> dict[str, Any]:
    if not fresh and "mailbox" in ctx.memo:
        return ctx.memo["mailbox"]
    mailbox = _read(ctx.dataverse, "mailboxes", str(ctx.mailbox.dataverse_id), MAILBOX_COLUMNS)
    if mailbox is not None:
        ctx.memo["mailbox"] = mailbox
    if mailbox is None:
        raise StepFailed(
            f"The mailbox {ctx.address} is no longer in Dynamics 365 (it was deleted, or its user or queue was). "
            "Remove it from the wave.",
            code="mailbox_gone",
        )
    return mailbox


def _owner_ref(ctx: RunContext, mailbox: dict[str, Any] | None = None) -> tuple[str, str, tuple[str, ...]] | None:
    """(entity set, id, columns) of the queue or user the mailbox belongs to, if any."""
    owner_id = (mailbox or {}).get("_regardingobjectid_value") or (
        str(ctx.mailbox.owner_dataverse_id) if ctx.mailbox.owner_dataverse_id else None
    )
    if not owner_id:
        return None
    if ctx.entry.is_queue or ctx.mailbox.owner_type == "queue":
        return "queues", owner_id, QUEUE_COLUMNS
    if ctx.mailbox.owner_type == "user":
        return "systemusers", owner_id, USER_COLUMNS
    return None


CACHE_SECONDS = 60
CACHE_PREFIX = "portal:migration:dataverse-cache:"


def _cached(key: str, load: Callable[[], Any]) -> Any:
    """Organisation settings and the Exchange Online profile change rarely: read them once a minute.

    Kept in Redis, shared by every worker, because RQ runs each job in a fresh work-horse process.
    """
    try:
        connection = _queue().connection
        hit = connection.get(CACHE_PREFIX + key)
    except Exception:  # Redis unavailable: read from Dataverse instead
        logger.warning("the migration cache is unavailable; reading %s from Dataverse", key, exc_info=True)
        return load()
    if hit is not None:
        return json.loads(hit)
    value = load()
    with contextlib.suppress(Exception):
        connection.set(CACHE_PREFIX + key, json.dumps(value), ex=CACHE_SECONDS)
    return value


def _organization(ctx: RunContext) -> dict[str, Any]:
    def load() -> dict[str, Any]:
        rows = ctx.dataverse.iter_rows("organizations", select=ORGANIZATION_COLUMNS, page_size=1)
        row = next(iter(rows), None) or {}
        return _values(row, ORGANIZATION_COLUMNS)

    return _cached(f"organization:{settings.M365.dataverse_url}", load)


def _exchange_online_profile(ctx: RunContext) -> dict[str, Any]:
    policy = ctx.policy
    wanted = policy.exchange_online_profile_id or policy.exchange_online_profile_name
    key = f"profile:{settings.M365.dataverse_url}:{wanted}"

    def load() -> dict[str, Any]:
        columns = ["emailserverprofileid", "name", "statecode"]
        if policy.exchange_online_profile_id:
            profile = _read(ctx.dataverse, "emailserverprofiles", policy.exchange_online_profile_id, columns)
            if profile is None:
                raise StepFailed(
                    "The Exchange Online server profile set in the portal's policy "
                    f"({policy.exchange_online_profile_id}) does not exist in Dynamics 365. Correct the policy, "
                    "then retry the mailbox.",
                    code="profile_missing",
                )
            return {"id": profile["emailserverprofileid"], "name": profile.get("name")}
        name = policy.exchange_online_profile_name
        profiles = list(
            ctx.dataverse.iter_rows(
                "emailserverprofiles", select=columns, filter=f"name eq {odata_string(name)} and statecode eq 0"
            )
        )
        if len(profiles) != 1:
            found = "No active email server profile is" if not profiles else f"{len(profiles)} active profiles are"
            raise StepFailed(
                f"{found} named “{name}” in Dynamics 365. Set the Exchange Online profile's id or exact name in "
                "the portal's policy, then retry the mailbox.",
                code="profile_missing" if not profiles else "profile_ambiguous",
            )
        return {"id": profiles[0]["emailserverprofileid"], "name": profiles[0].get("name")}

    return _cached(key, load)


def _patch(ctx: RunContext, entity_set: str, key: str, changes: dict[str, Any], *, etag: str | None) -> dict[str, Any]:
    """One conditional write, after renewing the lease; returns the row as written (with its new ETag)."""
    ctx.before_write()
    ctx.memo.clear()  # whatever happens next, what this job remembers may be out of date
    written = ctx.dataverse.update(entity_set, key, changes, etag=etag, return_representation=True)
    if entity_set == "mailboxes" and written and written.get("@odata.etag"):
        ctx.memo["mailbox"] = written
    return written or {}


# --- the migration steps ------------------------------------------------------------------------


def _snapshot(ctx: RunContext) -> Done:
    entry = ctx.entry
    if entry.snapshot:
        # A retried mailbox keeps the values from before the first attempt changed anything.
        return Done({"kept": True, "taken_at": entry.snapshot.get("taken_at")}, skipped=True)
    mailbox = _read_mailbox(ctx)
    ref = _owner_ref(ctx, mailbox)
    owner = _read(ctx.dataverse, ref[0], ref[1], ref[2]) if ref else None
    usersettings = None
    if ref and ref[0] == "systemusers":
        usersettings = _read(ctx.dataverse, USERSETTINGS_SET, ref[1], USERSETTINGS_COLUMNS)
    snapshot = {
        "taken_at": timezone.now().isoformat(),
        "mailbox": _values(mailbox, MAILBOX_COLUMNS),
        "owner": None if ref is None else {"entity_set": ref[0], "id": ref[1], **_values(owner, ref[2])},
        "usersettings": None if usersettings is None else _values(usersettings, USERSETTINGS_COLUMNS),
        "organization": _organization(ctx),
        "inventory": {"profile_id": str(ctx.mailbox.profile_id or ""), "profile_name": ctx.mailbox.profile_name},
    }
    etags = {"mailbox": _etag(mailbox), "owner": _etag(owner), "usersettings": _etag(usersettings)}
    ctx.found = {"mailbox": snapshot["mailbox"]}
    with transaction.atomic():
        _hold_entry(ctx.entry_id, ctx.owner, state=ctx.working_state)
        WaveMailbox.objects.filter(pk=ctx.entry_id).update(snapshot=snapshot, snapshot_etags=etags)
    entry.snapshot, entry.snapshot_etags = snapshot, etags
    return Done({"mailbox": snapshot["mailbox"], "etags": etags})


def _wanted_settings(ctx: RunContext, profile_id: str) -> dict[str, Any]:
    wanted: dict[str, Any] = {
        "_emailserverprofile_value": profile_id,
        "incomingemaildeliverymethod": SERVER_SIDE_SYNC,
        "outgoingemaildeliverymethod": SERVER_SIDE_SYNC,
    }
    if ctx.is_user and ctx.entry.wave.migrate_act_for_users:
        wanted["actdeliverymethod"] = ACT_SERVER_SIDE_SYNC
    return wanted


def _bind_profile(ctx: RunContext) -> Done:
    profile = _exchange_online_profile(ctx)
    # As this job's snapshot read it moments ago, if it did: the write is conditional on that ETag.
    mailbox = _read_mailbox(ctx, fresh=False)
    wanted = _wanted_settings(ctx, profile["id"])
    current = _values(mailbox, wanted)
    ctx.found = {"mailbox": current, "etag": _etag(mailbox)}
    changes = {column: value for column, value in wanted.items() if current[column] != value}
    if not changes:
        return Done({"changed": False, **wanted}, skipped=not ctx.step.attempts > 1)
    payload = {column: value for column, value in changes.items() if not column.startswith("_")}
    if "_emailserverprofile_value" in changes:
        payload["emailserverprofile@odata.bind"] = bind("emailserverprofiles", profile["id"])
    written = _patch(ctx, "mailboxes", str(ctx.mailbox.dataverse_id), payload, etag=_etag(mailbox))
    ctx.changed(
        "migration.mailbox_settings_changed",
        before={"mailboxid": str(ctx.mailbox.dataverse_id), **{column: current[column] for column in changes}},
        after={"mailboxid": str(ctx.mailbox.dataverse_id), **changes, "profile_name": profile["name"]},
    )
    return Done({"changed": sorted(changes), **wanted, "etag": _etag(written)})


def _approval_required(ctx: RunContext) -> bool:
    organization = _organization(ctx)
    setting = "requireapprovalforqueueemail" if ctx.entry.is_queue else "requireapprovalforuseremail"
    return organization.get(setting) is not False


def _approve_address(ctx: RunContext) -> Done:
    mailbox = _read_mailbox(ctx, fresh=False)
    ctx.found = {"mailbox_emailrouteraccessapproval": mailbox.get("emailrouteraccessapproval")}
    if mailbox.get("emailrouteraccessapproval") == APPROVED:
        return Done({"approved": [], "emailrouteraccessapproval": APPROVED}, skipped=ctx.step.attempts <= 1)
    if not _approval_required(ctx):
        return Done({"approved": [], "required": False}, skipped=True)
    approved: list[str] = []
    ref = _owner_ref(ctx, mailbox)
    try:
        if ref is not None:
            owner = _read(ctx.dataverse, ref[0], ref[1], ref[2])
            ctx.found["owner_emailrouteraccessapproval"] = (owner or {}).get("emailrouteraccessapproval")
            if owner is not None and owner.get("emailrouteraccessapproval") != APPROVED:
                before = owner.get("emailrouteraccessapproval")
                _patch(ctx, ref[0], ref[1], {"emailrouteraccessapproval": APPROVED}, etag=_etag(owner))
                ctx.changed(
                    "migration.address_approved",
                    before={ref[0]: ref[1], "emailrouteraccessapproval": before},
                    after={ref[0]: ref[1], "emailrouteraccessapproval": APPROVED},
                )
                approved.append("queue" if ref[0] == "queues" else "user")
                # Approving the owner carries over to its mailbox; read it again before deciding.
                mailbox = _read_mailbox(ctx)
        if mailbox.get("emailrouteraccessapproval") != APPROVED:
            before = mailbox.get("emailrouteraccessapproval")
            _patch(
                ctx,
                "mailboxes",
                str(ctx.mailbox.dataverse_id),
                {"emailrouteraccessapproval": APPROVED},
                etag=_etag(mailbox),
            )
            ctx.changed(
                "migration.address_approved",
                before={"mailboxid": str(ctx.mailbox.dataverse_id), "emailrouteraccessapproval": before},
                after={"mailboxid": str(ctx.mailbox.dataverse_id), "emailrouteraccessapproval": APPROVED},
            )
            approved.append("mailbox")
    except AccessDeniedError as error:
        raise StepFailed(
            APPROVAL_REFUSED.format(address=ctx.address, detail=error.message, name=ctx.mailbox.name or ctx.address),
            code=error.code or "access_denied",
        ) from error
    return Done({"approved": approved, "emailrouteraccessapproval": APPROVED})


def _blackout_now(now: dt.datetime) -> BlackoutWindow | None:
    return BlackoutWindow.objects.filter(starts_at__lte=now, ends_at__gt=now).order_by("-ends_at").first()


def _schedule_test(ctx: RunContext) -> Done | Wait:
    now = timezone.now()
    blackout = _blackout_now(now)
    if blackout is not None:
        return Wait(
            (blackout.ends_at - now).total_seconds() + 1,
            f"No Test & Enable starts during the blackout “{blackout.reason}”",
        )
    mailbox = _read_mailbox(ctx, fresh=False)
    ctx.found = {
        "testemailconfigurationscheduled": mailbox.get("testemailconfigurationscheduled"),
        "etag": _etag(mailbox),
    }
    intent = (ctx.step.result or {}).get("intent") or {}
    if mailbox.get("testemailconfigurationscheduled"):
        return Done({"action": "already_scheduled"})
    if intent.get("etag") and intent["etag"] != _etag(mailbox):
        # The mailbox changed since this step decided to schedule the test while it held the run: the
        # schedule was made (its answer was lost) and the platform may even have finished the test.
        return Done({"action": "scheduled_before", "at": intent.get("at")})
    ctx.save_intent({"etag": _etag(mailbox), "at": now.isoformat()})
    try:
        _patch(
            ctx,
            "mailboxes",
            str(ctx.mailbox.dataverse_id),
            {"testemailconfigurationscheduled": True},
            etag=_etag(mailbox),
        )
    except ConcurrencyError:
        ctx.save_intent({})  # refused: nothing was scheduled, so the next attempt decides afresh
        raise
    WaveMailbox.objects.filter(pk=ctx.entry_id).update(test_enable_at=timezone.now())
    ctx.changed(
        "migration.test_enable_scheduled",
        before={"mailboxid": str(ctx.mailbox.dataverse_id), "testemailconfigurationscheduled": False},
        after={"mailboxid": str(ctx.mailbox.dataverse_id), "testemailconfigurationscheduled": True},
    )
    return Done({"action": "scheduled", "at": now.isoformat()})


def _tested(mailbox: dict[str, Any]) -> list[str]:
    columns = []
    if mailbox.get("incomingemaildeliverymethod") == SERVER_SIDE_SYNC:
        columns.append("incomingemailstatus")
    if mailbox.get("outgoingemaildeliverymethod") == SERVER_SIDE_SYNC:
        columns.append("outgoingemailstatus")
    if mailbox.get("enabledforact") and mailbox.get("actdeliverymethod") == ACT_SERVER_SIDE_SYNC:
        columns.append("actstatus")
    return columns


def _alerts(ctx: RunContext, *, limit: int = 3) -> list[dict[str, Any]]:
    rows = ctx.dataverse.iter_rows(
        "tracelogs",
        select=["text", "tracecode", "level", "errordetails", "modifiedon"],
        filter=f"_regardingobjectid_value eq {row_id(str(ctx.mailbox.dataverse_id))} and level eq 3",
        orderby="modifiedon desc",
        page_size=limit,
    )
    return [
        {key: row.get(key) for key in ("text", "tracecode", "level", "errordetails", "modifiedon")}
        for row in itertools.islice(rows, limit)
    ]


def _status_words(mailbox: dict[str, Any]) -> str:
    words = [
        f"incoming email: {_STATUS_WORDS.get(mailbox.get('incomingemailstatus'), 'unknown')}",
        f"outgoing email: {_STATUS_WORDS.get(mailbox.get('outgoingemailstatus'), 'unknown')}",
    ]
    if "actstatus" in _tested(mailbox):
        words.append(f"appointments, contacts and tasks: {_STATUS_WORDS.get(mailbox.get('actstatus'), 'unknown')}")
    return ", ".join(words)


def _await_test(ctx: RunContext) -> Done | Wait:
    policy = ctx.policy
    seen = ctx.memo.get("mailbox")
    if seen is not None and seen.get("testemailconfigurationscheduled"):
        # This job saw the test still scheduled moments ago (it usually scheduled it itself): it cannot
        # have finished yet, so reading the mailbox again now would only cost a request.
        ctx.found = {"mailbox": _values(seen, MAILBOX_COLUMNS)}
        return Wait(policy.test_enable_poll_seconds, "Test & Enable has not finished yet")
    mailbox = _read_mailbox(ctx)
    ctx.found = {"mailbox": _values(mailbox, MAILBOX_COLUMNS)}
    if not mailbox.get("testemailconfigurationscheduled"):
        statuses = [mailbox.get(column) for column in _tested(mailbox)]
        if FAILURE in statuses:
            alerts = _alerts(ctx)
            ctx.found["alerts"] = alerts
            texts = " ".join(f"Alert: {alert['text']}" for alert in alerts if alert.get("text"))
            raise StepFailed(
                f"Test & Enable failed for {ctx.address} ({_status_words(mailbox)}). "
                + (texts or "Dynamics 365 recorded no alert for the mailbox.")
                + " Fix the cause, then retry the mailbox to test it again.",
                code="test_enable_failed",
            )
        if statuses and all(status == SUCCESS for status in statuses):
            profile = _exchange_online_profile(ctx)
            return Done(
                {
                    "mailbox": _values(mailbox, MAILBOX_COLUMNS),
                    "etag": _etag(mailbox),
                    "profile_name": profile["name"]
                    if profile["id"] == mailbox.get("_emailserverprofile_value")
                    else None,
                }
            )
    waited = timezone.now() - (ctx.step.started_at or timezone.now())
    if waited > dt.timedelta(minutes=policy.test_enable_timeout_minutes):
        raise StepFailed(
            f"Test & Enable for {ctx.address} did not finish within {policy.test_enable_timeout_minutes} minutes "
            f"({_status_words(mailbox)}). Check the mailbox in Dynamics 365, then retry the mailbox.",
            code="test_enable_timeout",
        )
    return Wait(policy.test_enable_poll_seconds, "Test & Enable has not finished yet")


# --- rollback -----------------------------------------------------------------------------------


def _differences(expected: dict[str, Any], found: dict[str, Any], columns: Iterable[str]) -> list[dict[str, Any]]:
    return [
        {
            "field": column,
            "label": LABELS.get(column, column),
            "expected": expected.get(column),
            "found": found.get(column),
        }
        for column in columns
        if expected.get(column) != found.get(column)
    ]


def _conflict(ctx: RunContext, record: str, differences: list[dict[str, Any]]) -> StepFailed:
    what = ", ".join(
        f"{item['label']} is {item['found']!r} (the migration left {item['expected']!r})" for item in differences
    )
    message = (
        f"Not rolled back: {RECORD_NAMES[record]} of {ctx.address} was changed in Dynamics 365 after the migration"
        + (f" ({what})" if what else "")
        + ". Nothing was overwritten. Check the mailbox in Dynamics 365 and restore it by hand if needed."
    )
    return StepFailed(
        message,
        code="rollback_conflict",
        report={
            "record": record,
            "differences": differences,
            "message": message,
            "checked_at": timezone.now().isoformat(),
        },
    )


def _rollback(ctx: RunContext) -> Done:
    snapshot = ctx.entry.snapshot or {}
    recorded = (ctx.entry.snapshot_etags or {}).get("after") or {}
    before_mailbox = snapshot.get("mailbox") or {}
    key = str(ctx.mailbox.dataverse_id)
    mailbox = _read_mailbox(ctx)
    owner_snapshot = snapshot.get("owner")
    owner = None
    if owner_snapshot:
        columns = QUEUE_COLUMNS if owner_snapshot["entity_set"] == "queues" else USER_COLUMNS
        owner = _read(ctx.dataverse, owner_snapshot["entity_set"], owner_snapshot["id"], columns)
    settings_snapshot = snapshot.get("usersettings")
    usersettings = None
    if settings_snapshot:
        usersettings = _read(ctx.dataverse, USERSETTINGS_SET, settings_snapshot["systemuserid"], USERSETTINGS_COLUMNS)
    ctx.found = {
        "mailbox": _values(mailbox, MAILBOX_COLUMNS),
        "owner": _values(owner, OWNER_RESTORED) if owner else None,
        "usersettings": _values(usersettings, USERSETTINGS_RESTORED) if usersettings else None,
    }

    restore = {
        column: before_mailbox.get(column)
        for column in MAILBOX_RESTORED
        if column in before_mailbox and mailbox.get(column) != before_mailbox.get(column)
    }
    if restore.get("testemailconfigurationscheduled") is True:
        restore.pop("testemailconfigurationscheduled")  # restoring it would start a test
    profile_back = mailbox.get("_emailserverprofile_value") != before_mailbox.get("_emailserverprofile_value")
    settings_back = (
        {
            column: settings_snapshot.get(column)
            for column in USERSETTINGS_RESTORED
            if usersettings is not None and usersettings.get(column) != settings_snapshot.get(column)
        }
        if settings_snapshot
        else {}
    )

    # Read-only checks first, so a conflict leaves every record as it is.
    after_settings = recorded.get("usersettings") or {}
    if settings_back and after_settings.get("etag") and after_settings["etag"] != _etag(usersettings):
        raise _conflict(
            ctx,
            "usersettings",
            _differences(after_settings.get("values") or {}, usersettings or {}, USERSETTINGS_RESTORED),
        )
    after_owner = recorded.get("owner") or {}
    after_mailbox = recorded.get("mailbox") or {}
    # A changed mailbox answers the conditional write below with 412 and is reported as it is; an owner
    # changed on its own would be overwritten by that write (Dataverse carries the values over), so check it.
    mailbox_as_left = not after_mailbox.get("etag") or after_mailbox["etag"] == _etag(mailbox)
    if (
        (restore or profile_back)
        and mailbox_as_left
        and owner is not None
        and after_owner.get("etag")
        and after_owner["etag"] != _etag(owner)
    ):
        differences = _differences(after_owner.get("values") or {}, owner, OWNER_RESTORED)
        if differences:
            raise _conflict(ctx, "owner", differences)

    done: dict[str, Any] = {"mailbox": {}, "owner": {}, "usersettings": {}}
    if restore or profile_back:
        payload = dict(restore)
        if profile_back:
            profile_id = before_mailbox.get("_emailserverprofile_value")
            payload["emailserverprofile@odata.bind"] = bind("emailserverprofiles", profile_id) if profile_id else None
        try:
            _patch(ctx, "mailboxes", key, payload, etag=after_mailbox.get("etag") or _etag(mailbox))
        except ConcurrencyError as error:
            current = _read_mailbox(ctx)
            columns = (*MAILBOX_RESTORED, "_emailserverprofile_value")
            raise _conflict(
                ctx, "mailbox", _differences(after_mailbox.get("values") or {}, current, columns)
            ) from error
        done["mailbox"] = {
            **restore,
            **({"_emailserverprofile_value": before_mailbox.get("_emailserverprofile_value")} if profile_back else {}),
        }
        ctx.changed(
            "migration.mailbox_restored",
            before={"mailboxid": key, **{column: mailbox.get(column) for column in done["mailbox"]}},
            after={"mailboxid": key, **done["mailbox"]},
        )
    if owner_snapshot:
        # Dataverse carries the mailbox's approval and delivery methods over to its owner; restore what is left.
        columns = QUEUE_COLUMNS if owner_snapshot["entity_set"] == "queues" else USER_COLUMNS
        owner = _read(ctx.dataverse, owner_snapshot["entity_set"], owner_snapshot["id"], columns)
        owner_back = {
            column: owner_snapshot.get(column)
            for column in OWNER_RESTORED
            if owner is not None and owner.get(column) != owner_snapshot.get(column)
        }
        if owner_back:
            _patch(ctx, owner_snapshot["entity_set"], owner_snapshot["id"], owner_back, etag=_etag(owner))
            done["owner"] = owner_back
            ctx.changed(
                "migration.owner_restored",
                before={owner_snapshot["entity_set"]: owner_snapshot["id"], **{c: owner.get(c) for c in owner_back}},
                after={owner_snapshot["entity_set"]: owner_snapshot["id"], **owner_back},
            )
    if settings_back:
        etag = after_settings.get("etag") or _etag(usersettings)
        try:
            _patch(ctx, USERSETTINGS_SET, settings_snapshot["systemuserid"], settings_back, etag=etag)
        except ConcurrencyError as error:
            current = _read(ctx.dataverse, USERSETTINGS_SET, settings_snapshot["systemuserid"], USERSETTINGS_COLUMNS)
            raise _conflict(
                ctx,
                "usersettings",
                _differences(after_settings.get("values") or {}, current or {}, USERSETTINGS_RESTORED),
            ) from error
        done["usersettings"] = settings_back
        ctx.changed(
            "migration.user_options_restored",
            before={
                "systemuserid": settings_snapshot["systemuserid"],
                **{c: usersettings.get(c) for c in settings_back},
            },
            after={"systemuserid": settings_snapshot["systemuserid"], **settings_back},
        )
    return Done({"restored": done, "snapshot_taken_at": snapshot.get("taken_at")})


@dataclass(frozen=True)
class StepSpec:
    name: str
    run: Callable[[RunContext], Done | Wait]


SPECS: dict[str, StepSpec] = {
    spec.name: spec
    for spec in (
        StepSpec("snapshot", _snapshot),
        StepSpec("bind_profile", _bind_profile),
        StepSpec("approve_address", _approve_address),
        StepSpec("schedule_test", _schedule_test),
        StepSpec("await_test", _await_test),
        StepSpec(ROLLBACK_STEP, _rollback),
    )
}


def step_title(name: str) -> str:
    return STEP_TITLES.get(name, name.replace("_", " ").capitalize())


# --- queueing -----------------------------------------------------------------------------------


_queues: dict[tuple[int, str], Any] = {}


def _queue():
    """The default queue, one per process and Redis configuration.

    django_rq builds a new Redis client, with a connection of its own, on every call; a run asks
    for the queue several times (the shared cache, queueing jobs, the progress marker).
    """
    key = (os.getpid(), repr(settings.RQ_QUEUES.get("default")))
    queue = _queues.get(key)
    if queue is None:
        queue = _queues[key] = django_rq.get_queue("default")
    return queue


def _on_commit_enqueue(func: Callable[..., Any], *args: Any, seconds: float = 0, job_timeout: int) -> None:
    correlation_id = correlation.current() or correlation.new_id()

    def _enqueue() -> None:
        try:
            if seconds > 0:
                _queue().enqueue_in(
                    dt.timedelta(seconds=seconds), func, *args, job_timeout=job_timeout, correlation_id=correlation_id
                )
            else:
                _queue().enqueue(func, *args, job_timeout=job_timeout, correlation_id=correlation_id)
        except Exception:  # Redis refusing: the wave's dispatcher and the watchdog queue the run again
            logger.exception("could not queue %s%s", getattr(func, "__name__", func), args)

    transaction.on_commit(_enqueue)


def _queue_run(entry_id: int, *, seconds: float = 0) -> None:
    from migration.jobs import migration_run_job

    _on_commit_enqueue(migration_run_job, entry_id, seconds=seconds, job_timeout=RUN_JOB_TIMEOUT)


def _queue_rollback(entry_id: int, *, seconds: float = 0) -> None:
    from migration.jobs import migration_rollback_job

    _on_commit_enqueue(migration_rollback_job, entry_id, seconds=seconds, job_timeout=RUN_JOB_TIMEOUT)


def _schedule_watchdog(entry_id: int) -> None:
    from migration.jobs import migration_watchdog_job

    _on_commit_enqueue(
        migration_watchdog_job,
        entry_id,
        seconds=LEASE_SECONDS + WATCHDOG_MARGIN_SECONDS,
        job_timeout=WATCHDOG_JOB_TIMEOUT,
    )


def dispatch_job_id(wave_id: int) -> str:
    return f"migration-wave-dispatch-{wave_id}"


def _dispatch_pending_key(wave_id: int) -> str:
    return f"portal:migration:wave-dispatch-queued:{wave_id}"


def _queue_dispatch(wave_id: int) -> None:
    """Ask for a dispatch soon, once the transaction commits; one that is queued and not started yet suffices."""
    from migration.jobs import wave_dispatch_job

    correlation_id = correlation.current() or correlation.new_id()

    def _enqueue() -> None:
        try:
            queue = _queue()
            if not queue.connection.set(_dispatch_pending_key(wave_id), "1", nx=True, ex=120):
                return
            queue.enqueue(wave_dispatch_job, wave_id, job_timeout=DISPATCH_JOB_TIMEOUT, correlation_id=correlation_id)
        except Exception:
            logger.exception("could not queue the dispatch of wave %s", wave_id)

    transaction.on_commit(_enqueue)


def _schedule_dispatch(wave_id: int, at: dt.datetime) -> None:
    """Schedule the wave's next dispatch under its fixed job id, so there is only ever one next one.

    Dispatches run one at a time (they lock the wave), so the latest one knows best when to look again.
    """
    from migration.jobs import wave_dispatch_job

    correlation_id = correlation.current() or correlation.new_id()

    def _enqueue() -> None:
        try:
            queue = _queue()
            job_id = dispatch_job_id(wave_id)
            queue.enqueue_at(
                at,
                wave_dispatch_job,
                wave_id,
                job_id=job_id,
                job_timeout=DISPATCH_JOB_TIMEOUT,
                result_ttl=-1,
                correlation_id=correlation_id,
            )
            # The dispatch running now may be this very job: keep its record alive for its successor.
            queue.connection.persist(Job.key_for(job_id))
        except Exception:
            logger.exception("could not schedule the next dispatch of wave %s", wave_id)

    transaction.on_commit(_enqueue)


# --- dispatching a wave -------------------------------------------------------------------------


def _cap_standing(wave: Wave, now: dt.datetime) -> tuple[int, dt.datetime | None]:
    """(room, when more room returns) for Test & Enables, counted over every wave of the portal."""
    window = dt.timedelta(hours=wave.cap_window_hours)
    recent = WaveMailbox.objects.filter(test_enable_at__gt=now - window)
    used = recent.count()
    room = max(0, wave.test_enable_cap - used)
    if room > 0:
        return room, None
    oldest = recent.order_by("test_enable_at").values_list("test_enable_at", flat=True).first()
    return 0, (oldest + window if oldest else now + window)


def _ensure_steps(entries: Iterable[WaveMailbox]) -> None:
    MigrationStep.objects.bulk_create(
        [
            MigrationStep(
                entry=entry,
                order=order,
                name=name,
                idempotency_key=f"wave{entry.wave_id}:entry{entry.pk}:{name}",
            )
            for entry in entries
            for order, name in enumerate(STEP_NAMES, start=1)
        ],
        ignore_conflicts=True,
    )


def _sweep(wave: Wave, now: dt.datetime) -> int:
    """Queue again the runs of this wave whose worker died or whose job was lost (duplicates claim nothing)."""
    entries = WaveMailbox.objects.filter(wave=wave)
    lost = Q(state__in=[WaveMailboxState.RUNNING, WaveMailboxState.ROLLING_BACK], lease_expires_at__lt=now)
    overdue = Q(state=WaveMailboxState.WAITING, not_before__lt=now - dt.timedelta(seconds=OVERDUE_SECONDS))
    stalled = Q(state=WaveMailboxState.SCHEDULED, updated_at__lt=now - dt.timedelta(seconds=LEASE_SECONDS * 3))
    backing_off = Q(
        state=WaveMailboxState.ROLLING_BACK,
        lease_owner="",
        not_before__lt=now - dt.timedelta(seconds=OVERDUE_SECONDS),
    )
    found = list(entries.filter(lost | overdue | stalled | backing_off).values_list("pk", "state"))
    for entry_id, state in found:
        if state == WaveMailboxState.ROLLING_BACK:
            _queue_rollback(entry_id)
        else:
            _queue_run(entry_id)
    if found:
        # Once queued again, an entry is not queued again before another full wait.
        WaveMailbox.objects.filter(pk__in=[entry_id for entry_id, _ in found]).update(updated_at=now)
    return len(found)


def wave_dispatch(*, wave_id: int) -> int:
    """Queue the runs of a running wave's mailboxes that may start now (within the Test & Enable cap and
    outside blackout windows); schedule the next dispatch for the rest. Returns how many were queued.
    Safe to call any number of times: a mailbox already claimed or finished is not queued again."""
    try:
        _queue().connection.delete(_dispatch_pending_key(wave_id))
    except Exception:
        logger.exception("could not clear the pending dispatch marker of wave %s", wave_id)
    now = timezone.now()
    completed = False
    with transaction.atomic():
        wave = Wave.objects.select_for_update().filter(pk=wave_id).first()
        if wave is None or wave.status != WaveStatus.RUNNING:
            return 0
        entries = WaveMailbox.objects.filter(wave=wave)
        unfinished = entries.exclude(state__in=FINISHED_STATES)
        if not unfinished.exists():
            _complete_wave(wave, now)
            completed = True
        else:
            recovered = _sweep(wave, now)
            started = _start_entries(wave, now)
            in_flight = entries.filter(
                state__in=[
                    WaveMailboxState.SCHEDULED,
                    WaveMailboxState.RUNNING,
                    WaveMailboxState.WAITING,
                    WaveMailboxState.ROLLING_BACK,
                ]
            ).exists()
            waiting_pending = entries.filter(state=WaveMailboxState.PENDING, active=True).exists()
            next_at = _next_dispatch_at(wave, now, in_flight=in_flight, pending=waiting_pending)
            if next_at is not None:
                _schedule_dispatch(wave.pk, next_at)
            if recovered:
                logger.info("wave %s: queued %s runs again whose worker or job was lost", wave.pk, recovered)
    if completed:
        transaction.on_commit(_record_progress)
        return 0
    return started


def _start_entries(wave: Wave, now: dt.datetime) -> int:
    blackout = _blackout_now(now)
    if blackout is not None:
        return 0
    working = WaveMailbox.objects.filter(
        wave=wave, state__in=[WaveMailboxState.SCHEDULED, WaveMailboxState.RUNNING]
    ).count()
    slots = CONCURRENT_RUNS_PER_WAVE - working
    room, _ = _cap_standing(wave, now)
    take = min(slots, room)
    if take <= 0:
        return 0
    chosen = list(
        WaveMailbox.objects.select_for_update(skip_locked=True)
        .filter(wave=wave, state=WaveMailboxState.PENDING, active=True)
        .filter(Q(not_before__isnull=True) | Q(not_before__lte=now))
        .order_by("-is_queue", "position", "priority", "id")[:take]
    )
    if not chosen:
        return 0
    ids = [entry.pk for entry in chosen]
    # The reservation against the cap is made now; the run moves it to the moment it schedules the test.
    WaveMailbox.objects.filter(pk__in=ids, state=WaveMailboxState.PENDING).update(
        state=WaveMailboxState.SCHEDULED, test_enable_at=now, last_error="", error_code=""
    )
    _ensure_steps(chosen)
    for entry_id in ids:
        _queue_run(entry_id)
    return len(ids)


def _next_dispatch_at(wave: Wave, now: dt.datetime, *, in_flight: bool, pending: bool) -> dt.datetime | None:
    candidates: list[dt.datetime] = []
    if in_flight:
        candidates.append(now + dt.timedelta(seconds=SWEEP_SECONDS))
    if pending:
        blackout = _blackout_now(now)
        if blackout is not None:
            candidates.append(blackout.ends_at + dt.timedelta(seconds=1))
        room, back_at = _cap_standing(wave, now)
        if room == 0 and back_at is not None:
            candidates.append(back_at + dt.timedelta(seconds=1))
        later = (
            WaveMailbox.objects.filter(wave=wave, state=WaveMailboxState.PENDING, active=True, not_before__gt=now)
            .order_by("not_before")
            .values_list("not_before", flat=True)
            .first()
        )
        if later is not None:
            candidates.append(later)
        if not in_flight and room > 0 and blackout is None:
            candidates.append(now + dt.timedelta(seconds=SWEEP_SECONDS))
    return min(candidates) if candidates else None


def _complete_wave(wave: Wave, now: dt.datetime) -> None:
    counts: dict[str, int] = {}
    for state in WaveMailbox.objects.filter(wave=wave).values_list("state", flat=True):
        counts[state] = counts.get(state, 0) + 1
    wave.status = WaveStatus.COMPLETED
    wave.finished_at = now
    wave.save(update_fields=["status", "finished_at"])
    audit_record(
        actor=None,
        action="wave.completed",
        object_type="wave",
        object_id=wave.pk,
        before={"status": WaveStatus.RUNNING},
        after={"status": wave.status, "mailboxes": counts},
    )


# --- the run job --------------------------------------------------------------------------------


def _lease_fields(owner: str, now: dt.datetime, state: str) -> dict[str, Any]:
    return {
        "state": state,
        "lease_owner": owner,
        "lease_expires_at": now + dt.timedelta(seconds=LEASE_SECONDS),
        "not_before": None,
        "attempts": F("attempts") + 1,
        "started_at": Coalesce("started_at", Value(now, output_field=DateTimeField())),
        "updated_at": now,
    }


def _claim_run(entry_id: int, owner: str) -> str | None:
    """Take the run if it was dispatched, is due, or was abandoned (expired lease); None when there is nothing."""
    now = timezone.now()
    fields = _lease_fields(owner, now, WaveMailboxState.RUNNING)
    entries = WaveMailbox.objects.filter(pk=entry_id)
    due = Q(not_before__isnull=True) | Q(not_before__lte=now + dt.timedelta(seconds=CLAIM_TOLERANCE_SECONDS))
    with transaction.atomic():
        if entries.filter(state=WaveMailboxState.SCHEDULED, wave__status=WaveStatus.RUNNING).update(**fields):
            kind = "claimed"
        elif entries.filter(due, state=WaveMailboxState.WAITING).update(**fields):
            kind = "due"
        elif entries.filter(state=WaveMailboxState.RUNNING, lease_expires_at__lt=now).update(**fields):
            kind = "taken_over"
        else:
            return None
        if kind == "taken_over":
            mailbox_id = WaveMailbox.objects.values_list("mailbox_id", flat=True).get(pk=entry_id)
            audit_record(
                actor=None,
                action="migration.run_taken_over",
                object_type="inventory_mailbox",
                object_id=mailbox_id,
                after={"entry": entry_id, "worker": owner},
                reason="the previous worker's lease had expired",
            )
        # No watchdog job per claim: while the wave runs, its dispatcher looks every SWEEP_SECONDS for
        # runs whose lease expired, which costs one job per wave instead of one per step.
    return kind


def _claim_rollback(entry_id: int, owner: str) -> str | None:
    now = timezone.now()
    fields = _lease_fields(owner, now, WaveMailboxState.ROLLING_BACK)
    free = Q(lease_owner="") | Q(lease_expires_at__lt=now)
    due = Q(not_before__isnull=True) | Q(not_before__lte=now + dt.timedelta(seconds=CLAIM_TOLERANCE_SECONDS))
    with transaction.atomic():
        if not WaveMailbox.objects.filter(free, due, pk=entry_id, state=WaveMailboxState.ROLLING_BACK).update(**fields):
            return None
        _schedule_watchdog(entry_id)
    return "claimed"


def _release_stopped(entry_id: int) -> None:
    """A dispatched mailbox whose wave was paused before it started goes back to waiting its turn."""
    with transaction.atomic():
        WaveMailbox.objects.filter(
            pk=entry_id, state=WaveMailboxState.SCHEDULED, wave__status=WaveStatus.PAUSED
        ).update(state=WaveMailboxState.PENDING, test_enable_at=None)


def _heartbeat(entry_id: int, owner: str, state: str) -> LeaseHeartbeat:
    """Renews the entry's lease while this worker holds it in ``state``."""
    held = WaveMailbox.objects.filter(pk=entry_id, state=state, lease_owner=owner)
    return LeaseHeartbeat(
        held, lease_seconds=LEASE_SECONDS, every_seconds=HEARTBEAT_SECONDS, name=f"migration-lease-{entry_id}"
    )


def migration_run(*, entry_id: int) -> None:
    """The run job's work: claim the mailbox, then do its steps in order until done, waiting or failed.

    A duplicate job finds nothing to claim and does nothing.
    """
    owner = new_lease_owner()
    if _claim_run(entry_id, owner) is None:
        _release_stopped(entry_id)
        logger.info("wave mailbox %s: nothing to claim (held, waiting, finished or paused)", entry_id)
        return
    memo: dict[str, dict[str, Any]] = {}
    policy = policy_get()
    clients = JobClients()
    try:
        with _heartbeat(entry_id, owner, WaveMailboxState.RUNNING):
            # Read once per job: while this worker holds the lease, only this job changes them.
            entry = WaveMailbox.objects.select_related("mailbox", "wave").get(pk=entry_id)
            steps = list(MigrationStep.objects.filter(entry_id=entry_id, order__lt=ROLLBACK_ORDER).order_by("order"))
            for step in steps:
                if step.status in DONE_STEP_STATUSES:
                    continue
                if step.name not in UNDER_WAY and _stop_for_wave(entry_id, owner):
                    return
                if not _attempt(entry, step, owner, rollback=False, memo=memo, policy=policy, clients=clients):
                    return
            awaited = next((step for step in steps if step.name == "await_test"), None)
            try:
                _finish_migrated(entry, awaited, owner, memo, policy=policy, clients=clients)
            except M365Error as error:
                _finish_later(entry_id, owner, error)
    except LeaseLost:
        logger.warning("wave mailbox %s was taken over by another worker; stopping", entry_id)


def migration_rollback_run(*, entry_id: int) -> None:
    """The rollback job's work: claim the mailbox being rolled back and restore its snapshot."""
    owner = new_lease_owner()
    if _claim_rollback(entry_id, owner) is None:
        logger.info("wave mailbox %s: no rollback to claim", entry_id)
        return
    try:
        with _heartbeat(entry_id, owner, WaveMailboxState.ROLLING_BACK):
            step = MigrationStep.objects.get(entry_id=entry_id, order=ROLLBACK_ORDER)
            if step.status in DONE_STEP_STATUSES:
                _finish_rolled_back(entry_id, owner)
                return
            entry = WaveMailbox.objects.select_related("mailbox", "wave").get(pk=entry_id)
            if _attempt(entry, step, owner, rollback=True, memo={}, policy=policy_get(), clients=JobClients()):
                _finish_rolled_back(entry_id, owner)
    except LeaseLost:
        logger.warning("the rollback of wave mailbox %s was taken over by another worker; stopping", entry_id)


def _lock_entry(ctx_or_id: RunContext | int, owner: str | None = None, *, state: str | None = None) -> WaveMailbox:
    if isinstance(ctx_or_id, RunContext):
        entry_id, owner, state = ctx_or_id.entry_id, ctx_or_id.owner, ctx_or_id.working_state
    else:
        entry_id = ctx_or_id
    entry = WaveMailbox.objects.select_for_update().get(pk=entry_id)
    if entry.state != state or entry.lease_owner != owner:
        raise LeaseLost(f"wave mailbox {entry_id} is no longer held by {owner}")
    return entry


def _hold_entry(entry_id: int, owner: str, *, state: str) -> None:
    """As :func:`_lock_entry` for a caller that writes with ``update()``: the lock and the check, not the row."""
    held = WaveMailbox.objects.select_for_update().filter(pk=entry_id).values_list("state", "lease_owner").first()
    if held != (state, owner):
        raise LeaseLost(f"wave mailbox {entry_id} is no longer held by {owner}")


def _stop_for_wave(entry_id: int, owner: str) -> bool:
    """Between steps, before Test & Enable is under way: a paused wave parks the mailbox, a cancelled one ends it."""
    status = Wave.objects.filter(mailboxes__pk=entry_id).values_list("status", flat=True).first()
    if status not in (WaveStatus.PAUSED, WaveStatus.CANCELLED):
        return False
    with transaction.atomic():
        entry = _lock_entry(entry_id, owner, state=WaveMailboxState.RUNNING)
        before = {"state": entry.state}
        entry.lease_owner = ""
        entry.lease_expires_at = None
        changed_anything = entry.steps.filter(
            name__in=["bind_profile", "approve_address"], status=MigrationStepStatus.SUCCEEDED
        ).exists()
        if status == WaveStatus.PAUSED:
            entry.state = WaveMailboxState.PENDING
            entry.test_enable_at = None
            entry.save(update_fields=["state", "lease_owner", "lease_expires_at", "test_enable_at"])
            action, reason = "migration.run_paused", "the wave was paused"
        else:
            entry.state = WaveMailboxState.CANCELLED
            entry.active = False
            entry.test_enable_at = None
            entry.finished_at = timezone.now()
            entry.last_error = "The wave was cancelled before this mailbox's Test & Enable." + (
                " Some settings were already changed: roll the mailbox back to restore them."
                if changed_anything
                else ""
            )
            entry.error_code = "wave_cancelled"
            entry.save(
                update_fields=[
                    "state",
                    "active",
                    "lease_owner",
                    "lease_expires_at",
                    "test_enable_at",
                    "finished_at",
                    "last_error",
                    "error_code",
                ]
            )
            action, reason = "migration.run_cancelled", "the wave was cancelled"
        audit_record(
            actor=None,
            action=action,
            object_type="inventory_mailbox",
            object_id=entry.mailbox_id,
            before=before,
            after={"state": entry.state, "wave": entry.wave_id, "entry": entry.pk},
            reason=reason,
        )
    return True


def _attempt(
    entry: WaveMailbox,
    step: MigrationStep,
    owner: str,
    *,
    rollback: bool,
    memo: dict[str, Any],
    policy: PolicySettings,
    clients: JobClients,
) -> bool:
    """One attempt at one step; True when the run should go on to the next step.

    ``entry`` (with its mailbox and wave) and ``step`` are the job's own copies, read after it
    claimed the run: while it holds the lease nothing else changes them.
    """
    now = timezone.now()
    state = WaveMailboxState.ROLLING_BACK if rollback else WaveMailboxState.RUNNING
    with transaction.atomic():
        _hold_entry(entry.pk, owner, state=state)
        first = step.status == MigrationStepStatus.PENDING
        step.status = MigrationStepStatus.RUNNING
        step.attempts += 1
        step.started_at = now if first or not step.started_at else step.started_at
        step.save(update_fields=["status", "attempts", "started_at"])
    ctx = RunContext(
        entry_id=entry.pk,
        owner=owner,
        rollback=rollback,
        step=step,
        entry=entry,
        policy=policy,
        memo=memo,
        clients=clients,
    )
    spec = SPECS.get(step.name)
    try:
        if spec is None:
            raise StepFailed(f"The portal does not know how to do the step “{step.name}”.", code="unknown_step")
        outcome = spec.run(ctx)
    except LeaseLost:
        raise
    except StepFailed as failure:
        _fail(ctx, failure.message, code=failure.code, report=failure.report)
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
            "retry the mailbox once the cause is fixed.",
            code="unexpected",
        )
        raise
    if isinstance(outcome, Wait):
        _wait(ctx, outcome)
        return False
    _succeed(ctx, outcome)
    return True


def _succeed(ctx: RunContext, done: Done) -> None:
    now = timezone.now()
    step = ctx.step
    step.status = MigrationStepStatus.SKIPPED if done.skipped else MigrationStepStatus.SUCCEEDED
    step.before_state = ctx.found or None
    step.result = done.result
    step.error = ""
    step.error_code = ""
    step.finished_at = now
    with transaction.atomic():
        _hold_entry(ctx.entry_id, ctx.owner, state=ctx.working_state)
        step.save(update_fields=["status", "before_state", "result", "error", "error_code", "finished_at"])
        WaveMailbox.objects.filter(pk=ctx.entry_id).update(
            lease_expires_at=now + dt.timedelta(seconds=LEASE_SECONDS), last_error="", error_code=""
        )


def _park(ctx: RunContext, *, seconds: float, error: str = "", error_code: str = "") -> None:
    """Let go of the run until ``seconds`` from now and schedule its job then."""
    now = timezone.now()
    entry = _lock_entry(ctx)
    step = MigrationStep.objects.select_for_update().get(pk=ctx.step.pk)
    step.before_state = ctx.found or step.before_state
    step.error = error[:4000]
    step.error_code = error_code[:100]
    step.save(update_fields=["before_state", "error", "error_code"])
    entry.state = WaveMailboxState.ROLLING_BACK if ctx.rollback else WaveMailboxState.WAITING
    entry.not_before = now + dt.timedelta(seconds=seconds)
    entry.lease_owner = ""
    entry.lease_expires_at = None
    if error:
        entry.last_error = error[:4000]
        entry.error_code = error_code[:100]
    entry.save(update_fields=["state", "not_before", "lease_owner", "lease_expires_at", "last_error", "error_code"])
    if ctx.rollback:
        _queue_rollback(ctx.entry_id, seconds=seconds)
    else:
        _queue_run(ctx.entry_id, seconds=seconds)


def _wait(ctx: RunContext, wait: Wait) -> None:
    with transaction.atomic():
        _park(ctx, seconds=wait.seconds)
        if ctx.step.attempts == 1:
            audit_record(
                actor=None,
                action="migration.waiting",
                object_type="inventory_mailbox",
                object_id=ctx.mailbox.pk,
                after={"entry": ctx.entry_id, "step": ctx.step.name, "seconds": wait.seconds},
                reason=wait.reason,
            )


def _retry_later(ctx: RunContext, error: BaseException, *, seconds: float | None) -> None:
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
        seconds = ctx.policy.test_enable_poll_seconds
    if seconds is None:
        exponent = min(max(ctx.step.attempts - 1, 0), 10)
        seconds = min(TRANSIENT_BACKOFF_CAP_SECONDS, TRANSIENT_BACKOFF_BASE_SECONDS * 2**exponent)
    with transaction.atomic():
        _park(
            ctx,
            seconds=seconds,
            error=f"Temporary error, trying again: {message}",
            error_code=str(getattr(error, "code", "") or "transient"),
        )


def _after_state(ctx: RunContext) -> dict[str, Any] | None:
    """The ETags and values the migration leaves behind, so a rollback can tell a later change in Dynamics."""
    snapshot = ctx.entry.snapshot or {}
    if not snapshot:
        return None
    mailbox = ctx.memo.get("mailbox") or _read(
        ctx.dataverse, "mailboxes", str(ctx.mailbox.dataverse_id), MAILBOX_COLUMNS
    )
    after: dict[str, Any] = {
        "recorded_at": timezone.now().isoformat(),
        "mailbox": {
            "etag": _etag(mailbox),
            "values": _values(mailbox, (*MAILBOX_RESTORED, "_emailserverprofile_value")),
        },
    }
    owner_snapshot = snapshot.get("owner")
    if owner_snapshot:
        columns = QUEUE_COLUMNS if owner_snapshot["entity_set"] == "queues" else USER_COLUMNS
        owner = _read(ctx.dataverse, owner_snapshot["entity_set"], owner_snapshot["id"], columns)
        after["owner"] = {"etag": _etag(owner), "values": _values(owner, OWNER_RESTORED)}
    settings_snapshot = snapshot.get("usersettings")
    if settings_snapshot:
        # The migration never writes the user's options: they are as the snapshot found them.
        after["usersettings"] = {
            "etag": (ctx.entry.snapshot_etags or {}).get("usersettings"),
            "values": _values(settings_snapshot, USERSETTINGS_RESTORED),
        }
    return after


def _fail(ctx: RunContext, message: str, *, code: str, report: dict[str, Any] | None = None) -> None:
    after = None
    if not ctx.rollback and ctx.step.name != "snapshot":
        try:
            after = _after_state(ctx)
        except (M365Error, StepFailed):
            logger.warning("could not record the state left by wave mailbox %s", ctx.entry_id, exc_info=True)
    now = timezone.now()
    with transaction.atomic():
        entry = _lock_entry(ctx)
        step = MigrationStep.objects.select_for_update().get(pk=ctx.step.pk)
        step.status = MigrationStepStatus.FAILED
        step.before_state = ctx.found or step.before_state
        step.error = message[:4000]
        step.error_code = code[:100]
        step.finished_at = now
        step.save(update_fields=["status", "before_state", "error", "error_code", "finished_at"])
        before_state = entry.state
        entry.state = WaveMailboxState.ROLLBACK_CONFLICT if ctx.rollback else WaveMailboxState.NEEDS_ATTENTION
        entry.active = False
        entry.lease_owner = ""
        entry.lease_expires_at = None
        entry.not_before = None
        entry.finished_at = now
        entry.last_error = message[:4000]
        entry.error_code = code[:100]
        fields = [
            "state",
            "active",
            "lease_owner",
            "lease_expires_at",
            "not_before",
            "finished_at",
            "last_error",
            "error_code",
        ]
        if ctx.rollback:
            entry.rollback_report = report or {"message": message, "code": code}
            fields.append("rollback_report")
        else:
            if (
                step.name != "await_test"
                and not MigrationStep.objects.filter(
                    entry_id=entry.pk, name="schedule_test", status=MigrationStepStatus.SUCCEEDED
                ).exists()
            ):
                entry.test_enable_at = None  # the reservation against the cap was never used
                fields.append("test_enable_at")
            if after is not None:
                entry.snapshot_etags = {**(entry.snapshot_etags or {}), "after": after}
                fields.append("snapshot_etags")
        entry.save(update_fields=fields)
        if not ctx.rollback:
            _update_inventory_after_failure(ctx, after)
        audit_record(
            actor=None,
            action="migration.rollback_conflict" if ctx.rollback else "migration.needs_attention",
            object_type="inventory_mailbox",
            object_id=entry.mailbox_id,
            before={"state": before_state, "step": step.name},
            after={"state": entry.state, "wave": entry.wave_id, "entry": entry.pk, "error_code": entry.error_code},
            outcome=Outcome.FAILURE,
            reason=message[:1000],
        )
        if not ctx.rollback:
            _queue_dispatch(entry.wave_id)
        transaction.on_commit(lambda: _reclassify(entry.mailbox_id))


def _finish_migrated(
    entry: WaveMailbox,
    step: MigrationStep | None,
    owner: str,
    memo: dict[str, Any],
    *,
    policy: PolicySettings,
    clients: JobClients,
) -> None:
    """Every step is done: record what the migration left behind and mark the mailbox migrated.

    ``entry`` and ``step`` (its Test & Enable wait, which holds the final values) are the job's copies.
    """
    entry_id = entry.pk
    step = step or MigrationStep.objects.get(entry_id=entry_id, name="await_test")
    ctx = RunContext(
        entry_id=entry_id,
        owner=owner,
        rollback=False,
        step=step,
        entry=entry,
        policy=policy,
        memo=memo,
        clients=clients,
    )
    after = _after_state(ctx)  # may raise a transient error: the watchdog lets the run finish later
    now = timezone.now()
    with transaction.atomic():
        entry = _lock_entry(entry_id, owner, state=WaveMailboxState.RUNNING)
        entry.state = WaveMailboxState.MIGRATED
        entry.active = False
        entry.lease_owner = ""
        entry.lease_expires_at = None
        entry.not_before = None
        entry.finished_at = now
        entry.last_error = ""
        entry.error_code = ""
        entry.snapshot_etags = {**(entry.snapshot_etags or {}), "after": after}
        entry.save(
            update_fields=[
                "state",
                "active",
                "lease_owner",
                "lease_expires_at",
                "not_before",
                "finished_at",
                "last_error",
                "error_code",
                "snapshot_etags",
            ]
        )
        final = (step.result or {}).get("mailbox") or {}
        _update_inventory(entry.mailbox_id, final, profile_name=(step.result or {}).get("profile_name"))
        InventoryMailbox.objects.filter(pk=entry.mailbox_id).update(open_error_alerts=0)
        audit_record(
            actor=None,
            action="migration.mailbox_migrated",
            object_type="inventory_mailbox",
            object_id=entry.mailbox_id,
            before={"state": WaveMailboxState.RUNNING, "snapshot": (entry.snapshot or {}).get("mailbox")},
            after={"state": entry.state, "wave": entry.wave_id, "entry": entry.pk, "mailbox": final},
        )
        _queue_dispatch(entry.wave_id)
        transaction.on_commit(lambda: _reclassify(entry.mailbox_id))
        transaction.on_commit(_record_progress)


def _finish_later(entry_id: int, owner: str, error: M365Error) -> None:
    """Reading the final state failed (e.g. throttled): every step is done, so only the finish is retried."""
    seconds = error.retry_after if error.retry_after is not None else TRANSIENT_BACKOFF_BASE_SECONDS
    with transaction.atomic():
        entry = _lock_entry(entry_id, owner, state=WaveMailboxState.RUNNING)
        entry.state = WaveMailboxState.WAITING
        entry.not_before = timezone.now() + dt.timedelta(seconds=seconds)
        entry.lease_owner = ""
        entry.lease_expires_at = None
        entry.last_error = f"Temporary error, trying again: {describe_error(error)}"[:4000]
        entry.save(update_fields=["state", "not_before", "lease_owner", "lease_expires_at", "last_error"])
        _queue_run(entry_id, seconds=seconds)


def _finish_rolled_back(entry_id: int, owner: str) -> None:
    now = timezone.now()
    with transaction.atomic():
        entry = _lock_entry(entry_id, owner, state=WaveMailboxState.ROLLING_BACK)
        step = MigrationStep.objects.get(entry_id=entry_id, order=ROLLBACK_ORDER)
        entry.state = WaveMailboxState.ROLLED_BACK
        entry.active = False
        entry.lease_owner = ""
        entry.lease_expires_at = None
        entry.not_before = None
        entry.finished_at = now
        entry.last_error = ""
        entry.error_code = ""
        entry.rollback_report = {"restored": (step.result or {}).get("restored"), "finished_at": now.isoformat()}
        entry.save(
            update_fields=[
                "state",
                "active",
                "lease_owner",
                "lease_expires_at",
                "not_before",
                "finished_at",
                "last_error",
                "error_code",
                "rollback_report",
            ]
        )
        original = (entry.snapshot or {}).get("mailbox") or {}
        inventory = (entry.snapshot or {}).get("inventory") or {}
        _update_inventory(entry.mailbox_id, original, profile_name=inventory.get("profile_name"))
        audit_record(
            actor=None,
            action="migration.mailbox_rolled_back",
            object_type="inventory_mailbox",
            object_id=entry.mailbox_id,
            before={"state": WaveMailboxState.ROLLING_BACK},
            after={"state": entry.state, "wave": entry.wave_id, "entry": entry.pk, "restored": entry.rollback_report},
        )
        transaction.on_commit(lambda: _reclassify(entry.mailbox_id))
        transaction.on_commit(_record_progress)


# --- the inventory and the burn-down ------------------------------------------------------------


def _update_inventory(mailbox_id: int, values: dict[str, Any], *, profile_name: str | None) -> None:
    """What Dataverse now holds for the mailbox, as discovery would have recorded it."""
    if not values:
        return
    fields: dict[str, Any] = {
        "profile_id": values.get("_emailserverprofile_value"),
        "incoming_delivery": values.get("incomingemaildeliverymethod"),
        "outgoing_delivery": values.get("outgoingemaildeliverymethod"),
        "act_delivery": values.get("actdeliverymethod"),
        "email_approval": values.get("emailrouteraccessapproval"),
        "incoming_status": values.get("incomingemailstatus"),
        "outgoing_status": values.get("outgoingemailstatus"),
        "act_status": values.get("actstatus"),
    }
    if profile_name is not None:
        fields["profile_name"] = profile_name if fields["profile_id"] else ""
    InventoryMailbox.objects.filter(pk=mailbox_id).update(**fields)


def _update_inventory_after_failure(ctx: RunContext, after: dict[str, Any] | None) -> None:
    if after is None:
        return
    values = (after.get("mailbox") or {}).get("values") or {}
    if values:
        InventoryMailbox.objects.filter(pk=ctx.mailbox.pk).update(
            incoming_delivery=values.get("incomingemaildeliverymethod"),
            outgoing_delivery=values.get("outgoingemaildeliverymethod"),
            act_delivery=values.get("actdeliverymethod"),
            email_approval=values.get("emailrouteraccessapproval"),
            incoming_status=values.get("incomingemailstatus"),
            outgoing_status=values.get("outgoingemailstatus"),
            act_status=values.get("actstatus"),
        )


def _reclassify(mailbox_id: int) -> None:
    from migration.services.discovery import inventory_reclassify

    try:
        inventory_reclassify(mailbox_ids=[mailbox_id])
    except Exception:
        logger.exception("could not classify inventory mailbox %s again after its migration", mailbox_id)


PROGRESS_THROTTLE_SECONDS = 10


def _record_progress() -> None:
    """Today's burn-down row, at most every few seconds however many mailboxes finish."""
    try:
        if not _queue().connection.set(
            "portal:migration:progress-recorded", "1", nx=True, ex=PROGRESS_THROTTLE_SECONDS
        ):
            return
        from migration.services.progress import progress_record_today

        progress_record_today()
    except Exception:
        logger.exception("could not record today's migration progress")


# --- the watchdog -------------------------------------------------------------------------------


def migration_recover(*, entry_id: int) -> None:
    """The watchdog of a rollback (a wave's runs have its dispatcher): queued again once its lease expired.

    While a live worker still renews the lease, the watchdog looks again just after it would expire.
    """
    now = timezone.now()
    entry = WaveMailbox.objects.filter(pk=entry_id).values("state", "lease_owner", "lease_expires_at").first()
    if entry is None or entry["state"] not in (WaveMailboxState.RUNNING, WaveMailboxState.ROLLING_BACK):
        return
    if not entry["lease_owner"]:
        return
    with transaction.atomic():
        if entry["lease_expires_at"] is not None and entry["lease_expires_at"] > now:
            _schedule_watchdog(entry_id)
            return
        if entry["state"] == WaveMailboxState.ROLLING_BACK:
            _queue_rollback(entry_id)
        else:
            _queue_run(entry_id)


# --- people's actions ---------------------------------------------------------------------------


def _check_actor(actor: User) -> None:
    if not (actor.has_perm(perm("lead_migration")) or actor.has_perm(perm("administer_platform"))):
        raise PermissionDeniedError("Only a migration lead can roll back or retry mailboxes.")


def migration_rollback(*, actor: User, entry_ids: Iterable[int]) -> int:
    """Queue the rollback of these wave mailboxes (migrated or needing attention) to their snapshot.

    Mailboxes that are not in a state that can be rolled back, or that have no snapshot (nothing was
    changed), are left alone. Returns how many rollbacks were queued.
    """
    _check_actor(actor)
    ids = sorted({int(pk) for pk in entry_ids})
    queued = 0
    now = timezone.now()
    for entry_id in ids:
        try:
            with transaction.atomic():
                entry = WaveMailbox.objects.select_for_update().filter(pk=entry_id).first()
                if entry is None or entry.state not in ROLLBACK_FROM or not entry.snapshot:
                    continue
                before = {"state": entry.state}
                entry.state = WaveMailboxState.ROLLING_BACK
                entry.active = True
                entry.lease_owner = ""
                entry.lease_expires_at = None
                entry.not_before = None
                entry.finished_at = None
                entry.rollback_report = None
                entry.save(
                    update_fields=[
                        "state",
                        "active",
                        "lease_owner",
                        "lease_expires_at",
                        "not_before",
                        "finished_at",
                        "rollback_report",
                    ]
                )
                step, created = MigrationStep.objects.select_for_update().get_or_create(
                    entry=entry,
                    order=ROLLBACK_ORDER,
                    defaults={
                        "name": ROLLBACK_STEP,
                        "idempotency_key": f"wave{entry.wave_id}:entry{entry.pk}:rollback",
                    },
                )
                if not created:
                    step.status = MigrationStepStatus.PENDING
                    step.before_state = None
                    step.result = None
                    step.error = ""
                    step.error_code = ""
                    step.attempts = 0
                    step.started_at = None
                    step.finished_at = None
                    step.save()
                audit_record(
                    actor=actor,
                    action="migration.rollback_requested",
                    object_type="inventory_mailbox",
                    object_id=entry.mailbox_id,
                    before=before,
                    after={"state": entry.state, "wave": entry.wave_id, "entry": entry.pk, "at": now.isoformat()},
                )
                _queue_rollback(entry.pk)
                queued += 1
        except IntegrityError:
            # The mailbox is active in another wave now; rolling it back here would fight that wave.
            logger.info("wave mailbox %s not rolled back: its mailbox is active in another wave", entry_id)
    return queued


def migration_retry_failed(*, actor: User, wave_id: int) -> int:
    """Queue a new run for just the wave's mailboxes that need attention. Returns how many.

    Each one restarts from the step that failed (a failed Test & Enable from scheduling it again);
    its snapshot from before the first attempt is kept, so a later rollback still restores the
    original values. A completed wave runs again; a paused one picks them up when resumed.
    """
    _check_actor(actor)
    with transaction.atomic():
        wave = Wave.objects.select_for_update().filter(pk=wave_id).first()
        if wave is None:
            raise InvalidStateError("There is no such wave.")
        if wave.status not in (WaveStatus.RUNNING, WaveStatus.PAUSED, WaveStatus.COMPLETED):
            raise InvalidStateError("Only a wave that has started can retry its failed mailboxes.")
        failed = list(
            WaveMailbox.objects.select_for_update()
            .filter(wave=wave, state=WaveMailboxState.NEEDS_ATTENTION)
            .order_by("pk")
        )
        retried: list[int] = []
        for entry in failed:
            try:
                with transaction.atomic():
                    _reset_failed_steps(entry)
                    entry.state = WaveMailboxState.PENDING
                    entry.active = True
                    entry.not_before = None
                    entry.finished_at = None
                    entry.test_enable_at = None
                    entry.save(update_fields=["state", "active", "not_before", "finished_at", "test_enable_at"])
            except IntegrityError:
                continue  # the mailbox is active in another wave now
            retried.append(entry.pk)
        if not retried:
            return 0
        before_status = wave.status
        if wave.status == WaveStatus.COMPLETED:
            wave.status = WaveStatus.RUNNING
            wave.finished_at = None
            wave.save(update_fields=["status", "finished_at"])
        audit_record(
            actor=actor,
            action="wave.retry_failed",
            object_type="wave",
            object_id=wave.pk,
            before={"status": before_status},
            after={"status": wave.status, "entries": retried},
        )
        if wave.status == WaveStatus.RUNNING:
            _queue_dispatch(wave.pk)
    return len(retried)


def _reset_failed_steps(entry: WaveMailbox) -> None:
    steps = list(entry.steps.select_for_update().filter(order__lt=ROLLBACK_ORDER).order_by("order"))
    failed = next((step for step in steps if step.status == MigrationStepStatus.FAILED), None)
    if failed is None:
        return
    start = failed
    if failed.name in RETRY_FROM:
        start = next((step for step in steps if step.name == RETRY_FROM[failed.name]), failed)
    for step in steps:
        if step.order < start.order:
            continue
        step.status = MigrationStepStatus.PENDING
        step.before_state = None
        step.result = None
        step.error = ""
        step.error_code = ""
        step.attempts = 0
        step.started_at = None
        step.finished_at = None
    MigrationStep.objects.bulk_update(
        [step for step in steps if step.order >= start.order],
        ["status", "before_state", "result", "error", "error_code", "attempts", "started_at", "finished_at"],
    )
