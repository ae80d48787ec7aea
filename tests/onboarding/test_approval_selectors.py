"""The eligibility rules as reads: the inbox, one stage's check, who to notify, the route's estimates."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from onboarding.models import DecisionOutcome, RequestStage, StageStatus
from onboarding.selectors.approvals import (
    acting_for,
    approval_inbox,
    decision_eligibility,
    inbox_keys,
    inbox_rows,
    stage_approvers,
    stage_decision_recipients,
    stages_awaiting,
)
from onboarding.selectors.mailbox_requests import requests_visible_to
from onboarding.services.approvals import (
    approval_decide,
    approval_stages_escalate_overdue,
    delegation_create,
)
from portal.accounts.models import User
from portal.accounts.roles import Role
from tests.factories import UserFactory
from tests.onboarding.approval_helpers import (
    configure_route,
    draft_for,
    make_cast,
    named_stage,
    owner_stage,
    role_stage,
    stages_of,
    submit,
    submit_directly,
    waiting_stage,
)
from tests.onboarding.factories import MailboxRequestFactory, TeamFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def cast(db):
    return make_cast()


@pytest.fixture
def route(cast):
    return configure_route(owner_stage(fallback_approvers=[cast.fallback]), role_stage(Role.PLATFORM_ADMIN))


def approve(actor, request):
    return approval_decide(actor=actor, stage_id=waiting_stage(request).pk, outcome=DecisionOutcome.APPROVE)


def test_the_inbox_lists_what_waits_oldest_first_with_overdue_ones_marked(cast, route):
    newest, oldest, middle = (submit(draft_for(cast)) for _ in range(3))
    now = timezone.now()
    for request, hours_ago in ((oldest, 72), (middle, 30), (newest, 1)):
        RequestStage.objects.filter(request=request, order=1).update(
            waiting_since=now - dt.timedelta(hours=hours_ago),
            due_at=now - dt.timedelta(hours=hours_ago) + dt.timedelta(hours=48),
        )

    items = approval_inbox(cast.owner, now=now)

    assert [item.request for item in items] == [oldest, middle, newest]
    assert [item.is_overdue for item in items] == [True, False, False]
    assert items[0].overdue_by == dt.timedelta(hours=24)
    assert all(item.on_behalf_of is None for item in items)


def test_the_inbox_says_on_whose_behalf(cast, route):
    today = timezone.localdate()
    delegation_create(actor=cast.owner, delegate=cast.delegate, starts_on=today, ends_on=today)
    request = submit(draft_for(cast))

    (item,) = approval_inbox(cast.delegate)
    assert item.request == request and item.on_behalf_of == cast.owner
    assert approval_inbox(cast.owner)[0].on_behalf_of is None


def test_someone_both_approver_and_delegate_decides_in_their_own_right(cast, route):
    today = timezone.localdate()
    delegation_create(actor=cast.owner, delegate=cast.second_owner, starts_on=today, ends_on=today)
    submit(draft_for(cast))
    (item,) = approval_inbox(cast.second_owner)
    assert item.on_behalf_of is None


def test_the_inbox_reads_a_constant_number_of_queries(cast, route, django_assert_max_num_queries):
    for _ in range(6):
        submit(draft_for(cast))
    with django_assert_max_num_queries(8):
        items = approval_inbox(cast.owner)
        assert len(items) == 6
        for item in items:
            assert item.request.requester.display_name and item.request.team.name


def test_approvers_see_requests_they_may_decide_or_decided(cast, route):
    request = submit(draft_for(cast))
    assert request in requests_visible_to(cast.owner)
    assert request not in requests_visible_to(cast.fallback)
    approval_stages_escalate_overdue(now=waiting_stage(request).due_at + dt.timedelta(seconds=1))
    assert request in requests_visible_to(cast.fallback)
    approve(cast.fallback, request)
    assert request in requests_visible_to(cast.fallback)  # decided by them
    assert request not in requests_visible_to(cast.owner)  # no longer theirs to decide
    assert request not in requests_visible_to(cast.delegate)


def test_stage_approvers_follow_the_stage_kind(cast):
    configure_route(owner_stage(fallback_approvers=[cast.fallback]), role_stage(Role.PLATFORM_ADMIN))
    cast.team.business_owners.add(cast.requester)  # the requester is never one of their own approvers
    no_permission = UserFactory(roles=[Role.REQUESTER])
    cast.team.business_owners.add(no_permission)  # nor is someone who cannot decide approvals
    request = submit(draft_for(cast))
    first, second = stages_of(request)

    assert stage_approvers(first) == [cast.owner, cast.second_owner]
    assert stage_approvers(second) == [cast.other_admin, cast.admin]
    approval_stages_escalate_overdue(now=first.due_at + dt.timedelta(seconds=1))
    first.refresh_from_db()
    assert stage_approvers(first) == [cast.fallback, cast.owner, cast.second_owner]


def test_stage_approvers_of_team_scoped_roles(cast):
    configure_route(role_stage(Role.APPROVER, team_scoped=True))
    member = UserFactory(username="member", roles=[Role.APPROVER])
    cast.team.members.add(member)
    UserFactory(username="elsewhere", roles=[Role.APPROVER])
    scoped = submit(draft_for(cast))
    teamless = submit_directly(MailboxRequestFactory(requester=cast.requester, team=None))

    assert stage_approvers(waiting_stage(scoped)) == [member, cast.owner, cast.second_owner]
    assert stage_approvers(waiting_stage(teamless)) == []


def test_notifications_go_only_to_people_who_may_decide(cast, route):
    cast.owner.groups.add(*cast.admin.groups.all())  # the owner also holds the platform admin role
    today = timezone.localdate()
    delegation_create(actor=cast.admin, delegate=cast.delegate, starts_on=today, ends_on=today)
    request = submit(draft_for(cast))
    approve(cast.owner, request)

    second = waiting_stage(request)
    # The owner approved stage 1, so is not asked again; the admin's stand-in is.
    assert [p.username for p in stage_decision_recipients(second)] == ["gareth", "priya", "dev"]


def test_route_estimates_chain_the_slas_after_the_waiting_stage(cast):
    from onboarding.selectors.approvals import route_estimates

    configure_route(owner_stage(sla_hours=48), role_stage(sla_hours=24), named_stage([cast.delegate], sla_hours=8))
    request = submit(draft_for(cast))
    first = waiting_stage(request)
    now = first.waiting_since + dt.timedelta(hours=1)

    estimates = route_estimates(request, now=now)
    assert [e.expected_by for e in estimates] == [
        first.due_at,
        first.due_at + dt.timedelta(hours=24),
        first.due_at + dt.timedelta(hours=32),
    ]
    late = route_estimates(request, now=first.due_at + dt.timedelta(hours=5))
    assert late[0].is_overdue and late[1].expected_by == first.due_at + dt.timedelta(hours=29)


def test_the_inbox_and_the_single_stage_check_always_agree(cast):
    """Every person against every stage of a busy little world: inbox ⇔ eligibility."""
    configure_route(
        owner_stage(fallback_approvers=[cast.fallback]),
        role_stage(Role.APPROVER, team_scoped=True, fallback_approvers=[cast.admin]),
        named_stage([cast.admin, cast.owner]),
        role_stage(Role.PLATFORM_ADMIN),
    )
    payroll_owner = UserFactory(username="payowner", roles=[Role.APPROVER, Role.REQUESTER])
    payroll = TeamFactory(name="Payroll", business_owners=[payroll_owner], members=[cast.delegate, cast.admin])
    cast.owner.groups.add(*cast.admin.groups.all())
    cast.admin.groups.add(*cast.requester.groups.all())  # a platform admin who also requests mailboxes
    today = timezone.localdate()
    delegation_create(actor=cast.owner, delegate=cast.delegate, starts_on=today, ends_on=today)
    delegation_create(actor=cast.admin, delegate=payroll_owner, starts_on=today, ends_on=today)

    fresh = submit(draft_for(cast))
    one_approved = submit(draft_for(cast))
    approve(cast.owner, one_approved)
    two_approved = submit(draft_for(cast))
    approve(cast.second_owner, two_approved)
    approve(cast.delegate, two_approved)  # for the owner: the delegate is not in Finance themselves
    escalated = submit(MailboxRequestFactory(requester=payroll_owner, team=payroll))
    approval_stages_escalate_overdue(now=timezone.now() + dt.timedelta(days=3))
    by_delegator = submit(MailboxRequestFactory(requester=cast.admin, team=payroll))

    people = list(User.objects.all())
    stages = list(RequestStage.objects.select_related("request"))
    assert {s.request_id for s in stages if s.status == StageStatus.WAITING} == {
        fresh.pk, one_approved.pk, two_approved.pk, escalated.pk, by_delegator.pk,
    }  # fmt: skip
    for person in people:
        inbox = {stage.pk: stage.on_behalf_of_id for stage in stages_awaiting(person)}
        # The approvals page pages through inbox_keys: the same stages, in the same order.
        assert inbox_keys(person) == [(stage.pk, stage.on_behalf_of_id) for stage in stages_awaiting(person)]
        # ... and draws its lines from plain values: the same as the inbox's model objects say.
        lines = inbox_rows(inbox_keys(person), people=acting_for(person))
        assert [
            (line.stage_id, line.reference, line.address, line.team_name, line.requester_name, line.on_behalf_of_name)
            for line in lines
        ] == [
            (
                item.stage.pk,
                item.request.reference,
                item.request.address,
                item.request.team.name if item.request.team else "",
                item.request.requester.display_name,
                item.on_behalf_of.display_name if item.on_behalf_of else "",
            )
            for item in approval_inbox(person)
        ], person.username
        for stage in stages:
            eligibility = decision_eligibility(person, stage)
            assert (stage.pk in inbox) == eligibility.allowed, (person.username, stage, eligibility.reason)
            if eligibility.allowed:
                expected = eligibility.on_behalf_of.pk if eligibility.on_behalf_of else None
                assert inbox[stage.pk] == expected, (person.username, stage)


def test_the_inbox_follows_a_change_of_role_or_cover_at_once(cast, route):
    """inbox_keys reuses its SQL for people with the same authority: never for someone whose roles
    or cover have changed since."""
    request = submit(draft_for(cast))
    approve(cast.owner, request)  # now waiting at the platform admins' stage
    admin_stage = waiting_stage(request).pk

    assert inbox_keys(User.objects.get(pk=cast.admin.pk)) == [(admin_stage, None)]
    assert inbox_keys(User.objects.get(pk=cast.other_admin.pk)) == [(admin_stage, None)]
    assert inbox_keys(User.objects.get(pk=cast.delegate.pk)) == []

    cast.other_admin.groups.clear()
    cast.other_admin.groups.add(*cast.owner.groups.all())  # an approver now, not an admin
    assert inbox_keys(User.objects.get(pk=cast.other_admin.pk)) == []

    today = timezone.localdate()
    delegation_create(actor=cast.admin, delegate=cast.delegate, starts_on=today, ends_on=today)
    assert inbox_keys(User.objects.get(pk=cast.delegate.pk)) == [(admin_stage, cast.admin.pk)]
    assert inbox_keys(User.objects.get(pk=cast.admin.pk)) == [(admin_stage, None)]
