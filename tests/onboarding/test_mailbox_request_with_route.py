"""Submission and withdrawal with the real approval route behind them: the contract between the two."""

from __future__ import annotations

import pytest
from django.urls import reverse

from onboarding.models import Notification, NotificationEvent, RequestStatus, StageStatus
from onboarding.services.mailbox_requests import mailbox_request_submit, mailbox_request_withdraw
from portal.accounts.roles import Role
from tests.factories import UserFactory
from tests.onboarding.factories import TeamFactory
from tests.onboarding.mailbox_request_support import complete_request

pytestmark = pytest.mark.django_db


@pytest.fixture
def business_owner():
    return UserFactory(username="bea", roles=[Role.APPROVER])


@pytest.fixture
def team(requester, business_owner):
    return TeamFactory(name="Finance", members=[requester], business_owners=[business_owner])


def test_submitting_opens_the_first_stage_and_withdrawing_cancels_the_route(requester, team, business_owner):
    request = complete_request(requester, team=team)
    mailbox_request_submit(actor=requester, request_id=request.pk)
    assert list(request.stages.values_list("name", "status")) == [
        ("Business owner", StageStatus.WAITING),
        ("Platform admin", StageStatus.PENDING),
    ]
    needed = Notification.objects.get(request=request, event=NotificationEvent.DECISION_NEEDED)
    assert needed.recipients == [business_owner.email]

    mailbox_request_withdraw(actor=requester, request_id=request.pk)
    request.refresh_from_db()
    assert request.status == RequestStatus.WITHDRAWN
    assert set(request.stages.values_list("status", flat=True)) == {StageStatus.CANCELLED}
    told = {
        tuple(n.recipients) for n in Notification.objects.filter(request=request, event=NotificationEvent.WITHDRAWN)
    }
    assert told == {(requester.email,), (business_owner.email,)}


def test_the_pages_show_the_route_after_submission(requester, team, client_for):
    request = complete_request(requester, team=team)
    client = client_for(requester)
    response = client.post(reverse("onboarding:request_check", args=[request.pk]))
    assert response["Location"] == reverse("onboarding:request_submitted", args=[request.pk])
    confirmation = client.get(response["Location"]).content.decode()
    assert "<li>Business owner</li><li>Platform admin</li>" in confirmation
    status = client.get(reverse("onboarding:request_detail", args=[request.pk])).content.decode()
    assert "Business owner decision" in status
    assert "Estimated decision by" in status
