"""Pre-flight: a dry run over a wave's mailboxes that reads their live state and changes nothing.

For every mailbox it records what the migration would change (before → after, in Dynamics 365's
own words) and every finding that would make the migration fail, each with a plain-English fix.
It reads Dataverse in pages of ``BATCH`` mailboxes (the mailboxes, their owners and their open
error alerts by id) and asks Microsoft Graph about Exchange Online hosting 20 mailboxes to a
``$batch``, so a wave of thousands costs a few hundred requests. Progress is saved after every
page; a failure is recorded on the run for the wave page to show.

The pre-flight a platform admin approves stays attached to the wave (``Wave.approved_preflight``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from migration.classification import approval_required
from migration.models import (
    OwnerType,
    PreflightResult,
    PreflightRun,
    PreflightStatus,
    PreflightVerdict,
    Wave,
    WaveMailbox,
    WaveMailboxState,
    WaveStatus,
)
from migration.selectors.inventory import (
    ACT_DELIVERY_LABELS,
    APPROVAL_LABELS,
    INCOMING_DELIVERY_LABELS,
    OUTGOING_DELIVERY_LABELS,
    dataverse_label,
)
from portal.accounts.models import User
from portal.audit.models import Outcome
from portal.audit.services import audit_record
from portal.csv_safe import csv_rows
from portal.exceptions import InvalidStateError, PortalError
from portal.m365.config import M365Config
from portal.m365.dataverse import DataverseClient, DataverseClientPool, odata_ids_filter
from portal.m365.errors import M365Error
from portal.m365.graph import GraphClient, MailboxPresence, PresenceReason
from portal.m365.http import build_session
from portal.m365.rows import EmailServerProfile, Mailbox, Organization, Queue, SystemUser, TraceLevel
from portal.policy.services import policy_get
from portal.queue import enqueue_on_commit

logger = logging.getLogger(__name__)

PREFLIGHT_JOB_TIMEOUT = 2 * 3600
# A queued run that no worker took up within this long is treated as lost.
QUEUED_GIVE_UP = dt.timedelta(hours=6)
# Mailboxes read per Dataverse request ("mailboxid eq … or …" stays well inside URL limits).
BATCH = 50
SSS = 2  # incoming/outgoing: Server-Side Synchronization or Email Router
ACT_SSS = 1  # actdeliverymethod is numbered differently: 1 is server-side sync
APPROVED = 1
TEST_SUCCESS = 1
# Server to Server Authentication, OAuth with Entra ID: what an Exchange Online profile uses.
EXCHANGE_ONLINE_CREDENTIALS = (2, 7)
LEGACY_SERVER_TYPES = (1, 4)  # POP3/SMTP, IMAP/SMTP

# States of a wave in which its mailboxes can still be checked before approval.
CHECKABLE_WAVE_STATES = (WaveStatus.DRAFT, WaveStatus.AWAITING_APPROVAL)


class PreflightError(PortalError):
    """A pre-flight cannot be requested or run as asked."""


# --- requesting --------------------------------------------------------------------------------


def preflight_request(*, actor: User, wave_id: int) -> PreflightRun:
    """Queue a pre-flight of the wave's mailboxes; while one is queued or running, return that one."""
    if not settings.M365.enabled:
        raise PreflightError("The portal is not connected to Microsoft 365, so the mailboxes cannot be checked.")
    with transaction.atomic():
        wave = Wave.objects.select_for_update().filter(pk=wave_id).first()
        if wave is None:
            raise PreflightError("The wave no longer exists.")
        if wave.status not in CHECKABLE_WAVE_STATES:
            raise InvalidStateError(
                f"The wave is {wave.get_status_display().lower()}, so its pre-flight cannot be run again."
            )
        _expire_abandoned(wave)
        active = wave.preflights.filter(status__in=(PreflightStatus.QUEUED, PreflightStatus.RUNNING)).first()
        if active is not None:
            return active
        total = WaveMailbox.objects.filter(wave=wave).exclude(state=WaveMailboxState.CANCELLED).count()
        if not total:
            raise PreflightError("The wave has no mailboxes to check.")
        run = PreflightRun.objects.create(
            wave=wave, requested_by=actor, requested_at=timezone.now(), mailboxes_total=total
        )
        audit_record(
            actor=actor,
            action="wave.preflight_requested",
            object_type="wave",
            object_id=wave.pk,
            after={"preflight": run.pk, "mailboxes": total},
        )
        from migration.jobs import preflight_run_job

        enqueue_on_commit(
            preflight_run_job,
            run.pk,
            job_timeout=PREFLIGHT_JOB_TIMEOUT,
            on_enqueue_error=lambda exc: _not_queued(run.pk),
        )
    return run


