"""Discovery: read every Dataverse mailbox (and Graph presence), classify, and keep the inventory current.

A run reads the organisation's email settings and server profiles, the business units, teams and
owners (users and queues), the open error alerts, and then streams the mailboxes page by page.
Each slice of mailboxes is checked in Exchange Online through Graph (20 to a ``$batch``, several
batches at once on worker threads: Graph's limits are per mailbox, so different mailboxes do not
compete), classified by :mod:`migration.classification` and written in bulk. Owners, alert counts
and the ids seen live in scratch tables (:mod:`.discovery_scratch`), never in growing Python
structures, so memory stays flat however large the organisation.

A full run reads everything. An incremental run reads only rows modified since the last run's
high-water mark (mailboxes and owners), re-checks Graph for those and for mailboxes never checked,
re-reads alert counts, lists every mailbox id to notice deletions and arrivals it missed, and
re-classifies everything when the organisation's settings or profiles changed. Either kind marks
inventory mailboxes no longer in Dataverse as removed, and un-marks any that come back.

Only one run at a time: a request while one is queued or running returns that one.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import queue
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q, QuerySet
from django.db.models.expressions import RawSQL
from django.utils import timezone

from migration.classification import MailboxFacts, Verdict, approval_required, classify, owner_type_of
from migration.models import (
    ExchangePresence,
    InventoryChange,
    InventoryMailbox,
    InventorySync,
    LegacyMailboxLink,
    OrganizationSnapshot,
    OwnerType,
    ServerProfile,
    SyncKind,
    SyncStatus,
)
from migration.services.discovery_rows import (
    MAILBOX_COLUMNS,
    QUEUE_COLUMNS,
    USER_COLUMNS,
    MailboxRow,
    mailbox_row,
    optional_row_id,
    queue_owner,
    row_id,
    user_owner,
)
from migration.services.discovery_scratch import Owner, OwnerRow, Scratch, among, chunked, copy_rows
from portal import correlation
from portal.accounts.models import User
from portal.audit.models import Outcome
from portal.audit.services import audit_record
from portal.exceptions import ConfigurationError, PortalError
from portal.m365.config import M365Config
from portal.m365.dataverse import DataverseClientPool, odata_datetime, odata_ids_filter
from portal.m365.errors import AccessDeniedError, AuthenticationError, M365Error
from portal.m365.graph import MAX_BATCH_REQUESTS, GraphClient, MailboxPresence, PresenceReason
from portal.m365.http import build_session
from portal.m365.rows import EmailServerProfile, Organization, ServerType
from portal.policy.services import policy_get
from portal.queue import enqueue_on_commit

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
_END = object()  # the end of a prefetched stream

# RQ stops a run after this; a run still RUNNING this long after it started is dead.
SYNC_JOB_TIMEOUT = 4 * 3600
# A queued run that no worker took up within this long is treated as lost.
QUEUED_GIVE_UP = dt.timedelta(hours=6)
# Mailboxes classified and written together (one transaction, a few queries).
UNIT = 1000
# Graph $batch requests in flight at once, and slices waiting for their Graph answers.
GRAPH_WORKERS = 4
UNITS_IN_FLIGHT = 3
# The next incremental run asks for rows modified after the high-water mark. It never passes
# the run's start less this margin, so a row changed while the run read (or stamped by a clock
# a little ahead of ours) is read again next time rather than missed.
MODIFIED_OVERLAP = dt.timedelta(seconds=5)
# Rows fetched by id ("mailboxid eq … or …") per request.
IDS_PER_REQUEST = 50
PAGE_SIZE = 5000

LEGACY_SERVER_TYPES = (ServerType.OTHER_POP3_SMTP, ServerType.IMAP_SMTP)
# Server to Server Authentication, OAuth with Entra ID: what an Exchange Online profile uses.
EXCHANGE_ONLINE_CREDENTIALS = (2, 7)

# What discovery writes on an inventory mailbox from what it read.
DATA_FIELDS = (
    "name",
    "email_address",
    "owner_type",
    "owner_dataverse_id",
    "owner_name",
    "owner_disabled",
    "business_unit_id",
    "business_unit_name",
    "team_name",
    "profile_id",
    "profile_name",
    "incoming_delivery",
    "outgoing_delivery",
    "act_delivery",
    "email_approval",
    "incoming_status",
    "outgoing_status",
    "act_status",
    "is_forward_mailbox",
    "open_error_alerts",
    "exchange_presence",
    "user_purpose",
    "classification",
    "readiness",
    "blockers",
    "explanation",
    "dataverse_modified_on",
    "removed_at",
)
VERDICT_FIELDS = ("classification", "readiness", "blockers", "explanation")
# Changes worth a line in a mailbox's history (``removed_at`` is recorded as "removed").
TRACKED_FIELDS = (
    "classification",
    "readiness",
    "incoming_delivery",
    "outgoing_delivery",
    "act_delivery",
    "profile_id",
    "email_approval",
    "incoming_status",
    "outgoing_status",
    "act_status",
    "exchange_presence",
    "user_purpose",
)


class DiscoveryError(PortalError):
    """Discovery cannot run as asked (e.g. the Microsoft 365 integration is off)."""


# --- requesting and claiming --------------------------------------------------------------------


def inventory_sync_request(*, actor: User | None, kind: str) -> InventorySync:
    """Queue a discovery run ("full" or "incremental"); one at a time — a second request returns the running one.

    An incremental run needs an earlier successful run to start from; without one the request
    becomes a full run. ``actor`` is ``None`` for the nightly schedule.
    """
    if kind not in SyncKind.values:
        raise DiscoveryError(f"Choose a full or an incremental discovery, not {kind!r}.", field="kind")
    if not settings.M365.enabled:
        raise ConfigurationError(
            "The portal is not connected to Microsoft 365, so there is nothing to discover. "
            "Set M365_TENANT_ID and the app registration first."
        )
    now = timezone.now()
    with transaction.atomic():
        _lock_inventory()
        _expire_abandoned_runs(now)
        active = InventorySync.objects.filter(status__in=(SyncStatus.QUEUED, SyncStatus.RUNNING)).first()
        if active is not None:
            audit_record(
                actor=actor,
                action="inventory.sync_requested",
                object_type="inventory_sync",
                object_id=active.pk,
                after={"kind": kind, "joined_run": active.pk, "status": active.status},
                reason="A discovery run was already queued or running.",
            )
            return active
        effective = kind
        if kind == SyncKind.INCREMENTAL and _last_high_water_mark() is None:
            effective = SyncKind.FULL
        sync = InventorySync.objects.create(
            kind=effective, status=SyncStatus.QUEUED, requested_by=actor, requested_at=now, phase="Waiting to start"
        )
        audit_record(
            actor=actor,
            action="inventory.sync_requested",
            object_type="inventory_sync",
            object_id=sync.pk,
            after={"kind": effective, "asked_for": kind},
            reason="" if effective == kind else "No earlier successful run to continue from, so a full run.",
        )
        from migration.jobs import inventory_sync_job

        enqueue_on_commit(
            inventory_sync_job,
            sync.pk,
            job_timeout=SYNC_JOB_TIMEOUT,
            on_enqueue_error=lambda exc: _sync_not_queued(sync.pk),
        )
    return sync


def _lock_inventory() -> None:
    """Serialise requests and claims on the inventory's one settings row (there is no other singleton)."""
    OrganizationSnapshot.objects.get_or_create(pk=1)
    OrganizationSnapshot.objects.select_for_update().get(pk=1)


