"""The approval route as services: every transition, and every refusal."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from onboarding.models import (
    ApprovalStage,
    Decision,
    DecisionOutcome,
    Delegation,
    Notification,
    NotificationEvent,
    ProvisioningRun,
    RequestStage,
    RequestStatus,
    StageStatus,
)
from onboarding.services.approvals import (
    approval_decide,
    approval_route_start,
    approval_stages_escalate_overdue,
    delegation_create,
)
from portal.accounts.roles import Role
from portal.audit.models import AuditEvent, Outcome
from portal.exceptions import ConfigurationError, InvalidStateError, PermissionDeniedError, PortalError
from tests.factories import UserFactory
from tests.onboarding.approval_helpers import (
    change_facts,
    configure_route,
    draft_for,
    make_cast,
    named_stage,
    owner_stage,
    record_provisioning_starts,
    role_stage,
    stages_of,
    statuses,
    submit,
    submit_directly,
    waiting_stage,
    withdraw,
)
from tests.onboarding.factories import MailboxRequestFactory, TeamFactory

APPROVE, REJECT, RETURN = DecisionOutcome.APPROVE, DecisionOutcome.REJECT, DecisionOutcome.RETURN

pytestmark = pytest.mark.django_db


@pytest.fixture
def cast(db):
    return make_cast()


@pytest.fixture
def route(cast):
    """The default route: the team's business owners, then a platform admin (not team-scoped)."""
    return configure_route(
        owner_stage(sla_hours=48, fallback_approvers=[cast.fallback]),
        role_stage(Role.PLATFORM_ADMIN, sla_hours=24),
    )


@pytest.fixture
def provisioning_starts(monkeypatch):
    return record_provisioning_starts(monkeypatch)


def notified(request, event) -> list[list[str]]:
    return [n.recipients for n in Notification.objects.filter(request=request, event=event).order_by("pk")]


def decide(actor, request, outcome=APPROVE, reason=""):
    return approval_decide(actor=actor, stage_id=waiting_stage(request).pk, outcome=outcome, reason=reason)


# --- starting the route --------------------------------------------------------------------------


def test_first_submission_snapshots_the_active_stages_and_opens_the_first(cast):
    configure_route(
        owner_stage(name="Owner says yes", sla_hours=10, reason_required=True, fallback_approvers=[cast.fallback]),
        {"name": "Retired", "approver_kind": "named", "approvers": [cast.delegate], "is_active": False},
        role_stage(Role.APPROVER, name="Team approver", team_scoped=True, sla_hours=5),
        named_stage([cast.admin, cast.other_admin], name="Named", fallback_approvers=[cast.delegate]),
    )
    before = timezone.now()
    request = submit(draft_for(cast))

    first, second, third = stages_of(request)
    assert [(s.order, s.name, s.approver_kind, s.role, s.team_scoped, s.sla_hours, s.reason_required) for s in
            (first, second, third)] == [
        (1, "Owner says yes", "team_owner", "", False, 10, True),
        (2, "Team approver", "role", "approver", True, 5, False),
        (3, "Named", "named", "", False, 48, False),
    ]  # fmt: skip
    assert list(first.fallback_approvers.all()) == [cast.fallback]
    assert set(third.approvers.all()) == {cast.admin, cast.other_admin}
    assert list(third.fallback_approvers.all()) == [cast.delegate]
    assert [s.status for s in (first, second, third)] == ["waiting", "pending", "pending"]
    assert first.waiting_since >= before
    assert first.due_at == first.waiting_since + dt.timedelta(hours=10)
    assert second.waiting_since is None and second.due_at is None
    # Both business owners may decide; the fallback approver only after escalation.
    assert notified(request, NotificationEvent.DECISION_NEEDED) == [["olu@example.gov.uk", "siobhan@example.gov.uk"]]
    actions = list(AuditEvent.objects.order_by("seq").values_list("action", flat=True))
    started = actions.index("approval.route_started")
    assert actions[started + 1] == "approval.stage_opened"


def test_changing_the_configuration_later_leaves_submitted_routes_alone(cast, route):
    request = submit(draft_for(cast))
    ApprovalStage.objects.filter(order=1).update(name="Renamed", sla_hours=1)
    stage = waiting_stage(request)
    assert (stage.name, stage.sla_hours) == ("Business owner", 48)