def _expire_abandoned(wave: Wave) -> None:
    """A run its worker lost (killed, or never picked up) must not block the next request for ever."""
    now = timezone.now()
    message = "The pre-flight stopped without finishing (its background worker was lost). Run it again."
    PreflightRun.objects.filter(
        wave=wave, status=PreflightStatus.RUNNING, started_at__lt=now - dt.timedelta(seconds=PREFLIGHT_JOB_TIMEOUT)
    ).update(status=PreflightStatus.FAILED, finished_at=now, error=message)
    PreflightRun.objects.filter(wave=wave, status=PreflightStatus.QUEUED, requested_at__lt=now - QUEUED_GIVE_UP).update(
        status=PreflightStatus.FAILED, finished_at=now, error=message
    )


def _not_queued(preflight_id: int) -> None:
    PreflightRun.objects.filter(pk=preflight_id, status=PreflightStatus.QUEUED).update(
        status=PreflightStatus.FAILED,
        finished_at=timezone.now(),
        error="The pre-flight could not be queued because the background queue is unavailable. Try again.",
    )


# --- running -----------------------------------------------------------------------------------


def preflight_run(*, preflight_id: int) -> PreflightRun | None:
    """The job's work: claim the run, check every mailbox, record results and progress.

    A duplicate job for a run already claimed does nothing. Microsoft 365 refusing or failing is
    recorded on the run (the wave page shows it); anything unexpected is recorded and re-raised.
    """
    claimed = PreflightRun.objects.filter(pk=preflight_id, status=PreflightStatus.QUEUED).update(
        status=PreflightStatus.RUNNING, started_at=timezone.now()
    )
    if not claimed:
        logger.info("pre-flight %s already claimed or finished", preflight_id)
        return None
    run = PreflightRun.objects.select_related("wave").get(pk=preflight_id)
    try:
        _Preflight(run, settings.M365).run()
    except (M365Error, PortalError) as exc:
        _fail(run, exc)
    except BaseException as exc:
        _fail(run, exc)
        raise
    return PreflightRun.objects.get(pk=preflight_id)


def _fail(run: PreflightRun, exc: BaseException) -> None:
    if isinstance(exc, M365Error):
        message = f"Microsoft 365 refused or failed a request, so the pre-flight stopped: {exc}"
    elif isinstance(exc, PortalError):
        message = exc.message
    else:
        message = f"The pre-flight stopped because of an unexpected error ({type(exc).__name__})."
    logger.warning("pre-flight %s failed: %s", run.pk, message)
    with transaction.atomic():
        PreflightRun.objects.filter(pk=run.pk, status=PreflightStatus.RUNNING).update(
            status=PreflightStatus.FAILED, finished_at=timezone.now(), error=message[:2000]
        )
        audit_record(
            actor=None,
            action="wave.preflight_failed",
            object_type="wave",
            object_id=run.wave_id or "",
            outcome=Outcome.FAILURE,
            reason=message,
        )


@dataclass(frozen=True)
class _Organisation:
    approval_for_users: bool
    approval_for_queues: bool
    profile_id: str | None  # the Exchange Online profile, if one is configured
    profile_name: str
    profile_problem: str
    profile_names: Mapping[str, str]


@dataclass(frozen=True)
class _Owner:
    kind: str
    name: str
    disabled: bool
    graph_key: str | None