def _expire_abandoned_runs(now: dt.datetime) -> None:
    """A run RQ has long since stopped (worker killed, job lost) must not block every later one."""
    stale = Q(status=SyncStatus.RUNNING, started_at__lt=now - dt.timedelta(seconds=SYNC_JOB_TIMEOUT)) | Q(
        status=SyncStatus.QUEUED, requested_at__lt=now - QUEUED_GIVE_UP
    )
    for sync in InventorySync.objects.filter(stale):
        InventorySync.objects.filter(pk=sync.pk).update(
            status=SyncStatus.FAILED,
            finished_at=now,
            error="The run stopped without finishing (its worker or job was lost).",
        )
        audit_record(
            actor=None,
            action="inventory.sync_abandoned",
            object_type="inventory_sync",
            object_id=sync.pk,
            outcome=Outcome.FAILURE,
            reason="worker or job lost",
        )


def _sync_not_queued(sync_id: int) -> None:
    with transaction.atomic():
        updated = InventorySync.objects.filter(pk=sync_id, status=SyncStatus.QUEUED).update(
            status=SyncStatus.FAILED,
            finished_at=timezone.now(),
            error="The background job queue is unavailable, so discovery did not start. Try again later.",
        )
        if updated:
            audit_record(
                actor=None,
                action="inventory.sync_not_queued",
                object_type="inventory_sync",
                object_id=sync_id,
                outcome=Outcome.FAILURE,
                reason="job queue unavailable",
            )


def _last_high_water_mark() -> dt.datetime | None:
    last = (
        InventorySync.objects.filter(status=SyncStatus.SUCCEEDED, high_water_mark__isnull=False)
        .order_by("-finished_at", "-id")
        .values_list("high_water_mark", flat=True)
        .first()
    )
    return last


def _claim(sync_id: int) -> bool:
    now = timezone.now()
    with transaction.atomic():
        _lock_inventory()
        if InventorySync.objects.filter(status=SyncStatus.RUNNING).exclude(pk=sync_id).exists():
            InventorySync.objects.filter(pk=sync_id, status=SyncStatus.QUEUED).update(
                status=SyncStatus.FAILED, finished_at=now, error="Another discovery run was already running."
            )
            return False
        return bool(
            InventorySync.objects.filter(pk=sync_id, status=SyncStatus.QUEUED).update(
                status=SyncStatus.RUNNING, started_at=now, phase="Starting"
            )
        )


def inventory_sync_run(*, sync_id: int) -> InventorySync | None:
    """The job's work: claim the run, then discover, classify and record; progress saved as it goes."""
    if not _claim(sync_id):
        logger.info("inventory discovery %s already claimed or finished", sync_id)
        return None
    sync = InventorySync.objects.get(pk=sync_id)
    try:
        config = settings.M365
        if not config.enabled:
            raise DiscoveryError("The portal is not connected to Microsoft 365.")
        _Discovery(sync, config).run()
    except BaseException as exc:
        _sync_fail(sync_id, exc)
        raise
    return InventorySync.objects.get(pk=sync_id)


def _sync_fail(sync_id: int, exc: BaseException) -> None:
    if isinstance(exc, M365Error):
        message = f"Microsoft 365 refused or failed a request: {exc}"
    elif isinstance(exc, PortalError):
        message = exc.message
    else:
        message = f"Discovery stopped because of an unexpected error ({type(exc).__name__})."
    with transaction.atomic():
        InventorySync.objects.filter(pk=sync_id, status=SyncStatus.RUNNING).update(
            status=SyncStatus.FAILED, finished_at=timezone.now(), error=message[:2000]
        )
        audit_record(
            actor=None,
            action="inventory.sync_failed",
            object_type="inventory_sync",
            object_id=sync_id,
            outcome=Outcome.FAILURE,
            reason=message,
        )


# --- classification from facts (shared by discovery and reclassification) ------------------------


@dataclass(frozen=True)
class _Profile:
    name: str
    is_exchange_online: bool
    is_legacy: bool