def test_submission_without_any_active_stage_is_refused_and_changes_nothing(cast):
    configure_route(owner_stage(is_active=False))
    request = draft_for(cast)
    with pytest.raises(ConfigurationError, match="No approval stages are set up"):
        submit(request)
    request.refresh_from_db()
    assert request.status == RequestStatus.DRAFT
    assert not RequestStage.objects.filter(request=request).exists()


def test_the_route_only_starts_for_a_submitted_request(cast, route):
    request = draft_for(cast)
    with pytest.raises(InvalidStateError):
        approval_route_start(request=request, actor=cast.requester)


def test_resubmission_with_unchanged_facts_keeps_earlier_approvals(cast, route):
    request = submit(draft_for(cast))
    decide(cast.owner, request)
    decide(cast.admin, request, RETURN, "Which invoices will this mailbox receive?")
    assert statuses(request) == ["approved", "returned"]

    submit(request)

    first, second = stages_of(request)
    assert first.status == StageStatus.APPROVED and first.decided_by == cast.owner
    assert second.status == StageStatus.WAITING and second.decided_by is None and second.reason == ""
    assert request.status == RequestStatus.SUBMITTED


def test_resubmission_with_changed_facts_resets_the_approvals_given_to_the_old_facts(cast, route):
    request = submit(draft_for(cast))
    decide(cast.owner, request)
    decide(cast.admin, request, RETURN, "Say who owns the mailbox day to day.")
    change_facts(request, justification="A clearer reason, with the day-to-day owner named.")

    submit(request)

    first, second = stages_of(request)
    assert first.status == StageStatus.WAITING and first.decided_by is None and first.approved_facts_hash == ""
    assert second.status == StageStatus.PENDING
    # History is kept: both earlier decisions remain on record.
    assert list(Decision.objects.filter(request=request).values_list("outcome", flat=True)) == [APPROVE, RETURN]
    restarted = AuditEvent.objects.filter(action="approval.route_restarted").get()
    assert '"approvals_kept":[]' in restarted.after_json


def test_a_changed_member_list_is_a_changed_fact(cast, route):
    request = submit(draft_for(cast))
    decide(cast.owner, request)
    decide(cast.admin, request, RETURN, "Add the team's shared inbox users.")
    change_facts(request, members=[{"email": "new.member@example.gov.uk", "send_as": True}])

    submit(request)

    assert statuses(request) == ["waiting", "pending"]


# --- deciding ------------------------------------------------------------------------------------


def test_approving_a_stage_opens_the_next_and_tells_its_approvers_and_the_requester(cast, route):
    request = submit(draft_for(cast))
    stage = waiting_stage(request)

    decision = approval_decide(actor=cast.owner, stage_id=stage.pk, outcome=APPROVE, reason="Looks right")

    stage.refresh_from_db()
    assert (decision.outcome, decision.decided_by, decision.on_behalf_of, decision.reason) == (
        APPROVE, cast.owner, None, "Looks right",
    )  # fmt: skip
    assert stage.status == StageStatus.APPROVED
    assert stage.decided_by == cast.owner and stage.decided_at == decision.decided_at
    assert stage.approved_facts_hash == request.facts_hash()
    second = waiting_stage(request)
    assert second.order == 2 and second.due_at == second.waiting_since + dt.timedelta(hours=24)
    assert notified(request, NotificationEvent.APPROVED) == [["rhian@example.gov.uk"]]
    assert notified(request, NotificationEvent.DECISION_NEEDED)[-1] == ["gareth@example.gov.uk", "priya@example.gov.uk"]
    decided = AuditEvent.objects.get(action="approval.decided")
    assert decided.actor == cast.owner and '"status":"waiting"' in decided.before_json
    assert '"status":"approved"' in decided.after_json and '"outcome":"approve"' in decided.after_json
    request.refresh_from_db()
    assert request.status == RequestStatus.SUBMITTED


def test_the_final_approval_hands_the_request_to_provisioning(cast, route):
    request = submit(draft_for(cast))
    decide(cast.owner, request)
    stage = waiting_stage(request)
    approval_decide(actor=cast.admin, stage_id=stage.pk, outcome=APPROVE)
    request.refresh_from_db()
    assert request.status == RequestStatus.PROVISIONING and request.decided_at is not None
    assert ProvisioningRun.objects.filter(request=request).count() == 1


