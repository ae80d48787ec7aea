"""Out-of-office delegation: who may stand in for whom, and when."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from onboarding.models import Delegation
from onboarding.selectors.approvals import acting_for
from onboarding.services.approvals import delegation_cancel, delegation_create
from portal.accounts.roles import Role
from portal.audit.models import AuditEvent
from portal.exceptions import InvalidStateError, PermissionDeniedError, PortalError
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

DAY = dt.timedelta(days=1)


@pytest.fixture
def today():
    return timezone.localdate()


@pytest.fixture
def cover(db):
    return UserFactory(username="cover", first_name="Cara", last_name="Cover", roles=[Role.APPROVER])


def test_an_approver_arranges_cover_and_it_is_audited(approver, cover, today):
    delegation = delegation_create(actor=approver, delegate=cover, starts_on=today, ends_on=today + 2 * DAY)

    assert (delegation.delegator, delegation.delegate, delegation.cancelled_at) == (approver, cover, None)
    event = AuditEvent.objects.get(action="approval.delegation_created")
    assert event.actor == approver and event.object_id == str(delegation.pk)
    assert f'"delegate":{cover.pk}' in event.after_json
    assert acting_for(cover) == [cover, approver]
    assert acting_for(cover, on=today + 3 * DAY) == [cover]


def test_cover_cannot_be_yourself(approver, today):
    with pytest.raises(PortalError, match="someone other than yourself") as refused:
        delegation_create(actor=approver, delegate=approver, starts_on=today, ends_on=today)
    assert refused.value.field == "delegate"


@pytest.mark.parametrize("role", [None, Role.REQUESTER, Role.AUDITOR])
def test_cover_must_be_someone_who_can_decide_approvals(approver, today, role):
    person = UserFactory(first_name="Pat", last_name="Jones", roles=[role] if role else [])
    with pytest.raises(PortalError, match="Pat Jones cannot decide approvals") as refused:
        delegation_create(actor=approver, delegate=person, starts_on=today, ends_on=today)
    assert refused.value.field == "delegate"


def test_an_inactive_person_cannot_cover(approver, cover, today):
    cover.is_active = False
    cover.save()
    with pytest.raises(PortalError, match="cannot decide approvals"):
        delegation_create(actor=approver, delegate=cover, starts_on=today, ends_on=today)


def test_only_people_who_decide_approvals_arrange_cover(requester, cover, today):
    with pytest.raises(PermissionDeniedError):
        delegation_create(actor=requester, delegate=cover, starts_on=today, ends_on=today)


@pytest.mark.parametrize(
    ("start", "end", "field", "message"),
    [
        (-1, 2, "starts_on", "The start date must be today or in the future"),
        (3, 2, "ends_on", "The end date must be the same as or after the start date"),
        (0, 366, "ends_on", "at most a year"),
    ],
)
def test_dates_must_make_sense(approver, cover, today, start, end, field, message):
    with pytest.raises(PortalError, match=message) as refused:
        delegation_create(actor=approver, delegate=cover, starts_on=today + start * DAY, ends_on=today + end * DAY)
    assert refused.value.field == field
    assert not Delegation.objects.exists()


def test_one_person_has_one_cover_on_any_day(approver, cover, platform_admin, today):
    delegation_create(actor=approver, delegate=cover, starts_on=today + 2 * DAY, ends_on=today + 5 * DAY)

    for start, end in [(0, 2), (5, 9), (3, 4), (0, 10)]:
        with pytest.raises(PortalError, match="You already have cover from") as refused:
            delegation_create(
                actor=approver, delegate=platform_admin, starts_on=today + start * DAY, ends_on=today + end * DAY
            )
        assert refused.value.field == "starts_on"
    delegation_create(actor=approver, delegate=platform_admin, starts_on=today, ends_on=today + DAY)
    delegation_create(actor=approver, delegate=platform_admin, starts_on=today + 6 * DAY, ends_on=today + 6 * DAY)
    # Someone else's cover is no obstacle.
    delegation_create(actor=cover, delegate=approver, starts_on=today, ends_on=today + 9 * DAY)


def test_cancelled_cover_frees_the_dates(approver, cover, platform_admin, today):
    first = delegation_create(actor=approver, delegate=cover, starts_on=today, ends_on=today + 5 * DAY)
    delegation_cancel(actor=approver, delegation_id=first.pk)
    delegation_create(actor=approver, delegate=platform_admin, starts_on=today, ends_on=today + 5 * DAY)
    assert acting_for(platform_admin) == [platform_admin, approver]
    assert acting_for(cover) == [cover]


def test_cancelling_is_audited_with_before_and_after(approver, cover, today):
    delegation = delegation_create(actor=approver, delegate=cover, starts_on=today, ends_on=today)
    cancelled = delegation_cancel(actor=approver, delegation_id=delegation.pk)
    assert cancelled.cancelled_at is not None
    event = AuditEvent.objects.get(action="approval.delegation_cancelled")
    assert '"cancelled_at":null' in event.before_json and '"cancelled_at":null' not in event.after_json


def test_only_the_delegator_cancels_and_only_once(approver, cover, today):
    delegation = delegation_create(actor=approver, delegate=cover, starts_on=today, ends_on=today)
    with pytest.raises(PermissionDeniedError):
        delegation_cancel(actor=cover, delegation_id=delegation.pk)
    delegation_cancel(actor=approver, delegation_id=delegation.pk)
    with pytest.raises(InvalidStateError, match="already cancelled"):
        delegation_cancel(actor=approver, delegation_id=delegation.pk)


def test_cover_that_has_ended_cannot_be_cancelled(approver, cover, today):
    ended = Delegation.objects.create(
        delegator=approver, delegate=cover, starts_on=today - 3 * DAY, ends_on=today - DAY, created_at=timezone.now()
    )
    with pytest.raises(InvalidStateError, match="already ended"):
        delegation_cancel(actor=approver, delegation_id=ended.pk)


def test_a_delegator_who_can_no_longer_decide_lends_no_authority(approver, cover, today):
    delegation_create(actor=approver, delegate=cover, starts_on=today, ends_on=today)
    approver.groups.clear()
    approver = type(approver).objects.get(pk=approver.pk)  # drop the cached permissions
    assert acting_for(cover) == [cover]