@dataclass(frozen=True)
class _Context:
    """What classification needs beyond the mailbox itself."""

    profiles: Mapping[uuid.UUID, _Profile]
    approval_for_users: bool
    approval_for_queues: bool

    @classmethod
    def from_database(cls) -> _Context:
        snapshot = OrganizationSnapshot.objects.filter(pk=1).first()
        taken = snapshot is not None and snapshot.taken_at is not None
        return cls(
            profiles={
                profile.dataverse_id: _Profile(profile.name, profile.is_exchange_online, profile.is_legacy)
                for profile in ServerProfile.objects.all()
            },
            # Dataverse requires approval for both unless switched off.
            approval_for_users=snapshot.require_approval_user_email if taken else True,
            approval_for_queues=snapshot.require_approval_queue_email if taken else True,
        )

    def signature(self) -> tuple[Any, ...]:
        return (
            self.approval_for_users,
            self.approval_for_queues,
            tuple(sorted((str(key), p.is_exchange_online, p.is_legacy) for key, p in self.profiles.items())),
        )


def _verdict(values: Mapping[str, Any], context: _Context, *, listed: bool) -> Verdict:
    profile_id = values["profile_id"]
    profile = context.profiles.get(profile_id) if profile_id is not None else None
    return classify(
        MailboxFacts(
            email_address=values["email_address"],
            owner_type=values["owner_type"],
            owner_disabled=values["owner_disabled"],
            incoming_delivery=values["incoming_delivery"],
            outgoing_delivery=values["outgoing_delivery"],
            act_delivery=values["act_delivery"],
            email_approval=values["email_approval"],
            incoming_status=values["incoming_status"],
            outgoing_status=values["outgoing_status"],
            is_forward_mailbox=values["is_forward_mailbox"],
            profile_id=str(profile_id) if profile_id is not None else None,
            profile_is_exchange_online=bool(profile and profile.is_exchange_online),
            profile_is_legacy=bool(profile and profile.is_legacy),
            exchange_presence=values["exchange_presence"],
            open_error_alerts=values["open_error_alerts"],
            listed_by_router=listed,
            approval_required=approval_required(
                values["owner_type"], for_users=context.approval_for_users, for_queues=context.approval_for_queues
            ),
        )
    )


def _apply_verdict(values: dict[str, Any], verdict: Verdict) -> None:
    values["classification"] = str(verdict.classification.value)
    values["readiness"] = str(verdict.readiness.value)
    values["blockers"] = verdict.blocker_dicts()
    values["explanation"] = verdict.explanation


