"""The approver pages and the approval-stage configuration, as the people who use them and those refused."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from django.urls import reverse
from django.utils import timezone

from onboarding.models import ApprovalStage, Decision, Delegation, RequestStage, RequestStatus, StageStatus
from onboarding.services.approvals import approval_decide, delegation_create
from portal.accounts.roles import Role
from portal.audit.models import AuditEvent
from tests.factories import UserFactory
from tests.onboarding.approval_helpers import (
    configure_route,
    draft_for,
    make_cast,
    owner_stage,
    role_stage,
    stages_of,
    submit,
    waiting_stage,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def cast(db):
    return make_cast()


@pytest.fixture
def route(cast):
    return configure_route(owner_stage(fallback_approvers=[cast.fallback]), role_stage(Role.PLATFORM_ADMIN))


def text(response) -> str:
    return re.sub(r"\s+", " ", response.content.decode())


def decision_url(stage) -> str:
    return reverse("onboarding:approval_decision", args=[stage.pk])


# --- the inbox -----------------------------------------------------------------------------------


def test_the_inbox_lists_the_oldest_first_and_marks_overdue_ones(cast, route, client_for):
    recent = submit(draft_for(cast, display_name="Recent mailbox"))
    overdue = submit(draft_for(cast, display_name="Overdue mailbox"))
    now = timezone.now()
    RequestStage.objects.filter(request=overdue, order=1).update(
        waiting_since=now - dt.timedelta(hours=75), due_at=now - dt.timedelta(hours=27)
    )

    page = text(client_for(cast.owner).get(reverse("onboarding:approvals")))

    assert page.index("Overdue mailbox") < page.index("Recent mailbox")
    assert page.count("govuk-tag--red") == 1
    assert re.search(r'<strong class="govuk-tag govuk-tag--red">Overdue</strong> <span [^>]*>by 1 day, 3 hours', page)
    assert "2 requests, the one waiting longest first" in page
    assert f'href="{decision_url(waiting_stage(recent))}"' in page


def test_the_inbox_says_when_someone_decides_on_behalf_of_another(cast, route, client_for):
    today = timezone.localdate()
    delegation_create(actor=cast.owner, delegate=cast.delegate, starts_on=today, ends_on=today)
    submit(draft_for(cast))

    page = text(client_for(cast.delegate).get(reverse("onboarding:approvals")))
    assert "On behalf of Olu Adeyemi" in page
    owners_page = text(client_for(cast.owner).get(reverse("onboarding:approvals")))
    assert "Dev Mistry decides for you from" in owners_page


def test_the_inbox_lists_what_the_approver_decided(cast, route, client_for):
    request = submit(draft_for(cast))
    approval_decide(actor=cast.owner, stage_id=waiting_stage(request).pk, outcome="return", reason="Name a backup")

    page = text(client_for(cast.owner).get(reverse("onboarding:approvals")))
    assert "Nothing is waiting for you." in page
    decided = page[page.index('data-testid="decided"') :]
    assert request.reference in decided and "Returned" in decided and "Name a backup" in decided


# --- the decision page ---------------------------------------------------------------------------


def test_the_decision_page_shows_the_answers_the_route_and_the_form(cast, route, client_for):
    request = submit(draft_for(cast, justification="Invoices & remittances arrive here."))
    approval_decide(actor=cast.owner, stage_id=waiting_stage(request).pk, outcome="approve", reason="Fine by me")

    response = client_for(cast.admin).get(decision_url(waiting_stage(request)))

    assert response.status_code == 200
    page = text(response)
    assert "Decide on the request for " + request.display_name in page
    assert request.address in page and "Invoices &amp; remittances arrive here." in page
    route_list = page[page.index('data-testid="route"') :]
    assert "1. Business owner" in route_list and "By Olu Adeyemi" in route_list and "Reason: Fine by me" in route_list
    assert "2. Platform admin" in route_list and "Waiting for a decision" in route_list
    assert '<legend class="govuk-fieldset__legend govuk-fieldset__legend--m">' in page
    for label in ("Approve", "Reject", "Return for more information"):
        assert label in page
    assert 'name="reason"' in page


def test_approving_from_the_page(cast, route, client_for):
    request = submit(draft_for(cast))
    client = client_for(cast.owner)

    response = client.post(decision_url(waiting_stage(request)), {"outcome": "approve", "reason": ""}, follow=True)

    assert response.redirect_chain[-1][0] == reverse("onboarding:approvals")
    assert f"You approved {request.reference} at the “Business owner” stage." in text(response)
    assert Decision.objects.get().decided_by == cast.owner


def test_a_missing_reason_gets_an_error_summary(cast, route, client_for):
    request = submit(draft_for(cast))

    response = client_for(cast.owner).post(decision_url(waiting_stage(request)), {"outcome": "reject", "reason": " "})

    assert response.status_code == 200
    page = text(response)
    assert "<title>Error: " in page
    assert "govuk-error-summary" in page and "Enter why you are rejecting the request" in page
    assert 'href="#id_reason"' in page
    assert not Decision.objects.exists()


@pytest.mark.parametrize("sent", [{"reason": "Hmm"}, {}], ids=["reason only", "nothing at all"])
def test_a_missing_outcome_gets_an_error_summary(sent, cast, route, client_for):
    request = submit(draft_for(cast))
    response = client_for(cast.owner).post(decision_url(waiting_stage(request)), sent)
    page = text(response)
    assert "govuk-error-summary" in page and "Select whether to approve, reject or return the request" in page
    assert not Decision.objects.exists()


def test_the_slower_of_two_approvers_is_told_who_decided(cast, route, client_for):
    request = submit(draft_for(cast))
    stage = waiting_stage(request)
    slower = client_for(cast.second_owner)
    assert slower.get(decision_url(stage)).status_code == 200
    approval_decide(actor=cast.owner, stage_id=stage.pk, outcome="approve")

    response = slower.post(decision_url(stage), {"outcome": "reject", "reason": "No"}, follow=True)

    assert "This stage was decided by Olu Adeyemi a moment ago (approved)." in text(response)
    assert Decision.objects.count() == 1
    again = slower.get(decision_url(stage), follow=True)
    assert "This stage was decided by Olu Adeyemi" in text(again)


def test_a_delegate_sees_on_whose_behalf_they_decide(cast, route, client_for):
    today = timezone.localdate()
    delegation_create(actor=cast.owner, delegate=cast.delegate, starts_on=today, ends_on=today)
    request = submit(draft_for(cast))
    page = text(client_for(cast.delegate).get(decision_url(waiting_stage(request))))
    assert "You are deciding on behalf of Olu Adeyemi, who is out of office." in page


def test_people_who_may_not_decide_a_stage_get_404(cast, route, client_for):
    cast.team.business_owners.add(cast.requester)
    cast.requester.groups.add(*cast.owner.groups.all())
    request = submit(draft_for(cast))
    stage = waiting_stage(request)

    for person in (cast.requester, cast.admin, cast.delegate, cast.fallback):
        client = client_for(person)
        assert client.get(decision_url(stage)).status_code == 404, person
        assert client.post(decision_url(stage), {"outcome": "approve"}).status_code == 404, person
    assert client_for(cast.owner).get(reverse("onboarding:approval_decision", args=[stage.pk + 999])).status_code == 404
    assert not Decision.objects.exists()


def test_people_without_the_approver_role_get_403(cast, route, client_for):
    request = submit(draft_for(cast))
    stage = waiting_stage(request)
    for person in (cast.outsider, cast.requester):
        client = client_for(person)
        assert client.get(decision_url(stage)).status_code == 403
        assert client.post(decision_url(stage), {"outcome": "approve"}).status_code == 403


def test_the_second_stage_is_404_for_who_approved_the_first(cast, route, client_for):
    cast.owner.groups.add(*cast.admin.groups.all())
    request = submit(draft_for(cast))
    approval_decide(actor=cast.owner, stage_id=waiting_stage(request).pk, outcome="approve")
    assert client_for(cast.owner).get(decision_url(waiting_stage(request))).status_code == 404


# --- out of office -------------------------------------------------------------------------------


def date_fields(prefix: str, value: dt.date) -> dict[str, str]:
    return {f"{prefix}_0": str(value.day), f"{prefix}_1": str(value.month), f"{prefix}_2": str(value.year)}


def test_an_approver_arranges_and_cancels_cover(cast, client_for):
    client = client_for(cast.owner)
    today = timezone.localdate()
    assert "Nobody is covering for you." in text(client.get(reverse("onboarding:out_of_office")))

    response = client.post(
        reverse("onboarding:out_of_office"),
        {"delegate_email": "DEV@example.gov.uk", **date_fields("starts_on", today), **date_fields("ends_on", today)},
        follow=True,
    )

    page = text(response)
    assert "Dev Mistry will decide for you from" in page
    assert "Covering now" in page
    delegation = Delegation.objects.get()
    assert "You are covering for" in text(client_for(cast.delegate).get(reverse("onboarding:out_of_office")))

    response = client.post(reverse("onboarding:out_of_office_cancel", args=[delegation.pk]), follow=True)
    assert "You cancelled the cover by Dev Mistry." in text(response)
    delegation.refresh_from_db()
    assert delegation.cancelled_at is not None


@pytest.mark.parametrize(
    ("who", "start", "end", "message"),
    [
        ("olu@example.gov.uk", 0, 1, "Choose someone other than yourself"),
        ("rhian@example.gov.uk", 0, 1, "Rhian Evans cannot decide approvals"),
        ("nobody.here@example.gov.uk", 0, 1, "Nobody using the portal has the email address"),
        ("dev@example.gov.uk", -1, 1, "The start date must be today or in the future"),
        ("dev@example.gov.uk", 2, 1, "The end date must be the same as or after the start date"),
    ],
)
def test_cover_that_cannot_work_gets_an_error_summary(cast, client_for, who, start, end, message):
    today = timezone.localdate()
    response = client_for(cast.owner).post(
        reverse("onboarding:out_of_office"),
        {
            "delegate_email": who,
            **date_fields("starts_on", today + dt.timedelta(days=start)),
            **date_fields("ends_on", today + dt.timedelta(days=end)),
        },
    )
    assert response.status_code == 200
    page = text(response)
    assert "govuk-error-summary" in page and message in page
    assert not Delegation.objects.exists()


def test_impossible_dates_get_an_error_not_a_500(cast, client_for):
    response = client_for(cast.owner).post(
        reverse("onboarding:out_of_office"),
        {"delegate_email": "dev@example.gov.uk", "starts_on_0": "31", "starts_on_1": "2", "starts_on_2": "2030"},
    )
    page = text(response)
    assert "Start date must be a real date" in page and "Enter end date" in page


def test_nobody_cancels_someone_elses_cover(cast, client_for):
    today = timezone.localdate()
    delegation = delegation_create(actor=cast.owner, delegate=cast.delegate, starts_on=today, ends_on=today)
    response = client_for(cast.delegate).post(reverse("onboarding:out_of_office_cancel", args=[delegation.pk]))
    assert response.status_code == 404
    assert (
        client_for(cast.owner).get(reverse("onboarding:out_of_office_cancel", args=[delegation.pk])).status_code == 405
    )


# --- configuring the stages ----------------------------------------------------------------------


def test_platform_admins_see_the_stages_in_order(cast, route, client_for):
    ApprovalStage.objects.filter(pk=route[1].pk).update(is_active=False)
    page = text(client_for(cast.admin).get(reverse("onboarding:approval_stages")))
    page = page[page.index('data-testid="stages"') :]
    assert page.index("Business owner") < page.index("Platform admin")
    assert "The team's business owners" in page and "Fiona Reid (fiona@example.gov.uk)" in page
    assert "Everyone with the Platform admin role" in page and "Inactive" in page


def stage_form(**overrides) -> dict[str, str]:
    return {
        "name": "Information governance",
        "approver_kind": "named",
        "role": "",
        "approvers": "dev@example.gov.uk\nfiona@example.gov.uk",
        "fallback_approvers": "",
        "sla_hours": "72",
        "reason_required": "on",
        **overrides,
    }


def test_adding_a_stage(cast, route, client_for):
    response = client_for(cast.admin).post(reverse("onboarding:approval_stage_add"), stage_form(), follow=True)
    assert "The stage “Information governance” was saved." in text(response)
    stage = ApprovalStage.objects.get(name="Information governance")
    assert stage.order == 3 and stage.reason_required and stage.sla_hours == 72
    assert {p.username for p in stage.approvers.all()} == {"dev", "fiona"}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"name": ""}, "Enter the stage name"),
        ({"approvers": ""}, "Enter the email address of at least one approver"),
        ({"approvers": "not-an-address"}, "not-an-address is not an email address"),
        ({"approvers": "ghost@example.gov.uk"}, "Nobody using the portal has the email address ghost@example.gov.uk"),
        ({"approvers": "rhian@example.gov.uk"}, "rhian@example.gov.uk cannot decide approvals"),
        ({"approver_kind": "role", "role": ""}, "Select a role whose holders can decide approvals"),
        ({"sla_hours": "two days"}, "Enter the hours as a whole number, like 48"),
        ({"sla_hours": "0"}, "The time to decide must be between 1 and 2160 hours"),
    ],
)
def test_a_stage_that_cannot_work_gets_an_error_summary(cast, route, client_for, overrides, message):
    response = client_for(cast.admin).post(reverse("onboarding:approval_stage_add"), stage_form(**overrides))
    assert response.status_code == 200
    page = text(response)
    assert "govuk-error-summary" in page and message in page
    assert ApprovalStage.objects.count() == 2


def test_changing_a_stage(cast, route, client_for):
    client = client_for(cast.admin)
    url = reverse("onboarding:approval_stage_change", args=[route[0].pk])
    form_page = text(client.get(url))
    assert 'value="Business owner"' in form_page and "fiona@example.gov.uk" in form_page

    client.post(url, stage_form(name="Team approver", approver_kind="role", role="approver", team_scoped="on"))

    stage = ApprovalStage.objects.get(pk=route[0].pk)
    assert (stage.name, stage.approver_kind, stage.role, stage.team_scoped) == (
        "Team approver",
        "role",
        "approver",
        True,
    )
    assert not stage.approvers.exists()
    assert AuditEvent.objects.filter(action="approval_stage.updated").count() == 1


def test_moving_deactivating_and_activating_stages(cast, route, client_for):
    client = client_for(cast.admin)
    client.post(reverse("onboarding:approval_stage_move", args=[route[1].pk]), {"direction": "up"})
    assert list(ApprovalStage.objects.order_by("order").values_list("pk", flat=True)) == [route[1].pk, route[0].pk]

    confirm = text(client.get(reverse("onboarding:approval_stage_deactivate", args=[route[0].pk])))
    assert "Deactivate the “Business owner” stage?" in confirm
    client.post(reverse("onboarding:approval_stage_deactivate", args=[route[0].pk]))
    refused = client.post(reverse("onboarding:approval_stage_deactivate", args=[route[1].pk]), follow=True)
    assert "At least one stage must stay active" in text(refused)
    client.post(reverse("onboarding:approval_stage_activate", args=[route[0].pk]))
    assert list(ApprovalStage.objects.order_by("order").values_list("is_active", flat=True)) == [True, True]


def test_unknown_stages_are_404(cast, route, client_for):
    client = client_for(cast.admin)
    assert client.get(reverse("onboarding:approval_stage_change", args=[999])).status_code == 404
    assert client.post(reverse("onboarding:approval_stage_move", args=[999]), {"direction": "up"}).status_code == 404


# --- everyone else -------------------------------------------------------------------------------


def every_url(route, delegation, stage) -> list[tuple[str, str]]:
    return [
        ("get", reverse("onboarding:approvals")),
        ("get", reverse("onboarding:out_of_office")),
        ("post", reverse("onboarding:out_of_office")),
        ("post", reverse("onboarding:out_of_office_cancel", args=[delegation.pk])),
        ("get", decision_url(stage)),
        ("post", decision_url(stage)),
        ("get", reverse("onboarding:approval_stages")),
        ("get", reverse("onboarding:approval_stage_add")),
        ("post", reverse("onboarding:approval_stage_add")),
        ("get", reverse("onboarding:approval_stage_change", args=[route[0].pk])),
        ("post", reverse("onboarding:approval_stage_change", args=[route[0].pk])),
        ("post", reverse("onboarding:approval_stage_move", args=[route[0].pk])),
        ("get", reverse("onboarding:approval_stage_deactivate", args=[route[0].pk])),
        ("post", reverse("onboarding:approval_stage_deactivate", args=[route[0].pk])),
        ("post", reverse("onboarding:approval_stage_activate", args=[route[0].pk])),
    ]


@pytest.fixture
def world(cast, route):
    today = timezone.localdate()
    delegation = delegation_create(actor=cast.owner, delegate=cast.delegate, starts_on=today, ends_on=today)
    request = submit(draft_for(cast))
    return route, delegation, waiting_stage(request)


@pytest.mark.parametrize("persona", ["outsider", "requester", "migration_lead", "auditor"])
def test_people_without_an_approval_role_are_refused_everywhere(persona, request, world, client_for):
    client = client_for(request.getfixturevalue(persona))
    for method, url in every_url(*world):
        assert getattr(client, method)(url).status_code in (403, 404), (method, url)
    assert Decision.objects.count() == 0 and Delegation.objects.filter(cancelled_at__isnull=True).count() == 1
    assert list(ApprovalStage.objects.order_by("order").values_list("is_active", flat=True)) == [True, True]


def test_approvers_are_refused_the_configuration_pages(world, client_for):
    approver = UserFactory(roles=[Role.APPROVER])
    client = client_for(approver)
    for method, url in every_url(*world)[6:]:
        assert getattr(client, method)(url).status_code == 403, (method, url)


def test_signed_out_visitors_are_sent_to_sign_in(world, client):
    for method, url in every_url(*world):
        response = getattr(client, method)(url)
        assert response.status_code == 302 and response["Location"].startswith(reverse("accounts:sign_in"))
    _, _, stage = world
    assert stage.request.status == RequestStatus.SUBMITTED
    assert [s.status for s in stages_of(stage.request)] == [StageStatus.WAITING, StageStatus.PENDING]
