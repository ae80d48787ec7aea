"""One shared world for the access-control and CSRF suites: the personas, their own objects, and
another team's objects that each persona must not reach.

Every object that belongs to another team carries ``THEIR_TEAM`` in its name or address; every
estate-wide object (waves, inventory, legacy sources, policy) carries ``ESTATE``. A refused answer
must contain neither; only platform admins (who see every team) and auditors (who read the whole
audit trail) may ever be shown another team's objects.

The world is built once per test module inside a transaction that is rolled back afterwards; each
test runs in a savepoint of its own, and every request in :func:`call` in a savepoint that is
rolled back too, so an allowed role's POST never changes what the next request sees.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from django.db import connection, transaction
from django.test import Client, TestCase
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from django.utils import timezone

from governance.models import (
    AlertLevel,
    AlertSource,
    MailboxAlert,
    ManagedKind,
    ManagedMailbox,
    ManagedSource,
    TrackingChange,
    TrackingChangeStatus,
)
from migration.models import Classification, DecommissionItem, LegacySourceKind, Readiness
from migration.selectors.decommission import ALL_MIGRATED
from migration.services import decommission as decommission_services
from onboarding.models import (
    ApproverKind,
    MailboxRequest,
    ProvisioningRun,
    RequestStage,
    RequestStatus,
    RunStatus,
    StageStatus,
    StepStatus,
)
from onboarding.services import approvals as approval_services
from onboarding.services.mailbox_requests import mailbox_request_submit
from portal.accounts.models import User
from portal.accounts.roles import Role
from portal.policy import services as policy_services
from portal.policy.models import TrackingRule
from tests.factories import UserFactory
from tests.migration.factories import (
    InventoryMailboxFactory,
    LegacySourceFactory,
    PreflightResultFactory,
    PreflightRunFactory,
    WaveFactory,
    WaveMailboxFactory,
    router_serving,
)
from tests.onboarding.factories import MailboxRequestFactory, RequestMemberFactory, TeamFactory
from tests.onboarding.provisioning_support import provisioning_request, start

THEIR_TEAM = "Quokkafield"
ESTATE = "Wombatgate"
MARKERS = (THEIR_TEAM.lower(), ESTATE.lower())
OWN_DRAFT = "Matrix own draft"
OWN_SUBMITTED = "Matrix own submitted"
OWN_QUEUE = "Matrix own queue"

ANONYMOUS = "anonymous"
PERSONAS = ("outsider", "requester", "approver", "platform_admin", "migration_lead", "auditor")
ROLES_OF = {
    "outsider": [],
    "requester": [Role.REQUESTER],
    "approver": [Role.APPROVER],
    "platform_admin": [Role.PLATFORM_ADMIN],
    "migration_lead": [Role.MIGRATION_LEAD],
    "auditor": [Role.AUDITOR],
}
# Who may be shown another team's objects at all: platform admins see every team, auditors the
# whole audit trail. Anyone else finding THEIR_TEAM in a page is a leak.
SEE_EVERY_TEAM = ("platform_admin", "auditor")

# Written to by requests without changing anyone's data: the session store.
_NOT_STATE = {"django_session"}


@dataclass
class World:
    people: dict[str, User]
    # the personas' own objects
    own_draft: MailboxRequest
    own_draft_member_id: int
    own_submitted: MailboxRequest
    own_stage: RequestStage
    own_delegation_id: int
    own_mailbox: ManagedMailbox
    own_alert: MailboxAlert
    own_change: TrackingChange
    our_team_id: int
    # another team's objects
    their_request: MailboxRequest
    their_member_id: int
    their_stage: RequestStage
    their_delegation_id: int
    their_mailbox: ManagedMailbox
    their_alert: MailboxAlert
    their_change: TrackingChange
    their_team_id: int
    # estate-wide objects, made by someone other than the personas
    configured_stage_id: int
    run_id: int
    failed_step_id: int
    inventory_mailbox_id: int
    source_id: int
    router_import_id: int
    wave_id: int
    entry_id: int
    preflight_id: int
    item_id: int
    evidence_id: int
    blackout_id: int


def _managed(*, name: str, address: str, team_id: int, owners: list[User]) -> ManagedMailbox:
    mailbox = ManagedMailbox.objects.create(
        dataverse_id=uuid.uuid4(),
        owner_dataverse_id=uuid.uuid4(),
        name=name,
        email_address=address,
        kind=ManagedKind.QUEUE,
        source=ManagedSource.ONBOARDING,
        team_id=team_id,
        tracking_rule=TrackingRule.ALL,
        retention_months=24,
        review_due_on=timezone.localdate() - dt.timedelta(days=3),
        added_at=timezone.now(),
    )
    mailbox.owners.set(owners)
    return mailbox


def _alert(mailbox: ManagedMailbox, text: str) -> MailboxAlert:
    now = timezone.now()
    return MailboxAlert.objects.create(
        key=f"access-matrix:{uuid.uuid4()}",
        source=AlertSource.DATAVERSE,
        mailbox=mailbox,
        level=AlertLevel.ERROR,
        code="4001",
        text=text,
        first_seen_at=now,
        last_seen_at=now,
        updated_at=now,
    )


def _change(mailbox: ManagedMailbox, requester: User) -> TrackingChange:
    now = timezone.now()
    return TrackingChange.objects.create(
        mailbox=mailbox,
        from_rule=mailbox.tracking_rule,
        to_rule=TrackingRule.EMAIL_ENABLED_RECORDS,
        reason=f"Over-tracking on {mailbox.name}",
        status=TrackingChangeStatus.PENDING,
        requested_by=requester,
        requested_at=now,
        updated_at=now,
    )


def _submitted(request: MailboxRequest) -> MailboxRequest:
    mailbox_request_submit(actor=request.requester, request_id=request.pk)
    request.refresh_from_db()
    assert request.status == RequestStatus.SUBMITTED
    return request


def _waiting_stage(request: MailboxRequest) -> RequestStage:
    return RequestStage.objects.get(request=request, status=StageStatus.WAITING)


def _needs_attention(run: ProvisioningRun) -> int:
    """Shape the run as the job leaves it when its first step fails for good; the failed step's id."""
    now = timezone.now()
    step = run.steps.order_by("order").first()
    step.status = StepStatus.FAILED
    step.attempts = 2
    step.started_at = step.finished_at = now
    step.error = f"{THEIR_TEAM} mailbox could not be created."
    step.save(update_fields=["status", "attempts", "started_at", "finished_at", "error"])
    ProvisioningRun.objects.filter(pk=run.pk).update(status=RunStatus.NEEDS_ATTENTION, last_error=step.error)
    MailboxRequest.objects.filter(pk=run.request_id).update(status=RequestStatus.NEEDS_ATTENTION)
    return step.pk