class _Preflight:
    def __init__(self, run: PreflightRun, config: M365Config) -> None:
        if not config.enabled:
            raise PreflightError("The portal is not connected to Microsoft 365, so the mailboxes cannot be checked.")
        self.run_row = run
        self.wave = run.wave
        session = build_session(config)
        self.pool = DataverseClientPool(config, session=session)
        self.graph = GraphClient(config, session=session)
        self.counts = dict.fromkeys(PreflightVerdict.values, 0)
        self.graph_problem = ""

    def run(self) -> None:
        if self.wave is None:
            raise PreflightError("The pre-flight belongs to no wave.")
        organisation = self._organisation()
        entries = (
            WaveMailbox.objects.filter(wave=self.wave)
            .exclude(state=WaveMailboxState.CANCELLED)
            .select_related("mailbox")
            .order_by("position", "id")
        )
        page: list[WaveMailbox] = []
        for entry in entries.iterator(chunk_size=BATCH * 4):
            page.append(entry)
            if len(page) >= BATCH:
                self._check(page, organisation)
                page = []
        if page:
            self._check(page, organisation)
        summary = {
            **self.counts,
            "exchange_online_profile": organisation.profile_name,
            "organisation_problem": organisation.profile_problem,
            "graph_problem": self.graph_problem,
            "migrate_act_for_users": self.wave.migrate_act_for_users,
        }
        PreflightRun.objects.filter(pk=self.run_row.pk).update(
            status=PreflightStatus.FINISHED, finished_at=timezone.now(), summary=summary
        )

    # --- the organisation ------------------------------------------------------------------------

    def _client(self) -> DataverseClient:
        return self.pool.client()

    def _organisation(self) -> _Organisation:
        client = self._client()
        organisations = [
            Organization.from_row(row) for row in client.iter_rows("organizations", select=Organization.SELECT)
        ]
        if not organisations:
            raise PreflightError("Dataverse returned no organisation row, so its email settings are unknown.")
        organisation = organisations[0]
        profiles = [
            EmailServerProfile.from_row(row)
            for row in client.iter_rows("emailserverprofiles", select=EmailServerProfile.SELECT)
        ]
        profile_id, problem = exchange_online_profile(profiles)
        names = {profile.id: profile.name or "Unnamed profile" for profile in profiles}
        return _Organisation(
            approval_for_users=organisation.require_approval_for_user_email is not False,
            approval_for_queues=organisation.require_approval_for_queue_email is not False,
            profile_id=profile_id,
            profile_name=names.get(profile_id, "") if profile_id else "",
            profile_problem=problem,
            profile_names=names,
        )

    # --- one page of mailboxes -------------------------------------------------------------------

    def _check(self, entries: Sequence[WaveMailbox], organisation: _Organisation) -> None:
        client = self._client()
        ids = [str(entry.mailbox.dataverse_id) for entry in entries]
        live = {
            mailbox.id: mailbox
            for mailbox in (
                Mailbox.from_row(row)
                for row in client.iter_rows(
                    "mailboxes", select=Mailbox.SELECT, filter=odata_ids_filter("mailboxid", ids)
                )
            )
        }
        owners = self._owners(client, entries, live)
        alerts = self._alerts(client, list(live))
        keys = [
            key
            for mailbox in live.values()
            if (key := _graph_key(mailbox, owners.get(mailbox.regarding_id or ""))) is not None
        ]
        presence = self._presence(keys)
        now = timezone.now()
        results = []
        for entry, mailbox_id in zip(entries, ids, strict=True):
            mailbox = live.get(mailbox_id)
            owner = owners.get(mailbox.regarding_id or "") if mailbox is not None else None
            key = _graph_key(mailbox, owner) if mailbox is not None else None
            verdict, state, changes, findings = assess(
                mailbox=mailbox,
                owner=owner,
                alerts=alerts.get(mailbox_id, 0),
                presence=presence.get(key) if key else None,
                presence_asked=key is not None,
                organisation=organisation,
                migrate_act_for_users=self.wave.migrate_act_for_users,
                is_queue=entry.is_queue or entry.mailbox.owner_type == OwnerType.QUEUE,
            )
            self.counts[verdict] += 1
            results.append(
                PreflightResult(
                    preflight=self.run_row,
                    mailbox_id=entry.mailbox_id,
                    verdict=verdict,
                    live_state=state,
                    changes=changes,
                    findings=findings,
                    checked_at=now,
                )
            )
        with transaction.atomic():
            PreflightResult.objects.bulk_create(results, ignore_conflicts=True)
            PreflightRun.objects.filter(pk=self.run_row.pk).update(
                mailboxes_checked=F("mailboxes_checked") + len(results), summary=dict(self.counts)
            )

    def _owners(
        self, client: DataverseClient, entries: Sequence[WaveMailbox], live: Mapping[str, Mailbox]
    ) -> dict[str, _Owner]:
        regarding = {mailbox.regarding_id for mailbox in live.values() if mailbox.regarding_id}
        if not regarding:
            return {}
        queue_hint = {
            str(entry.mailbox.owner_dataverse_id)
            for entry in entries
            if entry.mailbox.owner_type == OwnerType.QUEUE and entry.mailbox.owner_dataverse_id
        }
        owners: dict[str, _Owner] = {}
        users_first = sorted(regarding - queue_hint)
        if users_first:
            for row in client.iter_rows(
                "systemusers", select=SystemUser.SELECT, filter=odata_ids_filter("systemuserid", users_first)
            ):
                user = SystemUser.from_row(row)
                owners[user.id] = _Owner(
                    kind=OwnerType.USER,
                    name=user.full_name or user.domain_name or "",
                    disabled=bool(user.is_disabled),
                    graph_key=user.entra_object_id,
                )
        rest = sorted(regarding - set(owners))
        if rest:
            for row in client.iter_rows("queues", select=Queue.SELECT, filter=odata_ids_filter("queueid", rest)):
                queue = Queue.from_row(row)
                owners[queue.id] = _Owner(
                    kind=OwnerType.QUEUE, name=queue.name or "", disabled=queue.state_code == 1, graph_key=None
                )
        return owners

    def _alerts(self, client: DataverseClient, mailbox_ids: Sequence[str]) -> dict[str, int]:
        if not mailbox_ids:
            return {}
        counts: dict[str, int] = {}
        regarding_these = odata_ids_filter("_regardingobjectid_value", mailbox_ids)
        rows = client.iter_rows(
            "tracelogs",
            select=("tracelogid", "_regardingobjectid_value"),
            filter=f"level eq {int(TraceLevel.ERROR)} and ({regarding_these})",
        )
        for row in rows:
            regarding = row.get("_regardingobjectid_value")
            if isinstance(regarding, str):
                with contextlib.suppress(ValueError):
                    key = str(uuid.UUID(regarding))
                    counts[key] = counts.get(key, 0) + 1
        return counts

    def _presence(self, keys: Sequence[str]) -> dict[str, MailboxPresence]:
        """Graph's answers; a failed batch leaves those mailboxes unchecked (a finding says so)."""
        if not keys:
            return {}
        try:
            return self.graph.batch_mailbox_presence(keys)
        except M365Error as error:
            logger.warning("pre-flight %s: a Graph presence batch failed: %s", self.run_row.pk, error)
            self.graph_problem = f"Microsoft Graph could not be asked about some mailboxes: {error}"
            return {}