def test_the_final_approval_sets_provisioning_before_handing_over(cast, route, provisioning_starts):
    request = submit(draft_for(cast))
    decide(cast.owner, request)

    decide(cast.admin, request)

    request.refresh_from_db()
    assert provisioning_starts == [(request.pk, RequestStatus.PROVISIONING)]
    assert request.status == RequestStatus.PROVISIONING and request.decided_at is not None
    assert statuses(request) == ["approved", "approved"]
    assert notified(request, NotificationEvent.APPROVED) == [["rhian@example.gov.uk"]] * 2
    changed = AuditEvent.objects.filter(action="mailbox_request.status_changed").get()
    assert '"status":"submitted"' in changed.before_json and '"status":"provisioning"' in changed.after_json


def test_rejecting_ends_the_request_and_cancels_the_later_stages(cast, route):
    request = submit(draft_for(cast))

    decide(cast.owner, request, REJECT, "We already have a mailbox for this.")

    request.refresh_from_db()
    assert request.status == RequestStatus.REJECTED and request.decided_at is not None
    assert statuses(request) == ["rejected", "cancelled"]
    rejected = Notification.objects.get(request=request, event=NotificationEvent.REJECTED)
    assert rejected.recipients == ["rhian@example.gov.uk"]
    assert rejected.context == {"stage": "Business owner", "reason": "We already have a mailbox for this."}


def test_returning_sends_the_request_back_with_the_reason(cast, route):
    request = submit(draft_for(cast))

    decide(cast.owner, request, RETURN, "  Which team members need Send As?  ")

    request.refresh_from_db()
    assert request.status == RequestStatus.RETURNED and request.decided_at is None
    assert statuses(request) == ["returned", "pending"]
    returned = Notification.objects.get(request=request, event=NotificationEvent.RETURNED)
    assert returned.context["reason"] == "Which team members need Send As?"


@pytest.mark.parametrize(
    ("outcome", "message"),
    [(REJECT, "Enter why you are rejecting the request"), (RETURN, "Enter what the requester needs to add or change")],
)
def test_rejecting_and_returning_need_a_reason(cast, route, outcome, message):
    request = submit(draft_for(cast))
    with pytest.raises(PortalError, match=message) as refused:
        decide(cast.owner, request, outcome, "   ")
    assert refused.value.field == "reason"
    assert waiting_stage(request).order == 1
    assert not Decision.objects.exists()


def test_approving_needs_a_reason_only_where_the_stage_asks_for_one(cast):
    configure_route(owner_stage(reason_required=True), role_stage())
    request = submit(draft_for(cast))
    with pytest.raises(PortalError, match="Enter why you are approving the request"):
        decide(cast.owner, request, APPROVE, "")
    decide(cast.owner, request, APPROVE, "Budget confirmed with finance.")
    decide(cast.admin, request, RETURN, "Retention period is too long.")
    assert statuses(request) == ["approved", "returned"]


def test_overlong_reasons_and_unknown_outcomes_are_refused(cast, route):
    request = submit(draft_for(cast))
    with pytest.raises(PortalError, match="2,000 characters or fewer"):
        decide(cast.owner, request, REJECT, "x" * 2001)
    with pytest.raises(PortalError, match="Select whether to approve") as refused:
        decide(cast.owner, request, "maybe")
    assert refused.value.field == "outcome"


# --- refusals ------------------------------------------------------------------------------------


def test_nobody_decides_their_own_request(cast, route):
    # The requester is also a business owner of the team, and an approver.
    cast.team.business_owners.add(cast.requester)
    cast.requester.groups.add(*cast.owner.groups.all())
    request = submit(draft_for(cast))

    with pytest.raises(PermissionDeniedError, match="You cannot decide on a request you made"):
        decide(cast.requester, request)

    assert waiting_stage(request).status == StageStatus.WAITING
    refused = AuditEvent.objects.get(action="approval.decision_refused")
    assert refused.outcome == Outcome.DENIED and refused.actor == cast.requester