def build_world() -> World:
    """The personas and what is theirs, and what is not.

    "Our team": the requester is a member and owns its managed queue (so the tracking pages are
    theirs too); the approver is its business owner, so decides its requests' first stage and sees
    its mailboxes. The requester has a draft (with a member) and a submitted request whose first
    stage waits for the approver; the approver has out-of-office cover by the platform admin.

    "Their team" mirrors it with people outside the personas, and a provisioning run that needs
    attention. A lead outside the personas made the wave, Email Router source, import and
    decommission plan (with evidence); an admin outside them the blackout window and an extra
    approval stage. Outsider, migration lead and auditor own nothing.
    """
    people = {name: UserFactory(username=f"matrix-{name}", roles=ROLES_OF[name]) for name in PERSONAS}
    their_requester = UserFactory(username="matrix-their-requester", roles=[Role.REQUESTER])
    their_approver = UserFactory(username="matrix-their-approver", roles=[Role.APPROVER])
    their_admin = UserFactory(username="matrix-their-admin", roles=[Role.PLATFORM_ADMIN])
    their_lead = UserFactory(username="matrix-their-lead", roles=[Role.MIGRATION_LEAD])
    today = timezone.localdate()

    our_team = TeamFactory(name="Matrix own team", business_owners=[people["approver"]], members=[people["requester"]])
    their_team = TeamFactory(name=f"{THEIR_TEAM} casework", business_owners=[their_approver], members=[their_requester])

    # --- onboarding: the personas' requests, and another team's submitted one ---
    own_draft = MailboxRequestFactory(
        requester=people["requester"], team=our_team, display_name=OWN_DRAFT, local_part="matrix-own-draft"
    )
    own_draft_member = RequestMemberFactory(request=own_draft, email="own.member@example.gov.uk")
    own_submitted = _submitted(
        MailboxRequestFactory(
            requester=people["requester"],
            team=our_team,
            display_name=OWN_SUBMITTED,
            local_part="matrix-own-submitted",
        )
    )
    their_request = MailboxRequestFactory(
        requester=their_requester,
        team=their_team,
        display_name=f"{THEIR_TEAM} enquiries",
        local_part=f"{THEIR_TEAM.lower()}-enquiries",
        justification=f"{THEIR_TEAM} residents write to the casework team.",
    )
    their_member = RequestMemberFactory(request=their_request, email=f"{THEIR_TEAM.lower()}.member@example.gov.uk")
    their_request = _submitted(their_request)

    own_delegation = approval_services.delegation_create(
        actor=people["approver"], delegate=people["platform_admin"], starts_on=today, ends_on=today
    )
    their_delegation = approval_services.delegation_create(
        actor=their_approver, delegate=their_admin, starts_on=today, ends_on=today
    )
    configured = approval_services.approval_stage_create(
        actor=their_admin, name=f"{ESTATE} records check", approver_kind=ApproverKind.ROLE, role=Role.PLATFORM_ADMIN
    )

    run = start(
        provisioning_request(
            requester=their_requester,
            team=their_team,
            display_name=f"{THEIR_TEAM} bookings",
            local_part=f"{THEIR_TEAM.lower()}-bookings",
        ),
        their_admin,
    )
    failed_step_id = _needs_attention(run)

    # --- governance: a managed mailbox each, with an alert and a pending tracking change ---
    own_mailbox = _managed(
        name=OWN_QUEUE,
        address="matrix-own-queue@example.gov.uk",
        team_id=our_team.pk,
        owners=[people["requester"]],
    )
    their_mailbox = _managed(
        name=f"{THEIR_TEAM} queue",
        address=f"{THEIR_TEAM.lower()}-queue@example.gov.uk",
        team_id=their_team.pk,
        owners=[their_requester],
    )
    own_alert = _alert(own_mailbox, "The own queue could not connect to Exchange Online.")
    their_alert = _alert(their_mailbox, f"The {THEIR_TEAM} queue could not connect to Exchange Online.")
    own_change = _change(own_mailbox, people["requester"])
    their_change = _change(their_mailbox, their_requester)

    # --- migration: estate-wide objects another lead made ---
    inventory_mailbox = InventoryMailboxFactory(
        name=f"{ESTATE} complaints",
        email_address=f"{ESTATE.lower()}-complaints@example.gov.uk",
        classification=Classification.EMAIL_ROUTER,
        readiness=Readiness.READY,
    )
    source = LegacySourceFactory(
        name=f"{ESTATE.upper()}-ROUTER", kind=LegacySourceKind.EMAIL_ROUTER, created_by=their_lead
    )
    router_import = router_serving(source, inventory_mailbox)
    wave = WaveFactory(name=f"{ESTATE} wave", created_by=their_lead)
    entry = WaveMailboxFactory(wave=wave, mailbox=inventory_mailbox)
    preflight = PreflightRunFactory(wave=wave, mailboxes_total=1, mailboxes_checked=1)
    PreflightResultFactory(preflight=preflight, mailbox=inventory_mailbox)
    plan = decommission_services.decommission_plan_ensure(actor=their_lead, source_id=source.pk)
    item = DecommissionItem.objects.filter(plan=plan).exclude(code=ALL_MIGRATED).order_by("pk").first()
    decommission_services.decommission_item_update(
        actor=their_lead,
        item_id=item.pk,
        done=True,
        evidence_note=f"{ESTATE} router switched off",
        evidence_file=("evidence.txt", f"{ESTATE} router service stopped.\n".encode()),
    )
    evidence = item.evidence.get()
    now = timezone.now()
    blackout = policy_services.blackout_window_add(
        actor=their_admin,
        starts_at=now + dt.timedelta(days=10),
        ends_at=now + dt.timedelta(days=11),
        reason=f"{ESTATE} year-end freeze",
    )

    return World(
        people=people,
        own_draft=own_draft,
        own_draft_member_id=own_draft_member.pk,
        own_submitted=own_submitted,
        own_stage=_waiting_stage(own_submitted),
        own_delegation_id=own_delegation.pk,
        own_mailbox=own_mailbox,
        own_alert=own_alert,
        own_change=own_change,
        our_team_id=our_team.pk,
        their_request=their_request,
        their_member_id=their_member.pk,
        their_stage=_waiting_stage(their_request),
        their_delegation_id=their_delegation.pk,
        their_mailbox=their_mailbox,
        their_alert=their_alert,
        their_change=their_change,
        their_team_id=their_team.pk,
        configured_stage_id=configured.pk,
        run_id=run.pk,
        failed_step_id=failed_step_id,
        inventory_mailbox_id=inventory_mailbox.pk,
        source_id=source.pk,
        router_import_id=router_import.pk,
        wave_id=wave.pk,
        entry_id=entry.pk,
        preflight_id=preflight.pk,
        item_id=item.pk,
        evidence_id=evidence.pk,
        blackout_id=blackout.pk,
    )