def exchange_online_profile(profiles: Sequence[EmailServerProfile]) -> tuple[str | None, str]:
    """The Exchange Online profile the policy names (by id, or else by name with S2S/OAuth), or why none."""
    policy = policy_get()
    wanted_id = (policy.exchange_online_profile_id or "").strip()
    if wanted_id:
        with contextlib.suppress(ValueError):
            wanted_id = str(uuid.UUID(wanted_id))
        for profile in profiles:
            if profile.id == wanted_id:
                if profile.state_code not in (None, 0):
                    return None, f"The Exchange Online profile set in the policy ({profile.name}) is inactive."
                return profile.id, ""
        return None, f"The Exchange Online profile set in the policy ({wanted_id}) is not in Dynamics 365."
    wanted_name = policy.exchange_online_profile_name.strip().casefold()
    for profile in profiles:
        if (
            (profile.name or "").strip().casefold() == wanted_name
            and profile.server_type not in LEGACY_SERVER_TYPES
            and profile.incoming_credential_retrieval in EXCHANGE_ONLINE_CREDENTIALS
            and profile.state_code in (None, 0)
        ):
            return profile.id, ""
    return None, (
        f"No active server profile is named {policy.exchange_online_profile_name!r} with server-to-server or "
        "OAuth credentials."
    )


def _graph_key(mailbox: Mailbox | None, owner: _Owner | None) -> str | None:
    """How to ask Graph about the mailbox: a user's directory object id, else its address."""
    if mailbox is None or not (mailbox.email_address or "").strip():
        return None
    if owner is not None and owner.disabled:
        return None
    if owner is not None and owner.kind == OwnerType.USER and owner.graph_key:
        return owner.graph_key
    return (mailbox.email_address or "").strip()


# --- the assessment of one mailbox (pure) ------------------------------------------------------


def _finding(code: str, message: str, fix: str, *, blocking: bool) -> dict[str, Any]:
    return {"code": code, "message": message, "fix": fix, "blocking": blocking}