def _listed(pks: Iterable[int]) -> set[int]:
    """Which of these inventory mailboxes an imported router configuration lists."""
    ids = [pk for pk in pks if pk is not None]
    if not ids:
        return set()
    return set(
        LegacyMailboxLink.objects.filter(among("mailbox_id", ids, array_type="bigint"))
        .values_list("mailbox_id", flat=True)
        .distinct()
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return value


def _history(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, list[Any]]:
    """The tracked differences, as ``{"field": [before, after]}``."""
    changes = {
        name: [_jsonable(before[name]), _jsonable(after[name])]
        for name in TRACKED_FIELDS
        if name in after and before.get(name) != after[name]
    }
    if "removed_at" in after and (before.get("removed_at") is None) != (after["removed_at"] is None):
        changes["removed"] = [before.get("removed_at") is not None, after["removed_at"] is not None]
    return changes


def inventory_reclassify(*, mailbox_ids: Iterable[int]) -> int:
    """Classify these inventory mailboxes again from their stored facts (e.g. after a router import).

    Returns how many mailboxes' classification, readiness, blockers or explanation changed; each
    classification or readiness change is recorded in the mailbox's history.
    """
    ids = sorted({int(pk) for pk in mailbox_ids})
    context = _Context.from_database()
    changed = 0
    now = timezone.now()
    for chunk in chunked(ids, UNIT):
        rows = list(InventoryMailbox.objects.filter(pk__in=chunk))
        listed = _listed(row.pk for row in rows)
        updates: list[InventoryMailbox] = []
        history: list[InventoryChange] = []
        for row in rows:
            before = {name: getattr(row, name) for name in DATA_FIELDS}
            values = dict(before)
            _apply_verdict(values, _verdict(values, context, listed=row.pk in listed))
            if all(before[name] == values[name] for name in VERDICT_FIELDS):
                continue
            for name in VERDICT_FIELDS:
                setattr(row, name, values[name])
            updates.append(row)
            tracked = _history(before, {name: values[name] for name in VERDICT_FIELDS})
            if tracked:
                history.append(InventoryChange(mailbox=row, sync=None, at=now, changes=tracked))
        with transaction.atomic():
            InventoryMailbox.objects.bulk_update(updates, VERDICT_FIELDS, batch_size=500)
            InventoryChange.objects.bulk_create(history, batch_size=1000)
        changed += len(updates)
    return changed


# --- the run ------------------------------------------------------------------------------------


class _CountingSession:
    """The process's HTTP session, counting the calls made to Dataverse and Graph for the run's progress."""

    def __init__(self, inner: Any, prefixes: Sequence[str]) -> None:
        self._inner = inner
        self._prefixes = tuple(prefix for prefix in prefixes if prefix)
        self._lock = threading.Lock()
        self.count = 0

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        if url.startswith(self._prefixes):
            with self._lock:
                self.count += 1
        return self._inner.request(method, url, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@dataclass
class _Candidate:
    """One mailbox on its way to the inventory: what is now known of it, before its verdict."""

    dataverse_id: uuid.UUID
    existing: InventoryMailbox | None
    values: dict[str, Any]
    graph_key: str | None = None  # set: ask Graph where the mailbox lives
    read: bool = False  # its row was read from Dataverse in this run


@dataclass
class _Slice:
    candidates: list[_Candidate]
    presence: list[Future[tuple[dict[str, MailboxPresence], M365Error | None]]] = field(default_factory=list)


def _presence_values(presence: MailboxPresence) -> tuple[str, str]:
    if presence.in_exchange_online:
        return ExchangePresence.EXCHANGE_ONLINE.value, (presence.user_purpose or "")[:20]
    if presence.reason == PresenceReason.USER_NOT_FOUND:
        return ExchangePresence.NOT_FOUND.value, ""
    return ExchangePresence.NOT_IN_EXCHANGE_ONLINE.value, ""


class _Discovery:
    def __init__(self, sync: InventorySync, config: M365Config) -> None:
        self.sync = sync
        self.correlation_id = correlation.current()
        self.incremental = False
        self.since: dt.datetime | None = None
        self.session = _CountingSession(build_session(config), (config.dataverse_url, config.graph_url))
        self.pool = DataverseClientPool(config, session=self.session)  # type: ignore[arg-type]
        self.graph = GraphClient(config, session=self.session)  # type: ignore[arg-type]
        self.scratch: Scratch
        self.context: _Context
        self.executor: ThreadPoolExecutor
        self.in_flight: deque[_Slice] = deque()
        self.newest_modified: dt.datetime | None = None
        self.warnings: list[str] = []
        self.graph_stopped: M365Error | None = None
        self.graph_failures = 0
        self.seen = 0
        self.changed = 0
        self.removed = 0
        self.checked = 0
        self.phase_name = ""
        self.phase_started = 0.0

    # --- the phases ---------------------------------------------------------------------------

    def run(self) -> None:
        started = self.sync.started_at or timezone.now()
        previous_mark = _last_high_water_mark()
        self.incremental = self.sync.kind == SyncKind.INCREMENTAL and previous_mark is not None
        self.since = previous_mark if self.incremental else None
        with Scratch() as scratch, ThreadPoolExecutor(GRAPH_WORKERS, thread_name_prefix="discovery-graph") as pool:
            self.scratch, self.executor = scratch, pool
            try:
                self._phases()
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
        self._finish(started=started, previous_mark=previous_mark)

    def _phases(self) -> None:
        self._phase("Reading the organisation's email settings")
        settings_changed = self._read_organisation()
        self._phase("Reading business units and teams")
        self._read_business_units_and_teams()
        self._phase("Reading mailbox owners" + (" changed since the last run" if self.incremental else ""))
        self._read_owners()
        self._phase("Reading open error alerts")
        self._read_alerts()
        self._phase(
            "Reading changed mailboxes and checking Exchange Online"
            if self.incremental
            else "Reading mailboxes and checking Exchange Online"
        )
        self._read_mailboxes()
        if self.incremental:
            self._phase("Listing every mailbox to notice removed and missed ones")
            self._list_mailbox_ids()
            self._read_unknown_mailboxes()
            self._phase("Re-checking mailboxes whose owners or alerts changed")
            done = Q(last_sync_id=self.sync.pk)
            live = InventoryMailbox.objects.filter(removed_at__isnull=True).exclude(done)
            # The scratch tables' own SQL, no outside input: see discovery_scratch.
            owners_changed = RawSQL(self.scratch.owner_ids_sql(), [])  # noqa: S611
            with_alerts = RawSQL(self.scratch.alert_ids_sql(), [])  # noqa: S611
            self._reprocess(live.filter(owner_dataverse_id__in=owners_changed), recheck=True)
            self._reprocess(
                live.filter(Q(open_error_alerts__gt=0) | Q(dataverse_id__in=with_alerts)),
                recheck=False,
                only_if_alerts_changed=True,
            )
            self._reprocess(
                live.filter(exchange_presence=ExchangePresence.UNKNOWN, owner_disabled=False).exclude(email_address=""),
                recheck=True,
            )
            if settings_changed:
                self._phase("Classifying every mailbox again: the organisation's settings or profiles changed")
                self._reprocess(live, recheck=False)
        self._phase("Marking removed mailboxes")
        self._mark_removed()
        self._phase_done()

    def _phase(self, phase: str) -> None:
        self._phase_done()
        self.phase_name, self.phase_started = phase, time.monotonic()
        self._save_progress(phase=phase)

    def _phase_done(self) -> None:
        if self.phase_name:
            took = time.monotonic() - self.phase_started
            logger.info("discovery %s: %s took %.2fs", self.sync.pk, self.phase_name, took)

    def _save_progress(self, *, phase: str | None = None) -> None:
        fields: dict[str, Any] = {
            "mailboxes_seen": self.seen,
            "mailboxes_changed": self.changed,
            "mailboxes_removed": self.removed,
            "presence_checked": self.checked,
            "requests_made": self.session.count,
        }
        if phase is not None:
            fields["phase"] = phase
        InventorySync.objects.filter(pk=self.sync.pk).update(**fields)

    def _finish(self, *, started: dt.datetime, previous_mark: dt.datetime | None) -> None:
        if self.graph_failures:
            reason = f" ({self.graph_stopped})" if self.graph_stopped else ""
            self.warnings.append(
                f"Exchange Online hosting could not be checked for {self.graph_failures} mailbox"
                f"{'es' if self.graph_failures != 1 else ''}{reason}; the next run checks them again."
            )
        newest = self.newest_modified or previous_mark
        limit = started.replace(microsecond=0) - MODIFIED_OVERLAP
        mark = min(newest, limit) if newest is not None else None
        now = timezone.now()
        counts = {
            "mailboxes_seen": self.seen,
            "mailboxes_changed": self.changed,
            "mailboxes_removed": self.removed,
            "presence_checked": self.checked,
            "requests_made": self.session.count,
        }
        with transaction.atomic():
            InventorySync.objects.filter(pk=self.sync.pk).update(
                status=SyncStatus.SUCCEEDED,
                finished_at=now,
                phase="Finished",
                high_water_mark=mark,
                error="\n".join(self.warnings)[:2000],
                **counts,
            )
            audit_record(
                actor=None,
                action="inventory.sync_finished",
                object_type="inventory_sync",
                object_id=self.sync.pk,
                after={"kind": self.sync.kind, **counts, "seconds": round((now - started).total_seconds(), 1)},
                reason="; ".join(self.warnings),
            )
        # The burn-down's row for today; a failure here must not fail the discovery that finished.
        from django.db import DatabaseError

        from migration.services.progress import progress_record_today

        try:
            progress_record_today()
        except DatabaseError:
            logger.exception("recording today's migration progress after discovery %s failed", self.sync.pk)

    # --- organisation, profiles, business units, teams, owners, alerts -------------------------

    def _read_organisation(self) -> bool:
        """Snapshot the organisation's settings and the server profiles; whether either changed."""
        before = _Context.from_database()
        client = self.pool.client()
        organisations = [
            Organization.from_row(row) for row in client.iter_rows("organizations", select=Organization.SELECT)
        ]
        if not organisations:
            raise DiscoveryError("Dataverse returned no organisation row, so its email settings are unknown.")
        organisation = organisations[0]
        profiles = [
            EmailServerProfile.from_row(row)
            for row in client.iter_rows("emailserverprofiles", select=EmailServerProfile.SELECT)
        ]
        exchange_online = self._exchange_online_profile(profiles)
        now = timezone.now()
        with transaction.atomic():
            OrganizationSnapshot.objects.update_or_create(
                pk=1,
                defaults={
                    "organization_id": organisation.id,
                    "name": organisation.name or "",
                    "default_profile_id": organisation.default_email_server_profile_id,
                    "email_connection_channel": organisation.email_connection_channel,
                    "require_approval_user_email": organisation.require_approval_for_user_email is not False,
                    "require_approval_queue_email": organisation.require_approval_for_queue_email is not False,
                    "max_upload_file_size": organisation.max_upload_file_size,
                    "taken_at": now,
                },
            )
            for profile in profiles:
                ServerProfile.objects.update_or_create(
                    dataverse_id=profile.id,
                    defaults={
                        "name": profile.name or "",
                        "server_type": profile.server_type,
                        "incoming_credentials": profile.incoming_credential_retrieval,
                        "outgoing_credentials": profile.outgoing_credential_retrieval,
                        "is_exchange_online": profile.id == exchange_online,
                        "is_legacy": profile.server_type in LEGACY_SERVER_TYPES,
                        "active": profile.state_code in (None, 0),
                        "taken_at": now,
                    },
                )
            ServerProfile.objects.exclude(dataverse_id__in=[profile.id for profile in profiles]).delete()
        self.context = _Context.from_database()
        return before.signature() != self.context.signature()

    def _exchange_online_profile(self, profiles: Sequence[EmailServerProfile]) -> str | None:
        """The policy names the Exchange Online profile by id, or else by name (with S2S or OAuth credentials)."""
        policy = policy_get()
        wanted_id = (policy.exchange_online_profile_id or "").strip()
        if wanted_id:
            with contextlib.suppress(ValueError):  # not a GUID: it cannot match, and the warning says so
                wanted_id = str(uuid.UUID(wanted_id))
            if any(profile.id == wanted_id for profile in profiles):
                return wanted_id
            self.warnings.append(
                f"The Exchange Online profile set in the policy ({wanted_id}) is not in Dynamics 365, so no "
                "mailbox counts as compliant. Correct the policy."
            )
            return None
        wanted_name = policy.exchange_online_profile_name.strip().casefold()
        for profile in profiles:
            if (
                (profile.name or "").strip().casefold() == wanted_name
                and profile.server_type not in LEGACY_SERVER_TYPES
                and profile.incoming_credential_retrieval in EXCHANGE_ONLINE_CREDENTIALS
            ):
                return profile.id
        self.warnings.append(
            f"No server profile is named {policy.exchange_online_profile_name!r} with server-to-server or OAuth "
            "credentials, so no mailbox counts as compliant. Set the profile in the policy."
        )
        return None

    def _read_business_units_and_teams(self) -> None:
        client = self.pool.client()
        for page in _pages(client.iter_rows("businessunits", select=("businessunitid", "name"), page_size=PAGE_SIZE)):
            self.scratch.add_business_units(
                (row_id(row, "businessunitid", "businessunit"), str(row.get("name") or "")) for row in page
            )
        for page in _pages(
            client.iter_rows("teams", select=("teamid", "name", "_businessunitid_value"), page_size=PAGE_SIZE)
        ):
            self.scratch.add_teams(
                (
                    row_id(row, "teamid", "team"),
                    str(row.get("name") or ""),
                    optional_row_id(row, "_businessunitid_value", "team"),
                )
                for row in page
            )
        self.scratch.settle_teams()

    def _changed_filter(self) -> str | None:
        return f"modifiedon gt {odata_datetime(self.since)}" if self.since is not None else None

    def _read_owners(self) -> None:
        client = self.pool.client()
        users = client.iter_rows("systemusers", select=USER_COLUMNS, filter=self._changed_filter(), page_size=PAGE_SIZE)
        for page in self._prefetched(_pages(users), ahead=1):
            self.scratch.add_owners([self._user_owner(row) for row in page])
        queues = client.iter_rows("queues", select=QUEUE_COLUMNS, filter=self._changed_filter(), page_size=PAGE_SIZE)
        for page in self._prefetched(_pages(queues), ahead=1):
            self.scratch.add_owners([self._queue_owner(row) for row in page])
        self.scratch.analyze()

    def _user_owner(self, row: Mapping[str, Any]) -> OwnerRow:
        owner, modified = user_owner(row)
        self._saw_modified(modified)
        return owner

    def _queue_owner(self, row: Mapping[str, Any]) -> OwnerRow:
        owner, modified = queue_owner(row)
        self._saw_modified(modified)
        return owner

    def _read_alerts(self) -> None:
        client = self.pool.client()
        alerts = client.iter_rows(
            "tracelogs", select=("tracelogid", "_regardingobjectid_value"), filter="level eq 3", page_size=PAGE_SIZE
        )
        for page in _pages(alerts):
            self.scratch.add_alerts(
                regarding
                for row in page
                if (regarding := optional_row_id(row, "_regardingobjectid_value", "tracelog")) is not None
            )

    def _saw_modified(self, modified: dt.datetime | None) -> None:
        if modified is not None and (self.newest_modified is None or modified > self.newest_modified):
            self.newest_modified = modified

    # --- mailboxes from Dataverse ---------------------------------------------------------------

    def _read_mailboxes(self) -> None:
        client = self.pool.client()
        rows = client.iter_rows("mailboxes", select=MAILBOX_COLUMNS, filter=self._changed_filter(), page_size=PAGE_SIZE)
        # One Dataverse page ahead: the next page downloads while this one is classified and written.
        for unit in self._prefetched(_pages(rows, size=UNIT), ahead=PAGE_SIZE // UNIT + 1):
            self._submit_rows(unit)
        self._drain()

    def _prefetched(self, items: Iterable[_T], *, ahead: int) -> Iterator[_T]:
        """``items`` produced on a thread, at most ``ahead`` in advance, so the HTTP reads overlap the
        database writes while memory stays bounded. The producer's error is raised here, after the
        items before it; leaving the loop early stops the producer."""
        handoff: queue.Queue[tuple[Any, BaseException | None]] = queue.Queue(maxsize=ahead)
        stop = threading.Event()

        def put(entry: tuple[Any, BaseException | None]) -> bool:
            while not stop.is_set():
                try:
                    handoff.put(entry, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce() -> None:
            try:
                with correlation.bound(self.correlation_id):
                    for item in items:
                        if not put((item, None)):
                            return
            except BaseException as error:  # handed to the consumer, which raises it
                put((_END, error))
                return
            put((_END, None))

        producer = threading.Thread(target=produce, name="discovery-pages", daemon=True)
        producer.start()
        try:
            while True:
                item, error = handoff.get()
                if item is _END:
                    if error is not None:
                        raise error
                    return
                yield item
        finally:
            stop.set()
            producer.join()

    def _list_mailbox_ids(self) -> None:
        client = self.pool.client()
        for page in _pages(client.iter_rows("mailboxes", select=("mailboxid",), page_size=PAGE_SIZE)):
            self.scratch.add_seen(row_id(row, "mailboxid", "mailbox") for row in page)
        self.scratch.analyze()

    def _read_unknown_mailboxes(self) -> None:
        """Mailboxes Dataverse lists that the inventory lacks (or holds as removed): read them by id."""
        after: uuid.UUID | None = None
        while True:
            ids = self.scratch.unknown_seen(after=after, limit=UNIT)
            if not ids:
                break
            after = ids[-1]
            client = self.pool.client()
            rows: list[dict[str, Any]] = []
            for chunk in chunked(ids, IDS_PER_REQUEST):
                rows.extend(
                    client.iter_rows(
                        "mailboxes",
                        select=MAILBOX_COLUMNS,
                        filter=odata_ids_filter("mailboxid", chunk),
                        page_size=PAGE_SIZE,
                    )
                )
            if rows:
                self._submit_rows(rows)
        self._drain()

    def _submit_rows(self, rows: Sequence[Mapping[str, Any]]) -> None:
        mailboxes = [mailbox_row(row) for row in rows]
        for mailbox in mailboxes:
            self._saw_modified(mailbox.modified_on)
        ids = [mailbox.id for mailbox in mailboxes]
        existing = {
            row.dataverse_id: row
            for row in InventoryMailbox.objects.filter(among("dataverse_id", ids, array_type="uuid"))
        }
        owner_ids = {mailbox.regarding_id for mailbox in mailboxes if mailbox.regarding_id}
        owners = self.scratch.owners(owner_ids)
        if self.incremental:
            owners.update(self._fetch_owners(owner_ids - owners.keys(), existing.values()))
        alerts = self.scratch.alert_counts(ids)
        candidates = [
            self._candidate_from_dataverse(
                mailbox,
                existing=existing.get(mailbox.id),
                owner=owners.get(mailbox.regarding_id) if mailbox.regarding_id else None,
                alerts=alerts.get(mailbox.id, 0),
            )
            for mailbox in mailboxes
        ]
        self.seen += len(candidates)
        self._submit(candidates)

    def _fetch_owners(self, missing: set[uuid.UUID], existing: Iterable[InventoryMailbox]) -> dict[uuid.UUID, Owner]:
        """Owners an incremental run did not read (unchanged since the last run), fetched by id."""
        if not missing:
            return {}
        known_queues = {row.owner_dataverse_id for row in existing if row.owner_type == OwnerType.QUEUE}
        client = self.pool.client()
        found: list[OwnerRow] = []
        users_first = sorted(missing - known_queues)
        for chunk in chunked(users_first, IDS_PER_REQUEST):
            rows = client.iter_rows("systemusers", select=USER_COLUMNS, filter=odata_ids_filter("systemuserid", chunk))
            found.extend(self._user_owner(row) for row in rows)
        rest = sorted(missing - {owner.id for owner in found})
        for chunk in chunked(rest, IDS_PER_REQUEST):
            rows = client.iter_rows("queues", select=QUEUE_COLUMNS, filter=odata_ids_filter("queueid", chunk))
            found.extend(self._queue_owner(row) for row in rows)
        self.scratch.add_owners(found)
        return self.scratch.owners(owner.id for owner in found)

    def _candidate_from_dataverse(
        self, mailbox: MailboxRow, *, existing: InventoryMailbox | None, owner: Owner | None, alerts: int
    ) -> _Candidate:
        forward = mailbox.is_forward_mailbox
        regarding = mailbox.regarding_id
        profile = self.context.profiles.get(mailbox.profile_id) if mailbox.profile_id else None
        values: dict[str, Any] = {
            "name": mailbox.name[:300],
            "email_address": mailbox.email_address[:320],
            "profile_id": mailbox.profile_id,
            "profile_name": profile.name if profile else "",
            "incoming_delivery": mailbox.incoming_delivery,
            "outgoing_delivery": mailbox.outgoing_delivery,
            "act_delivery": mailbox.act_delivery,
            "email_approval": mailbox.email_approval,
            "incoming_status": mailbox.incoming_status,
            "outgoing_status": mailbox.outgoing_status,
            "act_status": mailbox.act_status,
            "is_forward_mailbox": forward,
            "open_error_alerts": alerts,
            "dataverse_modified_on": mailbox.modified_on,
            "removed_at": None,
            "owner_dataverse_id": regarding,
        }
        if owner is not None:
            values.update(_owner_values(owner))
        elif existing is not None and regarding is not None and existing.owner_dataverse_id == regarding:
            values.update({name: getattr(existing, name) for name in _OWNER_FIELDS})
        else:
            # No owner, or one Dataverse no longer has (an orphaned mailbox).
            values.update(
                {
                    "owner_type": str(owner_type_of(None, forward) if regarding is None else OwnerType.USER),
                    "owner_name": "",
                    "owner_disabled": False,
                    "business_unit_id": None,
                    "business_unit_name": "",
                    "team_name": "",
                }
            )
        candidate = _Candidate(dataverse_id=mailbox.id, existing=existing, values=values, read=True)
        candidate.graph_key = _graph_key(values, owner)
        return candidate

    # --- mailboxes from the inventory (incremental passes) ---------------------------------------

    def _reprocess(
        self, queryset: QuerySet[InventoryMailbox], *, recheck: bool, only_if_alerts_changed: bool = False
    ) -> None:
        last = 0
        while True:
            rows = list(queryset.filter(pk__gt=last).order_by("pk")[:UNIT])
            if not rows:
                break
            last = rows[-1].pk
            owners = self.scratch.owners(row.owner_dataverse_id for row in rows if row.owner_dataverse_id)
            alerts = self.scratch.alert_counts(row.dataverse_id for row in rows)
            candidates = []
            for row in rows:
                count = alerts.get(row.dataverse_id, 0)
                if only_if_alerts_changed and count == row.open_error_alerts:
                    continue
                values = {name: getattr(row, name) for name in DATA_FIELDS}
                owner = owners.get(row.owner_dataverse_id) if row.owner_dataverse_id else None
                if owner is not None:
                    values.update(_owner_values(owner))
                values["open_error_alerts"] = count
                candidate = _Candidate(dataverse_id=row.dataverse_id, existing=row, values=values)
                key = _graph_key(values, owner)
                if key and (recheck or row.exchange_presence == ExchangePresence.UNKNOWN):
                    candidate.graph_key = key
                candidates.append(candidate)
            if candidates:
                self._submit(candidates)
        self._drain()

    # --- Graph, classification and writing ------------------------------------------------------

    def _submit(self, candidates: list[_Candidate]) -> None:
        keys = list(dict.fromkeys(c.graph_key for c in candidates if c.graph_key))
        work = _Slice(candidates)
        work.presence = [self.executor.submit(self._presence, chunk) for chunk in chunked(keys, MAX_BATCH_REQUESTS)]
        self.in_flight.append(work)
        while len(self.in_flight) > UNITS_IN_FLIGHT:
            self._complete(self.in_flight.popleft())

    def _drain(self) -> None:
        while self.in_flight:
            self._complete(self.in_flight.popleft())

    def _presence(self, keys: Sequence[str]) -> tuple[dict[str, MailboxPresence], M365Error | None]:
        """One Graph ``$batch`` (on a worker thread). Failures are reported, not raised: the mailboxes keep
        their last known presence and the next run asks again. Without permission, stop asking."""
        if self.graph_stopped is not None:
            return {}, self.graph_stopped
        try:
            with correlation.bound(self.correlation_id):  # worker threads do not inherit the job's
                return self.graph.batch_mailbox_presence(keys), None
        except (AuthenticationError, AccessDeniedError) as error:
            self.graph_stopped = error
            return {}, error
        except M365Error as error:
            logger.warning("discovery %s: a Graph presence batch failed: %s", self.sync.pk, error)
            return {}, error

    def _complete(self, work: _Slice) -> None:
        found: dict[str, MailboxPresence] = {}
        for future in work.presence:
            answers, _error = future.result()
            found.update(answers)
        now = timezone.now()
        listed = _listed(c.existing.pk for c in work.candidates if c.existing is not None)
        creates: list[dict[str, Any]] = []
        updates: list[InventoryMailbox] = []
        update_fields: set[str] = set()
        history: list[InventoryChange] = []
        touched: dict[tuple[bool, bool], list[int]] = {}
        for candidate in work.candidates:
            values = candidate.values
            existing = candidate.existing
            presence = found.get(candidate.graph_key) if candidate.graph_key else None
            checked = presence is not None
            if presence is not None:
                values["exchange_presence"], values["user_purpose"] = _presence_values(presence)
                self.checked += 1
            else:
                if candidate.graph_key:
                    self.graph_failures += 1
                values["exchange_presence"] = existing.exchange_presence if existing else ExchangePresence.UNKNOWN.value
                values["user_purpose"] = existing.user_purpose if existing else ""
            listed_now = existing is not None and existing.pk in listed
            _apply_verdict(values, _verdict(values, self.context, listed=listed_now))
            if existing is None:
                creates.append(
                    {
                        "dataverse_id": candidate.dataverse_id,
                        **values,
                        "presence_checked_at": now if checked else None,
                        "first_seen_at": now,
                        "last_seen_at": now,
                        "last_sync_id": self.sync.pk,
                    }
                )
                continue
            before = {name: getattr(existing, name) for name in DATA_FIELDS}
            different = [name for name in DATA_FIELDS if before[name] != values[name]]
            if not different:
                touched.setdefault((candidate.read, checked), []).append(existing.pk)
                continue
            for name in different:
                setattr(existing, name, values[name])
            update_fields.update(different)
            existing.last_sync_id = self.sync.pk
            if candidate.read:
                existing.last_seen_at = now
            if checked:
                existing.presence_checked_at = now
            updates.append(existing)
            tracked = _history(before, values)
            if tracked:
                history.append(InventoryChange(mailbox=existing, sync_id=self.sync.pk, at=now, changes=tracked))
        with transaction.atomic():
            _create_mailboxes(creates)
            if updates:
                InventoryMailbox.objects.bulk_update(
                    updates,
                    sorted(update_fields | {"last_sync", "last_seen_at", "presence_checked_at"}),
                    batch_size=500,
                )
            InventoryChange.objects.bulk_create(history, batch_size=UNIT)
            for (read, checked), pks in touched.items():
                stamp: dict[str, Any] = {"last_sync_id": self.sync.pk}
                if read:
                    stamp["last_seen_at"] = now
                if checked:
                    stamp["presence_checked_at"] = now
                InventoryMailbox.objects.filter(among("pk", pks, array_type="bigint")).update(**stamp)
        self.changed += len(creates) + len(updates)
        self._save_progress()

    # --- removals -------------------------------------------------------------------------------

    def _mark_removed(self) -> None:
        live = InventoryMailbox.objects.filter(removed_at__isnull=True)
        if self.incremental:
            listed = self.scratch.seen_count()
            # The listing's ids are in the scratch table (its own SQL, no outside input).
            gone = live.exclude(dataverse_id__in=RawSQL(self.scratch.seen_ids_sql(), []))  # noqa: S611
        else:
            listed = self.seen
            gone = live.exclude(last_sync_id=self.sync.pk)  # a full run stamps every mailbox it read
        if listed == 0:
            # Dataverse always has mailboxes (every user has one): an empty answer is not a mass deletion.
            if live.exists():
                self.warnings.append("Dataverse listed no mailboxes at all, so none was marked as removed.")
            return
        last = 0
        while True:
            pks = list(gone.filter(pk__gt=last).order_by("pk").values_list("pk", flat=True)[:UNIT])
            if not pks:
                break
            last = pks[-1]
            now = timezone.now()
            with transaction.atomic():
                InventoryMailbox.objects.filter(among("pk", pks, array_type="bigint")).update(
                    removed_at=now, last_sync_id=self.sync.pk
                )
                InventoryChange.objects.bulk_create(
                    [
                        InventoryChange(mailbox_id=pk, sync_id=self.sync.pk, at=now, changes={"removed": [False, True]})
                        for pk in pks
                    ],
                    batch_size=UNIT,
                )
            self.removed += len(pks)
            self._save_progress()


# --- small helpers ---------------------------------------------------------------------------------

_CREATE_FIELDS = (
    "dataverse_id",
    *DATA_FIELDS,
    "presence_checked_at",
    "first_seen_at",
    "last_seen_at",
    "last_sync_id",
)


def _create_mailboxes(rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert new inventory mailboxes: COPY on PostgreSQL (the first run writes every one), else bulk_create."""
    if not rows:
        return
    if connection.vendor != "postgresql":
        InventoryMailbox.objects.bulk_create([InventoryMailbox(**row) for row in rows], batch_size=UNIT)
        return
    meta = InventoryMailbox._meta
    fields = [meta.get_field(name.removesuffix("_id") if name == "last_sync_id" else name) for name in _CREATE_FIELDS]
    quote = connection.ops.quote_name
    copy_rows(
        connection,
        quote(meta.db_table),
        [quote(field.column) for field in fields],
        ([json.dumps(row[name]) if name == "blockers" else row[name] for name in _CREATE_FIELDS] for row in rows),
    )


_OWNER_FIELDS = ("owner_type", "owner_name", "owner_disabled", "business_unit_id", "business_unit_name", "team_name")


def _owner_values(owner: Owner) -> dict[str, Any]:
    return {
        "owner_type": str(owner.kind),
        "owner_name": owner.name[:300],
        "owner_disabled": owner.disabled,
        "business_unit_id": owner.business_unit_id,
        "business_unit_name": owner.business_unit_name[:300],
        "team_name": owner.team_name[:300],
    }


def _graph_key(values: Mapping[str, Any], owner: Owner | None) -> str | None:
    """How to ask Graph about this mailbox, when it is worth asking (an address and an enabled owner).

    A user's mailbox by the user's directory object id (exact, and immune to an address that is
    only an alias); anything else by its address.
    """
    address = values["email_address"]
    if not address or values["owner_disabled"]:
        return None
    if owner is not None and owner.kind == OwnerType.USER and owner.entra_object_id:
        return owner.entra_object_id
    return address


def _pages(rows: Iterable[Any], *, size: int = PAGE_SIZE) -> Iterable[list[Any]]:
    """Rows in lists of ``size`` (the generator underneath fetches one page at a time)."""
    page: list[Any] = []
    for row in rows:
        page.append(row)
        if len(page) >= size:
            yield page
            page = []
    if page:
        yield page