@contextmanager
def world_for_module(django_db_blocker) -> Iterator[World]:
    """The world, for a module-scoped fixture: built once and rolled back after the module."""
    with refusals_not_logged(), django_db_blocker.unblock(), transaction.atomic():
        yield build_world()
        transaction.set_rollback(True)


# --- the URL patterns --------------------------------------------------------------------------


def url_names() -> dict[str, str]:
    """Every URL pattern by its namespaced name, with its route (for messages)."""
    found: dict[str, str] = {}

    def walk(resolver: URLResolver, prefix: str, namespace: str | None) -> None:
        for pattern in resolver.url_patterns:
            if isinstance(pattern, URLResolver):
                inner = namespace
                if pattern.namespace:
                    inner = f"{namespace}:{pattern.namespace}" if namespace else pattern.namespace
                walk(pattern, prefix + str(pattern.pattern), inner)
            elif isinstance(pattern, URLPattern):
                route = prefix + str(pattern.pattern)
                name = f"{namespace}:{pattern.name}" if namespace and pattern.name else pattern.name
                found[name or f"(unnamed) {route}"] = route

    walk(get_resolver(), "", None)
    return found


def _none(world: World) -> dict[str, Any]:
    return {}


# How to reach each URL with objects that are not the personas' own: another team's request,
# stage, delegation, mailbox, alert and change; estate-wide objects another lead or admin made.
THEIRS: dict[str, Any] = {
    "home": _none,
    "platform": _none,
    "accessibility": _none,
    "cookies": _none,
    "accounts:sign_in": _none,
    "accounts:sign_out": _none,
    "accounts:signed_out": _none,
    "accounts:entra_start": _none,
    "accounts:entra_callback": _none,
    "audit:events": _none,
    "audit:export": _none,
    "audit:verify": _none,
    "onboarding:requests": _none,
    "onboarding:request_start": _none,
    "onboarding:request_detail": lambda w: {"pk": w.their_request.pk},
    "onboarding:request_continue": lambda w: {"pk": w.their_request.pk},
    "onboarding:request_question": lambda w: {"pk": w.their_request.pk, "question": "name"},
    "onboarding:request_members": lambda w: {"pk": w.their_request.pk},
    "onboarding:request_member_remove": lambda w: {"pk": w.their_request.pk, "member_id": w.their_member_id},
    "onboarding:request_check": lambda w: {"pk": w.their_request.pk},
    "onboarding:request_submitted": lambda w: {"pk": w.their_request.pk},
    "onboarding:request_withdraw": lambda w: {"pk": w.their_request.pk},
    "onboarding:approvals": _none,
    "onboarding:out_of_office": _none,
    "onboarding:out_of_office_cancel": lambda w: {"delegation_id": w.their_delegation_id},
    "onboarding:approval_decision": lambda w: {"stage_id": w.their_stage.pk},
    "onboarding:approval_stages": _none,
    "onboarding:approval_stage_add": _none,
    "onboarding:approval_stage_change": lambda w: {"stage_id": w.configured_stage_id},
    "onboarding:approval_stage_move": lambda w: {"stage_id": w.configured_stage_id},
    "onboarding:approval_stage_deactivate": lambda w: {"stage_id": w.configured_stage_id},
    "onboarding:approval_stage_activate": lambda w: {"stage_id": w.configured_stage_id},
    "onboarding:provisioning_runs": _none,
    "onboarding:provisioning_run": lambda w: {"run_id": w.run_id},
    "onboarding:provisioning_step_retry": lambda w: {"run_id": w.run_id, "step_id": w.failed_step_id},
    "onboarding:provisioning_step_done": lambda w: {"run_id": w.run_id, "step_id": w.failed_step_id},
    "migration:dashboard": _none,
    "migration:discovery": _none,
    "migration:discovery_sync": _none,
    "migration:inventory": _none,
    "migration:inventory_export": _none,
    "migration:inventory_mailbox": lambda w: {"mailbox_id": w.inventory_mailbox_id},
    "migration:legacy_sources": _none,
    "migration:legacy_source_router_add": _none,
    "migration:legacy_source": lambda w: {"source_id": w.source_id},
    "migration:router_import": lambda w: {"import_id": w.router_import_id},
    "migration:annotations": _none,
    "migration:annotations_export": _none,
    "migration:annotation_edit": lambda w: {"mailbox_id": w.inventory_mailbox_id},
    "migration:waves": _none,
    "migration:wave_new": _none,
    "migration:wave_new_filters": _none,
    "migration:wave_new_upload": _none,
    "migration:wave_new_check": _none,
    "migration:wave": lambda w: {"wave_id": w.wave_id},
    "migration:wave_progress": lambda w: {"wave_id": w.wave_id},
    "migration:wave_decide": lambda w: {"wave_id": w.wave_id},
    # Cancelling is the most final of the wave's buttons.
    "migration:wave_action": lambda w: {"wave_id": w.wave_id, "action": "cancel"},
    "migration:wave_mailbox_rollback": lambda w: {"wave_id": w.wave_id, "entry_id": w.entry_id},
    "migration:wave_mailbox_priority": lambda w: {"wave_id": w.wave_id, "entry_id": w.entry_id},
    "migration:wave_preflight": lambda w: {"wave_id": w.wave_id, "preflight_id": w.preflight_id},
    "migration:wave_preflight_export": lambda w: {"wave_id": w.wave_id, "preflight_id": w.preflight_id},
    "migration:decommission": _none,
    "migration:decommission_outlook_sync": _none,
    "migration:decommission_org_check": _none,
    "migration:decommission_plan": lambda w: {"source_id": w.source_id},
    "migration:decommission_plan_start": lambda w: {"source_id": w.source_id},
    "migration:decommission_plan_details": lambda w: {"source_id": w.source_id},
    "migration:decommission_sign_off": lambda w: {"source_id": w.source_id},
    "migration:decommission_item": lambda w: {"item_id": w.item_id},
    "migration:decommission_evidence": lambda w: {"evidence_id": w.evidence_id},
    "policy:summary": _none,
    "policy:blackout_add": _none,
    "policy:blackout_remove": lambda w: {"window_id": w.blackout_id},
    "policy:section_change": lambda w: {"section": "tracking"},
    "governance:alerts": _none,
    "governance:alert": lambda w: {"alert_id": w.their_alert.pk},
    "governance:health_sync": _none,
    "governance:mailboxes": _none,
    "governance:mailbox": lambda w: {"mailbox_id": w.their_mailbox.pk},
    "governance:team": lambda w: {"team_id": w.their_team_id},
    "governance:retention": _none,
    "governance:tracking_report": _none,
    "governance:tracking_request": lambda w: {"mailbox_id": w.their_mailbox.pk},
    "governance:tracking_changes": _none,
    "governance:tracking_change": lambda w: {"change_id": w.their_change.pk},
    "governance:tracking_change_decide": lambda w: {"change_id": w.their_change.pk},
    "governance:tracking_change_retry": lambda w: {"change_id": w.their_change.pk},
}