def _change(field: str, label: str, before: str, after: str) -> dict[str, str]:
    return {"field": field, "label": label, "before": before, "after": after}


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def assess(
    *,
    mailbox: Mailbox | None,
    owner: _Owner | None,
    alerts: int,
    presence: MailboxPresence | None,
    presence_asked: bool,
    organisation: _Organisation,
    migrate_act_for_users: bool,
    is_queue: bool,
) -> tuple[str, dict[str, Any], list[dict[str, str]], list[dict[str, Any]]]:
    """``(verdict, live_state, changes, findings)`` for one mailbox, from what was read."""
    if mailbox is None:
        return (
            PreflightVerdict.GONE,
            {},
            [],
            [
                _finding(
                    "gone",
                    "The mailbox is no longer in Dynamics 365.",
                    "Leave it out of the wave. The next discovery run marks it as removed from the inventory.",
                    blocking=True,
                )
            ],
        )
    owner_kind = owner.kind if owner else (OwnerType.QUEUE if is_queue else OwnerType.NONE)
    is_user = owner_kind == OwnerType.USER
    incoming, outgoing = _int(mailbox.incoming_delivery_method), _int(mailbox.outgoing_delivery_method)
    act, approval = _int(mailbox.act_delivery_method), _int(mailbox.email_approval)
    needs_approval = approval_required(
        owner_kind, for_users=organisation.approval_for_users, for_queues=organisation.approval_for_queues
    )
    profile_name = organisation.profile_names.get(mailbox.email_server_profile_id or "", "")
    state = {
        "email_address": mailbox.email_address or "",
        "profile_id": mailbox.email_server_profile_id,
        "profile_name": profile_name,
        "incoming_delivery": incoming,
        "outgoing_delivery": outgoing,
        "act_delivery": act,
        "email_approval": approval,
        "incoming_status": _int(mailbox.incoming_status),
        "outgoing_status": _int(mailbox.outgoing_status),
        "act_status": _int(mailbox.act_status),
        "owner_type": str(owner_kind),
        "owner_name": owner.name if owner else "",
        "owner_disabled": bool(owner and owner.disabled),
        "open_error_alerts": alerts,
        "in_exchange_online": presence.in_exchange_online if presence else None,
        "user_purpose": presence.user_purpose if presence else None,
        "approval_required": needs_approval,
    }

    changes: list[dict[str, str]] = []
    if organisation.profile_id and mailbox.email_server_profile_id != organisation.profile_id:
        changes.append(
            _change("emailserverprofile", "Email server profile", profile_name or "None", organisation.profile_name)
        )
    if incoming != SSS:
        changes.append(
            _change(
                "incomingemaildeliverymethod",
                "Incoming email",
                dataverse_label(INCOMING_DELIVERY_LABELS, incoming),
                dataverse_label(INCOMING_DELIVERY_LABELS, SSS),
            )
        )
    if outgoing != SSS:
        changes.append(
            _change(
                "outgoingemaildeliverymethod",
                "Outgoing email",
                dataverse_label(OUTGOING_DELIVERY_LABELS, outgoing),
                dataverse_label(OUTGOING_DELIVERY_LABELS, SSS),
            )
        )
    if is_user and migrate_act_for_users and act != ACT_SSS:
        changes.append(
            _change(
                "actdeliverymethod",
                "Appointments, contacts and tasks",
                dataverse_label(ACT_DELIVERY_LABELS, act),
                dataverse_label(ACT_DELIVERY_LABELS, ACT_SSS),
            )
        )
    if needs_approval and approval != APPROVED:
        changes.append(
            _change(
                "emailrouteraccessapproval",
                "Email address approval",
                dataverse_label(APPROVAL_LABELS, approval),
                dataverse_label(APPROVAL_LABELS, APPROVED),
            )
        )

    findings: list[dict[str, Any]] = []
    if not (mailbox.email_address or "").strip():
        findings.append(
            _finding(
                "no_address",
                "The mailbox has no email address.",
                "Give the user or queue an email address in Dynamics 365.",
                blocking=True,
            )
        )
    if not organisation.profile_id:
        findings.append(
            _finding(
                "no_exchange_online_profile",
                "No Exchange Online email server profile is configured. " + organisation.profile_problem,
                "Create the Exchange Online profile in Dynamics 365 (server-to-server authentication), "
                "or set its id in the portal's policy.",
                blocking=True,
            )
        )
    if owner is not None and owner.disabled:
        findings.append(
            _finding(
                "owner_disabled",
                f"The {'user' if is_user else 'queue'} that owns the mailbox is disabled in Dynamics 365.",
                "Enable the owner in Dynamics 365, or take the mailbox out of the wave and exclude it from migration.",
                blocking=True,
            )
        )
    if presence is not None and not presence.in_exchange_online:
        if presence.reason == PresenceReason.USER_NOT_FOUND:
            findings.append(
                _finding(
                    "not_in_directory",
                    "Nobody in the directory has this mailbox's address.",
                    "Correct the address in Dynamics 365, or create the mailbox in Exchange Online.",
                    blocking=True,
                )
            )
        else:
            findings.append(
                _finding(
                    "not_in_exchange_online",
                    "The mailbox is not in Exchange Online (it is on-premises, inactive or has no mailbox).",
                    "Move the mailbox to Exchange Online, then run the pre-flight again.",
                    blocking=True,
                )
            )
    elif presence is None and presence_asked:
        findings.append(
            _finding(
                "presence_unknown",
                "Microsoft Graph did not answer whether the mailbox is in Exchange Online.",
                "Run the pre-flight again.",
                blocking=True,
            )
        )
    if needs_approval and approval != APPROVED:
        findings.append(
            _finding(
                "address_not_approved",
                "The email address is not approved, and the organisation requires approval. The migration will "
                "try to approve it, which Dynamics 365 refuses unless an Exchange or Global admin allows it.",
                "Ask an Exchange or Global admin to approve the address in Dynamics 365 (Settings, Email "
                "Configuration, Mailboxes, Approve Email) before the wave starts.",
                blocking=approval == 3,
            )
        )
    if alerts:
        findings.append(
            _finding(
                "open_error_alerts",
                f"The mailbox has {alerts} open error alert{'s' if alerts != 1 else ''} in Dynamics 365.",
                "Open the mailbox in Dynamics 365, read its alerts and fix their cause before migrating it.",
                blocking=True,
            )
        )

    blocking = any(finding["blocking"] for finding in findings)
    tested = (
        state["incoming_status"] == TEST_SUCCESS
        and state["outgoing_status"] == TEST_SUCCESS
        and bool(presence and presence.in_exchange_online)
    )
    if not changes and not blocking and tested:
        findings.append(
            _finding(
                "already_compliant",
                "The mailbox already uses server-side synchronisation on the Exchange Online profile.",
                "Nothing to do. Take it out of the wave.",
                blocking=False,
            )
        )
        return PreflightVerdict.ALREADY_COMPLIANT, state, changes, findings
    return (PreflightVerdict.BLOCKED if blocking else PreflightVerdict.READY), state, changes, findings