def test_one_person_cannot_approve_two_stages_of_the_same_request(cast, route):
    # The business owner is also a platform admin.
    cast.owner.groups.add(*cast.admin.groups.all())
    request = submit(draft_for(cast))
    decide(cast.owner, request)

    with pytest.raises(PermissionDeniedError, match="already approved another stage"):
        decide(cast.owner, request)
    decide(cast.admin, request, RETURN, "Explain the retention period.")


def test_a_return_does_not_count_as_an_approval_of_a_stage(cast, route):
    cast.admin.groups.add(*cast.owner.groups.all())
    cast.team.business_owners.add(cast.admin)
    request = submit(draft_for(cast))
    decide(cast.owner, request)
    decide(cast.admin, request, RETURN, "Name a backup owner.")
    change_facts(request, backup_owner=cast.second_owner)
    submit(request)

    # The admin returned stage 2, so may approve stage 1 of the changed request...
    decide(cast.admin, request)
    # ...and then may not approve stage 2 as well.
    with pytest.raises(PermissionDeniedError, match="already approved another stage"):
        decide(cast.admin, request)


@pytest.mark.parametrize("role", [None, Role.REQUESTER, Role.MIGRATION_LEAD, Role.AUDITOR])
def test_people_without_the_approver_permission_are_refused(cast, route, role):
    person = UserFactory(roles=[role] if role else [])
    cast.team.business_owners.add(person)  # even a business owner needs the permission
    request = submit(draft_for(cast))
    with pytest.raises(PermissionDeniedError, match="You do not have permission to decide approvals"):
        decide(person, request)


def test_a_team_scoped_role_admits_only_people_in_the_request_team(cast, provisioning_starts):
    configure_route(role_stage(Role.APPROVER, team_scoped=True))
    elsewhere = UserFactory(roles=[Role.APPROVER])
    TeamFactory(name="Payroll", members=[elsewhere])
    member = UserFactory(roles=[Role.APPROVER])
    cast.team.members.add(member)
    request = submit(draft_for(cast))

    with pytest.raises(PermissionDeniedError, match="You are not an approver for this stage"):
        decide(elsewhere, request)
    with pytest.raises(PermissionDeniedError):
        decide(cast.admin, request)  # a platform admin holds another role
    decide(member, request)


def test_a_team_scoped_role_admits_the_team_business_owners_too(cast, provisioning_starts):
    configure_route(role_stage(Role.APPROVER, team_scoped=True))
    request = submit(draft_for(cast))
    decide(cast.second_owner, request)


def test_an_unscoped_role_admits_every_holder(cast, provisioning_starts):
    configure_route(role_stage(Role.APPROVER))
    anyone = UserFactory(roles=[Role.APPROVER])
    request = submit(draft_for(cast))
    decide(anyone, request)


def test_a_team_scoped_role_admits_nobody_when_the_request_has_no_team(cast):
    configure_route(role_stage(Role.APPROVER, team_scoped=True, fallback_approvers=[cast.fallback]))
    request = submit_directly(MailboxRequestFactory(requester=cast.requester, team=None))
    with pytest.raises(PermissionDeniedError):
        decide(cast.owner, request)


def test_a_named_stage_admits_only_the_named(cast, provisioning_starts):
    configure_route(named_stage([cast.delegate]))
    request = submit(draft_for(cast))
    with pytest.raises(PermissionDeniedError):
        decide(cast.owner, request)
    decide(cast.delegate, request)


def test_a_delegate_decides_for_the_approver_while_the_delegation_runs(cast, route):
    today = timezone.localdate()
    delegation_create(actor=cast.owner, delegate=cast.delegate, starts_on=today, ends_on=today)
    request = submit(draft_for(cast))
    assert "dev@example.gov.uk" in notified(request, NotificationEvent.DECISION_NEEDED)[0]

    decision = decide(cast.delegate, request)

    assert decision.decided_by == cast.delegate and decision.on_behalf_of == cast.owner