# The same URLs with the personas' own objects, where what is whose decides the answer.
OWN: dict[str, Any] = {
    "onboarding:request_detail": lambda w: {"pk": w.own_submitted.pk},
    "onboarding:request_continue": lambda w: {"pk": w.own_draft.pk},
    "onboarding:request_question": lambda w: {"pk": w.own_draft.pk, "question": "name"},
    "onboarding:request_members": lambda w: {"pk": w.own_draft.pk},
    "onboarding:request_member_remove": lambda w: {"pk": w.own_draft.pk, "member_id": w.own_draft_member_id},
    "onboarding:request_check": lambda w: {"pk": w.own_draft.pk},
    "onboarding:request_submitted": lambda w: {"pk": w.own_submitted.pk},
    "onboarding:request_withdraw": lambda w: {"pk": w.own_draft.pk},
    "onboarding:out_of_office_cancel": lambda w: {"delegation_id": w.own_delegation_id},
    "onboarding:approval_decision": lambda w: {"stage_id": w.own_stage.pk},
    "governance:alert": lambda w: {"alert_id": w.own_alert.pk},
    "governance:mailbox": lambda w: {"mailbox_id": w.own_mailbox.pk},
    "governance:team": lambda w: {"team_id": w.our_team_id},
    "governance:tracking_change": lambda w: {"change_id": w.own_change.pk},
}