# --- reading results ---------------------------------------------------------------------------


def preflight_latest(wave_id: int) -> PreflightRun | None:
    return PreflightRun.objects.filter(wave_id=wave_id).order_by("-requested_at", "-id").first()


CSV_HEADER = (
    "mailbox",
    "email_address",
    "owner_type",
    "verdict",
    "changes",
    "findings",
    "fixes",
    "blocking",
    "checked_utc",
)


def _csv_rows(results: Iterator[PreflightResult]) -> Iterator[tuple[Any, ...]]:
    labels = dict(PreflightVerdict.choices)
    for result in results:
        changes = result.changes if isinstance(result.changes, list) else []
        findings = result.findings if isinstance(result.findings, list) else []
        yield (
            result.mailbox.name,
            result.mailbox.email_address,
            result.mailbox.owner_type,
            labels.get(result.verdict, result.verdict),
            "; ".join(
                f"{c.get('label')}: {c.get('before')} → {c.get('after')}" for c in changes if isinstance(c, dict)
            ),
            "; ".join(str(f.get("message", "")) for f in findings if isinstance(f, dict)),
            "; ".join(str(f.get("fix", "")) for f in findings if isinstance(f, dict)),
            "yes" if any(isinstance(f, dict) and f.get("blocking") for f in findings) else "no",
            result.checked_at.isoformat(),
        )


def preflight_csv(preflight_id: int) -> Iterator[str]:
    """Every result of the pre-flight as CSV lines, streamed, formula-like cells neutralised."""
    results = (
        PreflightResult.objects.filter(preflight_id=preflight_id)
        .select_related("mailbox")
        .only(
            "verdict",
            "changes",
            "findings",
            "checked_at",
            "mailbox__name",
            "mailbox__email_address",
            "mailbox__owner_type",
        )
        .order_by("id")
    )
    return csv_rows(CSV_HEADER, _csv_rows(results.iterator(chunk_size=2000)))