def test_a_delegate_has_no_standing_outside_the_delegation_dates(cast, route):
    today = timezone.localdate()
    Delegation.objects.create(
        delegator=cast.owner,
        delegate=cast.delegate,
        starts_on=today - dt.timedelta(days=5),
        ends_on=today - dt.timedelta(days=1),
        created_at=timezone.now(),
    )
    delegation_create(
        actor=cast.second_owner,
        delegate=cast.delegate,
        starts_on=today + dt.timedelta(days=1),
        ends_on=today + dt.timedelta(days=3),
    )
    request = submit(draft_for(cast))
    with pytest.raises(PermissionDeniedError, match="You are not an approver for this stage"):
        decide(cast.delegate, request)


def test_a_cancelled_delegation_gives_no_standing(cast, route):
    today = timezone.localdate()
    delegation = delegation_create(actor=cast.owner, delegate=cast.delegate, starts_on=today, ends_on=today)
    Delegation.objects.filter(pk=delegation.pk).update(cancelled_at=timezone.now())
    request = submit(draft_for(cast))
    with pytest.raises(PermissionDeniedError):
        decide(cast.delegate, request)


def test_a_delegate_cannot_use_an_authority_that_already_approved_another_stage(cast, route):
    # The owner is also a platform admin, approves stage 1, then goes on leave.
    cast.owner.groups.add(*cast.admin.groups.all())
    request = submit(draft_for(cast))
    decide(cast.owner, request)
    today = timezone.localdate()
    delegation_create(actor=cast.owner, delegate=cast.delegate, starts_on=today, ends_on=today)

    with pytest.raises(PermissionDeniedError, match="has already approved another stage"):
        decide(cast.delegate, request)


def test_an_approval_made_for_someone_else_counts_for_them(cast, route):
    cast.owner.groups.add(*cast.admin.groups.all())
    today = timezone.localdate()
    delegation = delegation_create(actor=cast.owner, delegate=cast.delegate, starts_on=today, ends_on=today)
    request = submit(draft_for(cast))
    decide(cast.delegate, request)  # stage 1, for the owner
    Delegation.objects.filter(pk=delegation.pk).update(cancelled_at=timezone.now())

    with pytest.raises(PermissionDeniedError, match="already approved another stage"):
        decide(cast.owner, request)  # the owner's authority approved stage 1 already


def test_a_delegate_of_the_requester_may_not_decide_the_request(cast, route):
    cast.requester.groups.add(*cast.owner.groups.all())  # the requester can decide approvals too
    cast.team.business_owners.add(cast.delegate)
    today = timezone.localdate()
    delegation_create(actor=cast.requester, delegate=cast.delegate, starts_on=today, ends_on=today)
    request = submit(draft_for(cast))

    with pytest.raises(PermissionDeniedError, match="someone you are standing in for"):
        decide(cast.delegate, request)


def test_fallback_approvers_may_decide_only_once_the_stage_escalates(cast, route):
    request = submit(draft_for(cast))
    stage = waiting_stage(request)
    with pytest.raises(PermissionDeniedError, match="once it is overdue"):
        decide(cast.fallback, request)

    assert approval_stages_escalate_overdue(now=stage.due_at + dt.timedelta(seconds=1)) == 1

    decide(cast.fallback, request)
    assert statuses(request) == ["approved", "waiting"]


def test_deciding_a_stage_someone_else_just_decided_says_who(cast, route):
    request = submit(draft_for(cast))
    stage = waiting_stage(request)
    approval_decide(actor=cast.owner, stage_id=stage.pk, outcome=APPROVE)

    with pytest.raises(InvalidStateError, match=r"This stage was decided by Olu Adeyemi a moment ago \(approved\)"):
        approval_decide(actor=cast.second_owner, stage_id=stage.pk, outcome=REJECT, reason="No")

    RequestStage.objects.filter(pk=stage.pk).update(decided_at=timezone.now() - dt.timedelta(days=2))
    with pytest.raises(InvalidStateError, match=r"decided by Olu Adeyemi on \d+ \w+ \d{4} at \d\d:\d\d"):
        approval_decide(actor=cast.second_owner, stage_id=stage.pk, outcome=APPROVE)
    assert Decision.objects.count() == 1


def test_stages_of_a_withdrawn_request_cannot_be_decided(cast, route):
    request = submit(draft_for(cast))
    stage = waiting_stage(request)
    withdraw(request)

    with pytest.raises(InvalidStateError, match="no longer needs a decision: the request is withdrawn"):
        approval_decide(actor=cast.owner, stage_id=stage.pk, outcome=APPROVE)