# --- calling the portal ------------------------------------------------------------------------


def client_as(world: World, persona: str, *, enforce_csrf_checks: bool = False) -> Client:
    client = Client(enforce_csrf_checks=enforce_csrf_checks)
    if persona != ANONYMOUS:
        client.force_login(world.people[persona])
    return client


@contextmanager
def refusals_not_logged() -> Iterator[None]:
    """Refusals are the point of these suites: Django's warning (with a traceback) for each of
    hundreds of them would only slow the suites down. Server errors are still logged."""
    loggers = [logging.getLogger(name) for name in ("django.request", "django.security")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def persona_clients(world: World) -> dict[str, Client]:
    """One client per persona, signed in; shared by a module's tests (signing out needs its own)."""
    return {persona: client_as(world, persona) for persona in (ANONYMOUS, *PERSONAS)}


@dataclass(frozen=True)
class Outcome:
    status: int
    location: str
    body: str
    changed: tuple[str, ...]  # tables the request wrote to (only when watched)
    queued: int  # work handed to transaction.on_commit: jobs, email


def table_writes() -> dict[str, int]:
    """Rows inserted, updated or deleted in each table so far in this transaction, as PostgreSQL
    counts them: a write of unchanged values counts too, and a refused request writes nothing."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT relname, n_tup_ins + n_tup_upd + n_tup_del FROM pg_stat_xact_user_tables")
        return {table: count for table, count in cursor.fetchall() if table not in _NOT_STATE}


def call(client: Client, method: str, url: str, *, data: dict[str, Any] | None = None, watch: bool = False) -> Outcome:
    """Make the request in a savepoint that is rolled back; with ``watch``, note which tables it wrote to."""
    with transaction.atomic():
        before = table_writes() if watch else {}
        with TestCase.captureOnCommitCallbacks() as callbacks:
            response = getattr(client, method.lower())(url, data or {})
        after = table_writes() if watch else {}
        transaction.set_rollback(True)
    body = b"".join(response.streaming_content) if response.streaming else response.content
    return Outcome(
        status=response.status_code,
        location=response.get("Location", ""),
        body=body.decode("utf-8", errors="replace"),
        changed=tuple(sorted(table for table in after if after[table] != before.get(table))),
        queued=len(callbacks),
    )


def goes_to_sign_in(outcome: Outcome) -> bool:
    return outcome.status == 302 and outcome.location.startswith(reverse("accounts:sign_in"))


def markers_in(outcome: Outcome) -> list[str]:
    """The markers of other people's objects found anywhere in the answer."""
    text = f"{outcome.location}\n{outcome.body}".lower()
    return [marker for marker in MARKERS if marker in text]