def test_a_stage_not_yet_reached_cannot_be_decided(cast, route):
    request = submit(draft_for(cast))
    later = stages_of(request)[1]
    with pytest.raises(InvalidStateError, match="not waiting for a decision yet"):
        approval_decide(actor=cast.admin, stage_id=later.pk, outcome=APPROVE)
    with pytest.raises(InvalidStateError, match="does not exist"):
        approval_decide(actor=cast.admin, stage_id=later.pk + 1000, outcome=APPROVE)


def test_a_rejected_request_stays_rejected(cast, route):
    request = submit(draft_for(cast))
    decide(cast.owner, request, REJECT, "Duplicate of an existing mailbox.")
    for stage in stages_of(request):
        with pytest.raises(InvalidStateError):
            approval_decide(actor=cast.admin, stage_id=stage.pk, outcome=APPROVE)
    request.refresh_from_db()
    assert request.status == RequestStatus.REJECTED


# --- withdrawal ----------------------------------------------------------------------------------


def test_withdrawal_cancels_what_was_still_to_decide_and_tells_the_approvers(cast, route):
    request = submit(draft_for(cast))
    decide(cast.owner, request)

    withdraw(request)

    assert statuses(request) == ["approved", "cancelled"]
    # The route tells the people it was waiting for; the requester journey tells the requester.
    assert notified(request, NotificationEvent.WITHDRAWN) == [
        ["gareth@example.gov.uk", "priya@example.gov.uk"],
        ["rhian@example.gov.uk"],
    ]
    assert AuditEvent.objects.filter(action="approval.route_cancelled").count() == 1


def test_withdrawing_a_returned_request_keeps_the_return_on_record(cast, route):
    request = submit(draft_for(cast))
    decide(cast.owner, request, RETURN, "More detail please.")
    withdraw(request)
    assert statuses(request) == ["returned", "cancelled"]
    assert notified(request, NotificationEvent.WITHDRAWN) == [["rhian@example.gov.uk"]]  # nobody else was waiting


# --- escalation ----------------------------------------------------------------------------------


def test_escalation_marks_overdue_stages_once_and_tells_the_fallback_approvers(cast, route):
    overdue = submit(draft_for(cast))
    returned = submit(draft_for(cast))
    decide(cast.owner, returned)
    decide(cast.admin, returned, RETURN, "Which retention policy applies?")
    not_yet = submit(draft_for(cast))
    stage = waiting_stage(overdue)
    RequestStage.objects.filter(pk=waiting_stage(not_yet).pk).update(due_at=stage.due_at + dt.timedelta(hours=2))
    moment = stage.due_at + dt.timedelta(minutes=1)

    assert approval_stages_escalate_overdue(now=moment) == 1
    assert approval_stages_escalate_overdue(now=moment + dt.timedelta(hours=1)) == 0

    stage.refresh_from_db()
    assert stage.escalated_at == moment and stage.status == StageStatus.WAITING
    assert waiting_stage(not_yet).escalated_at is None
    assert all(s.escalated_at is None for s in stages_of(returned))
    assert notified(overdue, NotificationEvent.ESCALATED) == [["fiona@example.gov.uk"]]
    escalated = AuditEvent.objects.get(action="approval.stage_escalated")
    assert escalated.actor is None and '"escalated_at":null' in escalated.before_json
    assert (escalated.object_type, escalated.object_id) == ("mailbox_request", str(overdue.pk))


def test_a_stage_opened_after_an_escalated_one_starts_afresh(cast, route):
    request = submit(draft_for(cast))
    stage = waiting_stage(request)
    approval_stages_escalate_overdue(now=stage.due_at + dt.timedelta(seconds=1))
    decide(cast.owner, request)
    assert waiting_stage(request).escalated_at is None


def test_escalation_of_a_stage_without_fallback_approvers_tells_nobody(cast):
    configure_route(owner_stage(sla_hours=1))
    request = submit(draft_for(cast))
    assert approval_stages_escalate_overdue(now=timezone.now() + dt.timedelta(hours=2)) == 1
    assert waiting_stage(request).escalated_at is not None
    assert not Notification.objects.filter(request=request, event=NotificationEvent.ESCALATED).exists()
