"""The requester's pages: questions, check your answers, confirmation, dashboard, status and withdrawal."""

from __future__ import annotations

import datetime as dt
import html as html_text
import re

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from onboarding.models import (
    Decision,
    DecisionOutcome,
    MailboxKind,
    MailboxRequest,
    Notification,
    NotificationEvent,
    ProvisioningRun,
    ProvisioningStep,
    RequestMember,
    RequestStage,
    RequestStatus,
    StageStatus,
    StepStatus,
)
from onboarding.services.mailbox_requests import mailbox_request_create_draft
from portal.accounts.roles import Role
from portal.policy.models import TrackingRule
from tests.factories import UserFactory
from tests.onboarding.factories import TeamFactory
from tests.onboarding.mailbox_request_support import (
    another_requester,
    complete_request,
    person,
    record_approval_route,
)

pytestmark = pytest.mark.django_db

SAVE = {"submit": "Save and continue"}
LATER = {"save_later": ""}


@pytest.fixture
def route(monkeypatch):
    return record_approval_route(monkeypatch)


@pytest.fixture
def client(requester, client_for) -> Client:
    return client_for(requester)


@pytest.fixture
def team(requester):
    return TeamFactory(name="Finance", business_unit="Finance", members=[requester])


@pytest.fixture
def draft(requester):
    return mailbox_request_create_draft(actor=requester)


def question(draft: MailboxRequest, slug: str, *, returning: bool = False) -> str:
    url = reverse("onboarding:request_question", args=[draft.pk, slug])
    return f"{url}?return=check" if returning else url


def error_summary(response) -> list[str]:
    html = response.content.decode()
    match = re.search(r'<div class="govuk-error-summary".*?</ul>', html, re.S)
    assert match, "no error summary on the page"
    items = re.findall(r"<li><a [^>]*>(.*?)</a></li>", match.group(0), re.S)
    return [html_text.unescape(re.sub(r"\s+", " ", item).strip()) for item in items]


def text(response) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", response.content.decode()))


# --- starting and the question pages -----------------------------------------------------------


def test_the_first_question_asks_the_kind_with_plain_english_hints(client):
    response = client.get(reverse("onboarding:request_start"))
    assert response.status_code == 200
    html = response.content.decode()
    assert '<h1 class="govuk-fieldset__heading">' in html
    assert "What kind of mailbox does your team need?" in html
    assert "It is not connected to Dynamics 365" in html
    assert "also a queue in Dynamics 365" in html
    assert 'name="save_later"' in html and "Save and come back later" in html
    assert 'class="govuk-back-link"' in html
    assert not MailboxRequest.objects.exists()  # looking makes no draft


def test_the_first_answer_makes_the_draft(client, requester):
    response = client.post(reverse("onboarding:request_start"), {"kind": "queue", **SAVE})
    draft = MailboxRequest.objects.get()
    assert (draft.requester, draft.kind, draft.status) == (requester, "queue", RequestStatus.DRAFT)
    assert response["Location"] == question(draft, "name")


def test_no_kind_chosen_gets_an_error_summary(client):
    response = client.post(reverse("onboarding:request_start"), {"kind": "mailing-list", **SAVE})
    assert error_summary(response) == ["Select the kind of mailbox"]
    assert "<title>Error: " in response.content.decode()
    assert not MailboxRequest.objects.exists()


def test_leaving_the_first_page_blank_for_later_makes_nothing(client):
    response = client.post(reverse("onboarding:request_start"), LATER)
    assert response["Location"] == reverse("onboarding:requests")
    assert not MailboxRequest.objects.exists()


def test_a_queue_request_walks_every_question_in_order(client, requester, team, route):
    owner, backup = person("olu", email="olu@example.gov.uk"), person("bea", email="bea@example.gov.uk")
    response = client.post(reverse("onboarding:request_start"), {"kind": "queue", **SAVE})
    draft = MailboxRequest.objects.get()
    answers = [
        ("name", {"display_name": "  Finance   enquiries "}, "address"),
        ("address", {"local_part": "Finance-Enquiries", "domain": "example.gov.uk"}, "team"),
        ("team", {"team": team.pk}, "owners"),
        ("owners", {"owner": "OLU@example.gov.uk", "backup_owner": "bea@example.gov.uk"}, "members"),
    ]
    for slug, data, following in answers:
        assert response["Location"] == question(draft, slug)
        assert client.get(response["Location"]).status_code == 200
        response = client.post(question(draft, slug), {**data, **SAVE})
        assert response.status_code == 302, error_summary(response)
        expected = reverse("onboarding:request_members", args=[draft.pk]) if following == "members" else None
        assert response["Location"] == (expected or question(draft, following))

    members_url = reverse("onboarding:request_members", args=[draft.pk])
    response = client.post(members_url, {"email": "Ann@example.gov.uk", "permissions": ["full_access", "send_as"]})
    assert response["Location"] == members_url
    page = client.get(members_url)
    assert "ann@example.gov.uk" in page.content.decode()
    assert f'href="{question(draft, "visibility")}"' in page.content.decode()

    rest = [
        ("visibility", {"queue_visibility": "1"}, "tracking"),
        ("tracking", {"tracking_rule": str(TrackingRule.RESPONSES.value)}, "usage"),
        (
            "usage",
            {
                "expected_daily_volume": "1,200",
                "typical_attachment_kb": "300",
                "retention_months": "24",
                "data_classification": "official_sensitive",
            },
            "justification",
        ),
        ("justification", {"justification": "Citizens write about invoices.\r\nWe answer in Dynamics 365."}, None),
    ]
    for slug, data, following in rest:
        response = client.post(question(draft, slug), {**data, **SAVE})
        assert response.status_code == 302, error_summary(response)
        assert response["Location"] == (
            question(draft, following) if following else reverse("onboarding:request_check", args=[draft.pk])
        )

    draft.refresh_from_db()
    assert draft.display_name == "Finance enquiries"
    assert draft.address == "finance-enquiries@example.gov.uk"
    assert (draft.team, draft.owner, draft.backup_owner) == (team, owner, backup)
    assert (draft.queue_visibility, draft.tracking_rule) == (1, TrackingRule.RESPONSES)
    assert (draft.expected_daily_volume, draft.typical_attachment_kb, draft.retention_months) == (1200, 300, 24)
    assert list(draft.members.values_list("email", "full_access", "send_as")) == [("ann@example.gov.uk", True, True)]

    check = client.get(reverse("onboarding:request_check", args=[draft.pk]))
    assert check.status_code == 200
    assert "This address will be checked in Microsoft 365 during set-up." in check.content.decode()
    response = client.post(reverse("onboarding:request_check", args=[draft.pk]))
    assert response["Location"] == reverse("onboarding:request_submitted", args=[draft.pk])
    draft.refresh_from_db()
    assert draft.status == RequestStatus.SUBMITTED
    confirmation = client.get(response["Location"])
    html = confirmation.content.decode()
    assert "govuk-panel--confirmation" in html
    assert f"<strong>{draft.reference}</strong>" in html
    assert "What happens next" in html
    assert "Business owner" in html  # the stages, in order


def test_a_shared_mailbox_skips_the_queue_questions(client, requester, draft):
    client.post(question(draft, "kind"), {"kind": "shared", **SAVE})
    response = client.get(reverse("onboarding:request_members", args=[draft.pk]))
    assert f'href="{question(draft, "usage")}"' in response.content.decode()
    assert client.get(question(draft, "tracking"))["Location"] == reverse("onboarding:request_check", args=[draft.pk])
    back = client.get(question(draft, "usage")).content.decode()
    assert f'href="{reverse("onboarding:request_members", args=[draft.pk])}" class="govuk-back-link"' in back


@pytest.mark.parametrize(
    ("slug", "data", "message"),
    [
        ("name", {"display_name": ""}, "Enter a name for the mailbox"),
        ("name", {"display_name": "x" * 65}, "The name must be 64 characters or fewer"),
        ("name", {"display_name": "Finance\x1b[2J"}, "A name for the mailbox can only contain letters"),
        ("name", {"display_name": "Finance\x00"}, "A name for the mailbox can only contain letters"),
        ("name", {"display_name": "gnp.\u202eexe"}, "A name for the mailbox can only contain letters"),
        ("address", {"local_part": "", "domain": "example.gov.uk"}, "Enter the first part of the email address"),
        ("address", {"local_part": "fin ance", "domain": "example.gov.uk"}, "can only contain letters, numbers"),
        ("address", {"local_part": "fin(ance)", "domain": "example.gov.uk"}, "can only contain letters, numbers"),
        ("address", {"local_part": "fin..ance", "domain": "example.gov.uk"}, "cannot contain two full stops in a row"),
        ("address", {"local_part": ".finance", "domain": "example.gov.uk"}, "cannot start or end with a full stop"),
        ("address", {"local_part": "a" * 65, "domain": "example.gov.uk"}, "must be 64 characters or fewer"),
        ("address", {"local_part": "a@b.gov.uk", "domain": "example.gov.uk"}, "Enter only the part of the address"),
        ("address", {"local_part": "finance", "domain": "evil.example.com"}, "Select a domain from the list"),
        ("address", {"local_part": "finance"}, "Select a domain"),
        ("team", {}, "Select the team that will own the mailbox"),
        ("team", {"team": "abc"}, "Select one of your teams"),
        ("team", {"team": "99999999999999999999999"}, "Select one of your teams"),
        ("owners", {"owner": "", "backup_owner": ""}, "Enter the accountable owner's email address"),
        ("owners", {"owner": "not-an-email", "backup_owner": "bea@example.gov.uk"}, "in the correct format"),
        ("owners", {"owner": "nobody@example.gov.uk", "backup_owner": "bea@example.gov.uk"}, "no portal account"),
        ("owners", {"owner": "olu@example.gov.uk", "backup_owner": "OLU@example.gov.uk"}, "different person"),
        ("owners", {"owner": "ivy@example.gov.uk", "backup_owner": "bea@example.gov.uk"}, "not active"),
        ("visibility", {"queue_visibility": "7"}, "Select whether the queue is public or private"),
        ("tracking", {"tracking_rule": "0"}, "Enter why the queue needs to track all email messages"),
        ("tracking", {"tracking_rule": "0", "tracking_reason": "x" * 1001}, "1,000 characters or fewer"),
        ("tracking", {"tracking_rule": "x"}, "Select which email messages the queue tracks"),
        ("usage", {"expected_daily_volume": "lots"}, "as a whole number"),
        ("usage", {"expected_daily_volume": "-5"}, "must be 0 or more"),
        ("usage", {"expected_daily_volume": "9" * 5000}, "as a whole number"),
        ("usage", {"typical_attachment_kb": "153601"}, "must be 153,600 or fewer"),
        ("usage", {"retention_months": "0"}, "must be 1 or more"),
        ("usage", {"retention_months": "1.5"}, "as a whole number"),
        ("usage", {"data_classification": "secret"}, "Select the data classification"),
        ("justification", {"justification": ""}, "Enter why your team needs this mailbox"),
        ("justification", {"justification": "x" * 10_000}, "The justification must be 5,000 characters or fewer"),
        ("justification", {"justification": "ok\x07"}, "can only contain letters"),
        ("justification", {"justification": "ok", "ticket_reference": "T" * 51}, "50 characters or fewer"),
    ],
)
def test_each_question_reports_bad_answers_in_an_error_summary(client, requester, draft, slug, data, message):
    person("olu", email="olu@example.gov.uk")
    person("bea", email="bea@example.gov.uk")
    person("ivy", email="ivy@example.gov.uk", is_active=False)
    MailboxRequest.objects.filter(pk=draft.pk).update(kind=MailboxKind.QUEUE)
    TeamFactory(name="Not theirs")
    response = client.post(question(draft, slug), {**data, **SAVE})
    assert response.status_code == 200
    assert any(message in error for error in error_summary(response)), error_summary(response)
    assert "govuk-form-group--error" in response.content.decode()


def test_over_tracking_needs_a_reason_and_keeps_it(client, draft):
    MailboxRequest.objects.filter(pk=draft.pk).update(kind=MailboxKind.QUEUE)
    page = client.get(question(draft, "tracking")).content.decode()
    assert "govuk-radios__conditional" in page
    assert "This is the recommended choice." in page
    assert re.search(r'value="3"\s+checked="checked"', page)  # the policy's default is preselected
    client.post(question(draft, "tracking"), {"tracking_rule": "0", "tracking_reason": "Regulated inbox", **SAVE})
    draft.refresh_from_db()
    assert (draft.tracking_rule, draft.tracking_reason) == (TrackingRule.ALL, "Regulated inbox")


def test_a_duplicate_of_an_open_request_is_refused_on_the_address_page(client, draft):
    other = complete_request(another_requester(), local_part="finance", status=RequestStatus.SUBMITTED)
    response = client.post(question(draft, "address"), {"local_part": "FINANCE", "domain": "example.gov.uk", **SAVE})
    assert error_summary(response) == [f"That address is already used by request {other.reference}"]


def test_with_no_team_the_team_page_says_what_to_do(client, draft):
    html = client.get(question(draft, "team")).content.decode()
    assert "You are not in any team in the portal yet" in html


# --- drafts: saved, continued, changed ---------------------------------------------------------


def test_save_and_come_back_later_keeps_the_answer(client, draft):
    response = client.post(question(draft, "name"), {"display_name": "Payroll", **LATER})
    assert response["Location"] == reverse("onboarding:requests")
    draft.refresh_from_db()
    assert draft.display_name == "Payroll"
    dashboard = client.get(response["Location"]).content.decode()
    assert f"Your answers to request {draft.reference} are saved" in dashboard
    assert reverse("onboarding:request_continue", args=[draft.pk]) in dashboard


def test_a_page_left_part_done_for_later_keeps_what_was_answered(client, draft):
    owner = person("olu", email="olu@example.gov.uk")
    response = client.post(question(draft, "owners"), {"owner": "olu@example.gov.uk", "backup_owner": "", **LATER})
    assert response["Location"] == reverse("onboarding:requests")
    draft.refresh_from_db()
    assert (draft.owner, draft.backup_owner) == (owner, None)


def test_save_for_later_still_refuses_a_bad_answer(client, draft):
    response = client.post(question(draft, "name"), {"display_name": "x" * 65, **LATER})
    assert response.status_code == 200
    assert error_summary(response) == ["The name must be 64 characters or fewer"]


def test_continuing_a_draft_goes_to_the_first_unanswered_question(client, requester):
    partly = complete_request(requester, status=RequestStatus.DRAFT, owner=None, backup_owner=None)
    response = client.get(reverse("onboarding:request_continue", args=[partly.pk]))
    assert response["Location"] == question(partly, "owners")
    whole = complete_request(requester, local_part="all-done")
    response = client.get(reverse("onboarding:request_continue", args=[whole.pk]))
    assert response["Location"] == reverse("onboarding:request_check", args=[whole.pk])


def test_check_your_answers_links_each_answer_back_and_returns_there(client, requester):
    request = complete_request(requester)
    check_url = reverse("onboarding:request_check", args=[request.pk])
    html = client.get(check_url).content.decode()
    for slug in ("kind", "name", "address", "team", "owners", "visibility", "tracking", "usage", "justification"):
        assert f'href="{question(request, slug, returning=True)}"' in html
    assert f'href="{reverse("onboarding:request_members", args=[request.pk])}?return=check"' in html
    assert html.count(">Change<span") == 10

    page = client.get(question(request, "name", returning=True)).content.decode()
    assert f'href="{check_url}" class="govuk-back-link"' in page
    response = client.post(question(request, "name", returning=True), {"display_name": "Renamed", **SAVE})
    assert response["Location"] == check_url


def test_changing_to_a_queue_from_check_answers_asks_the_new_questions_first(client, requester):
    shared = complete_request(requester, kind=MailboxKind.SHARED, queue_visibility=None, tracking_rule=None)
    response = client.post(question(shared, "kind", returning=True), {"kind": "queue", **SAVE})
    assert response["Location"] == question(shared, "visibility", returning=True)


def test_missing_answers_show_as_links_and_stop_submission(client, requester, draft, route):
    html = client.get(reverse("onboarding:request_check", args=[draft.pk])).content.decode()
    assert (
        f'<a class="govuk-link" href="{question(draft, "kind", returning=True)}">Select the kind of mailbox</a>' in html
    )
    response = client.post(reverse("onboarding:request_check", args=[draft.pk]))
    assert response.status_code == 200
    assert error_summary(response)[:2] == ["Select the kind of mailbox", "Enter a name for the mailbox"]
    assert "<title>Error: Check your answers" in response.content.decode()
    draft.refresh_from_db()
    assert draft.status == RequestStatus.DRAFT
    assert route.starts == []


def test_a_clash_found_at_submission_links_to_the_address_question(client, requester, route):
    request = complete_request(requester, local_part="finance")
    complete_request(another_requester(), local_part="finance", status=RequestStatus.SUBMITTED)
    response = client.post(reverse("onboarding:request_check", args=[request.pk]))
    assert "That address is already used by request" in error_summary(response)[0]
    assert f'href="{question(request, "address", returning=True)}"' in response.content.decode()


def test_a_returned_request_shows_what_was_asked_and_is_resubmitted(client, requester, route):
    request = complete_request(requester, status=RequestStatus.RETURNED)
    stage = RequestStage.objects.create(
        request=request, order=1, name="Business owner", approver_kind="team_owner", sla_hours=48
    )
    Decision.objects.create(
        request=request,
        stage=stage,
        decided_by=person("bo"),
        outcome=DecisionOutcome.RETURN,
        reason="Which team answers at weekends?",
        decided_at=timezone.now(),
    )
    html = client.get(reverse("onboarding:request_check", args=[request.pk])).content.decode()
    assert "Which team answers at weekends?" in html
    assert "Send the request again" in html
    response = client.post(reverse("onboarding:request_check", args=[request.pk]))
    assert response["Location"] == reverse("onboarding:request_submitted", args=[request.pk])
    request.refresh_from_db()
    assert request.status == RequestStatus.SUBMITTED


@pytest.mark.parametrize("status", [RequestStatus.SUBMITTED, RequestStatus.ACTIVE, RequestStatus.WITHDRAWN])
def test_a_submitted_request_cannot_be_changed_through_its_pages(client, requester, status):
    request = complete_request(requester, status=status)
    detail = reverse("onboarding:request_detail", args=[request.pk])
    for url in (
        question(request, "name"),
        reverse("onboarding:request_members", args=[request.pk]),
        reverse("onboarding:request_check", args=[request.pk]),
    ):
        assert client.get(url)["Location"] == detail
        assert client.post(url, {"display_name": "Renamed", **SAVE})["Location"] == detail
    request.refresh_from_db()
    assert request.display_name != "Renamed"


# --- members -----------------------------------------------------------------------------------


def test_members_are_added_and_removed_without_javascript(client, requester):
    request = complete_request(requester)
    url = reverse("onboarding:request_members", args=[request.pk])
    client.post(url, {"email": "ann@example.gov.uk", "permissions": ["full_access", "automapping"]})
    client.post(url, {"email": "bob@example.gov.uk", "permissions": ["send_on_behalf"]})
    html = client.get(url).content.decode()
    assert "You have added 2 members" in html
    ann = request.members.get(email="ann@example.gov.uk")
    remove_url = reverse("onboarding:request_member_remove", args=[request.pk, ann.pk])
    assert f'href="{remove_url}"' in html
    confirm = client.get(remove_url)
    assert "Are you sure you want to remove ann@example.gov.uk?" in confirm.content.decode()
    assert request.members.count() == 2  # looking removes nothing
    response = client.post(remove_url)
    assert response["Location"] == url
    assert list(request.members.values_list("email", flat=True)) == ["bob@example.gov.uk"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"email": "", "permissions": ["full_access"]}, "Enter the member's email address"),
        ({"email": "ann", "permissions": ["full_access"]}, "in the correct format"),
        ({"email": "ann@example.gov.uk"}, "Select at least one permission"),
        ({"email": "ann@example.gov.uk", "permissions": ["automapping"]}, "Select full access to show the mailbox"),
        ({"email": "ann@example.gov.uk", "permissions": ["root"]}, "Select permissions from the list"),
        ({"email": "ANN@example.gov.uk", "permissions": ["send_as"]}, "ann@example.gov.uk is already a member"),
    ],
)
def test_bad_members_get_an_error_summary(client, requester, data, message):
    request = complete_request(requester)
    RequestMember.objects.create(request=request, email="ann@example.gov.uk")
    response = client.post(reverse("onboarding:request_members", args=[request.pk]), data)
    assert response.status_code == 200
    assert any(message in error for error in error_summary(response)), error_summary(response)


def test_a_member_of_another_request_cannot_be_removed_through_this_one(client, requester):
    mine = complete_request(requester)
    theirs = complete_request(another_requester())
    member = RequestMember.objects.create(request=theirs, email="ann@example.gov.uk")
    response = client.post(reverse("onboarding:request_member_remove", args=[mine.pk, member.pk]))
    assert response.status_code == 404
    assert RequestMember.objects.filter(pk=member.pk).exists()


# --- dashboard ---------------------------------------------------------------------------------


def test_the_dashboard_lists_own_and_team_requests_newest_first(client, requester, team):
    colleague = another_requester("cole")
    team.members.add(colleague)
    stranger = another_requester("stan")
    now = timezone.now()
    mine = complete_request(requester, team=team, display_name="Mine", created_at=now - dt.timedelta(days=2))
    my_draft = complete_request(requester, team=team, display_name="My draft", local_part="d", created_at=now)
    ours = complete_request(
        colleague, team=team, display_name="Colleague's", status=RequestStatus.ACTIVE, created_at=now - dt.timedelta(1)
    )
    complete_request(colleague, team=team, display_name="Colleague's draft", local_part="cd")
    complete_request(stranger, display_name="Stranger's", status=RequestStatus.SUBMITTED)
    response = client.get(reverse("onboarding:requests"))
    html = response.content.decode()
    assert "Request a new mailbox" in html and "govuk-button--start" in html
    assert html.index(my_draft.reference) < html.index(ours.reference) < html.index(mine.reference)
    assert "Stranger's" not in html
    assert "Colleague&#x27;s draft" not in html
    assert f'href="{reverse("onboarding:request_continue", args=[my_draft.pk])}"' in html
    assert '<strong class="govuk-tag govuk-tag--green">Active</strong>' in html


def test_the_dashboard_costs_the_same_queries_at_any_size(requester, client_for, django_assert_max_num_queries):
    team = TeamFactory(members=[requester])
    client = client_for(requester)
    complete_request(requester, team=team, local_part="one")
    with django_assert_max_num_queries(8) as few:
        client.get(reverse("onboarding:requests"))
    for index in range(45):
        complete_request(requester, team=team, local_part=f"many-{index}", status=RequestStatus.SUBMITTED)
    with django_assert_max_num_queries(len(few.captured_queries)):
        response = client.get(reverse("onboarding:requests"))
    assert response.content.decode().count("govuk-table__row") == 21  # a page of 20, and the header
    with django_assert_max_num_queries(len(few.captured_queries)):
        last = client.get(reverse("onboarding:requests"), {"page": "3"})
    assert "Page 2 of 3" in last.content.decode()


@pytest.mark.parametrize("page", ["abc", "-1", "0", "99999999999999999999", "1e9"])
def test_odd_page_numbers_still_give_a_page(client, requester, page):
    complete_request(requester)
    assert client.get(reverse("onboarding:requests"), {"page": page}).status_code == 200


# --- status page -------------------------------------------------------------------------------


def test_the_status_page_shows_the_answers_and_the_timeline(client, requester, route):
    request = complete_request(requester, status=RequestStatus.DRAFT)
    client.post(reverse("onboarding:request_check", args=[request.pk]))
    request.refresh_from_db()
    first = request.stages.get(order=1)
    approver, delegator = person("dee", first_name="Dee", last_name="Lane"), person("max", first_name="Max")
    Decision.objects.create(
        request=request,
        stage=first,
        decided_by=approver,
        on_behalf_of=delegator,
        outcome=DecisionOutcome.APPROVE,
        reason="Fine by the team",
        decided_at=timezone.now(),
    )
    RequestStage.objects.filter(pk=first.pk).update(status=StageStatus.APPROVED)
    second = request.stages.get(order=2)
    due = timezone.now() + dt.timedelta(hours=24)
    RequestStage.objects.filter(pk=second.pk).update(
        status=StageStatus.WAITING, due_at=due, waiting_since=timezone.now()
    )

    response = client.get(reverse("onboarding:request_detail", args=[request.pk]))
    assert response.status_code == 200
    page = text(response)
    assert request.reference in page
    assert "Waiting for approval" in page
    assert "Request submitted" in page
    assert "Business owner: approved" in page
    assert "Dee Lane on behalf of Max" in page
    assert "Fine by the team" in page
    assert "Platform admin decision Waiting for a decision" in page
    assert f"Estimated decision by {timezone.localtime(due):%-d %B %Y}" in page
    assert f"Email: Mailbox request {request.reference} submitted Queued" in page
    assert request.justification in page
    assert "Withdraw request" in page


def test_the_status_page_shows_provisioning_and_reads_active_exactly(client, requester):
    request = complete_request(requester, status=RequestStatus.ACTIVE)
    run = ProvisioningRun.objects.create(request=request, created_at=timezone.now())
    ProvisioningStep.objects.create(
        run=run,
        order=1,
        name="Create the shared mailbox",
        status=StepStatus.SUCCEEDED,
        idempotency_key=f"{run.pk}-1",
        finished_at=timezone.now(),
    )
    ProvisioningStep.objects.create(
        run=run,
        order=2,
        name="Test and enable",
        status=StepStatus.FAILED,
        idempotency_key=f"{run.pk}-2",
        error="Mailbox alert: the email address is not approved",
        finished_at=timezone.now(),
    )
    html = client.get(reverse("onboarding:request_detail", args=[request.pk])).content.decode()
    assert '<strong class="govuk-tag govuk-tag--green">Active</strong>' in html
    assert "Set-up: Create the shared mailbox" in html
    assert "Mailbox alert: the email address is not approved" in html
    assert "Withdraw request" not in html


def test_the_status_page_costs_the_same_queries_however_long_the_history(
    client, requester, django_assert_max_num_queries
):
    request = complete_request(requester, status=RequestStatus.SUBMITTED)
    url = reverse("onboarding:request_detail", args=[request.pk])
    with django_assert_max_num_queries(12) as few:
        client.get(url)
    run = ProvisioningRun.objects.create(request=request, created_at=timezone.now())
    for order in range(1, 6):
        stage = RequestStage.objects.create(
            request=request, order=order, name=f"Stage {order}", approver_kind="named", sla_hours=8
        )
        Decision.objects.create(
            request=request,
            stage=stage,
            decided_by=person(f"d{order}"),
            on_behalf_of=person(f"o{order}"),
            outcome=DecisionOutcome.APPROVE,
            decided_at=timezone.now(),
        )
        ProvisioningStep.objects.create(
            run=run, order=order, name=f"Step {order}", idempotency_key=f"k{order}", done_by=person(f"h{order}")
        )
        Notification.objects.create(
            request=request, event=NotificationEvent.APPROVED, subject=f"N{order}", created_at=timezone.now()
        )
        RequestMember.objects.create(request=request, email=f"m{order}@example.gov.uk")
    with django_assert_max_num_queries(len(few.captured_queries)):
        response = client.get(url)
    assert "Stage 5: approved" in response.content.decode()


def test_a_returned_request_offers_to_change_and_resubmit(client, requester):
    request = complete_request(requester, status=RequestStatus.RETURNED)
    html = client.get(reverse("onboarding:request_detail", args=[request.pk])).content.decode()
    assert "Change your answers and resubmit" in html
    assert f'href="{reverse("onboarding:request_check", args=[request.pk])}"' in html


def test_the_confirmation_is_only_for_a_request_just_submitted(client, requester):
    active = complete_request(requester, status=RequestStatus.ACTIVE)
    response = client.get(reverse("onboarding:request_submitted", args=[active.pk]))
    assert response["Location"] == reverse("onboarding:request_detail", args=[active.pk])
    draft = complete_request(requester, local_part="still-a-draft")
    response = client.get(reverse("onboarding:request_submitted", args=[draft.pk]))
    assert response["Location"] == reverse("onboarding:request_check", args=[draft.pk])


def test_a_draft_offers_to_continue(client, requester, draft):
    html = client.get(reverse("onboarding:request_detail", args=[draft.pk])).content.decode()
    assert "Continue your request" in html


def test_team_members_see_a_colleagues_request_but_cannot_act_on_it(client_for, requester, team):
    colleague = another_requester("cole")
    team.members.add(colleague)
    request = complete_request(requester, team=team, status=RequestStatus.SUBMITTED)
    client = client_for(colleague)
    html = client.get(reverse("onboarding:request_detail", args=[request.pk])).content.decode()
    assert request.reference in html
    assert "Withdraw request" not in html
    assert client.get(reverse("onboarding:request_withdraw", args=[request.pk])).status_code == 403
    assert client.post(reverse("onboarding:request_withdraw", args=[request.pk])).status_code == 403
    assert client.get(question(request, "name")).status_code == 403
    request.refresh_from_db()
    assert request.status == RequestStatus.SUBMITTED


def test_other_peoples_requests_are_not_found(client, requester):
    theirs = complete_request(another_requester(), status=RequestStatus.SUBMITTED)
    for url in urls_for(theirs):
        assert client.get(url).status_code == 404, url


def test_approvers_see_what_waits_for_them(client_for, requester):
    business_owner = UserFactory(username="bo", roles=[Role.APPROVER])
    team = TeamFactory(members=[requester], business_owners=[business_owner])
    request = complete_request(requester, team=team, status=RequestStatus.SUBMITTED)
    RequestStage.objects.create(
        request=request,
        order=1,
        name="Business owner",
        approver_kind="team_owner",
        sla_hours=48,
        status=StageStatus.WAITING,
        waiting_since=timezone.now(),
        due_at=timezone.now() + dt.timedelta(hours=48),
    )
    response = client_for(business_owner).get(reverse("onboarding:request_detail", args=[request.pk]))
    assert response.status_code == 200
    assert "Withdraw request" not in response.content.decode()


@pytest.mark.parametrize("pk", ["99999999999999999999999", "0"])
def test_unknown_requests_are_not_found(client, pk):
    assert client.get(f"/requests/{pk}/").status_code == 404


# --- withdrawal --------------------------------------------------------------------------------


def test_withdrawing_asks_for_confirmation_then_withdraws(client, requester, route):
    request = complete_request(requester)
    client.post(reverse("onboarding:request_check", args=[request.pk]))
    url = reverse("onboarding:request_withdraw", args=[request.pk])
    detail = client.get(reverse("onboarding:request_detail", args=[request.pk])).content.decode()
    assert f'href="{url}"' in detail
    confirm = client.get(url)
    assert "Are you sure you want to withdraw this request?" in confirm.content.decode()
    request.refresh_from_db()
    assert request.status == RequestStatus.SUBMITTED  # looking withdraws nothing
    response = client.post(url, {"reason": "No longer needed", "withdraw": ""})
    assert response["Location"] == reverse("onboarding:request_detail", args=[request.pk])
    request.refresh_from_db()
    assert request.status == RequestStatus.WITHDRAWN
    page = text(client.get(response["Location"]))
    assert f"Request {request.reference} has been withdrawn" in page
    assert "Request withdrawn" in page and "No longer needed" in page
    assert len(route.cancels) == 1


@pytest.mark.parametrize("status", [RequestStatus.PROVISIONING, RequestStatus.ACTIVE, RequestStatus.REJECTED])
def test_withdrawal_is_refused_once_it_is_too_late(client, requester, status):
    request = complete_request(requester, status=status)
    url = reverse("onboarding:request_withdraw", args=[request.pk])
    response = client.post(url, {"withdraw": ""})
    assert response["Location"] == reverse("onboarding:request_detail", args=[request.pk])
    assert "cannot be withdrawn" in text(client.get(response["Location"]))
    request.refresh_from_db()
    assert request.status == status


def test_a_long_withdrawal_reason_gets_an_error_summary(client, requester):
    request = complete_request(requester, status=RequestStatus.SUBMITTED)
    response = client.post(reverse("onboarding:request_withdraw", args=[request.pk]), {"reason": "x" * 1001})
    assert error_summary(response) == ["The reason must be 1,000 characters or fewer"]


# --- who may reach what, and hostile input -----------------------------------------------------


def urls_for(request: MailboxRequest) -> list[str]:
    member = RequestMember.objects.create(request=request, email=f"m{request.pk}@example.gov.uk")
    return [
        reverse("onboarding:request_detail", args=[request.pk]),
        reverse("onboarding:request_continue", args=[request.pk]),
        question(request, "name"),
        reverse("onboarding:request_members", args=[request.pk]),
        reverse("onboarding:request_member_remove", args=[request.pk, member.pk]),
        reverse("onboarding:request_check", args=[request.pk]),
        reverse("onboarding:request_submitted", args=[request.pk]),
        reverse("onboarding:request_withdraw", args=[request.pk]),
    ]


@pytest.mark.parametrize("persona", ["outsider", "migration_lead", "auditor"])
def test_people_without_the_requester_role_are_refused_everywhere(persona, request, requester, client_for):
    mailbox_request = complete_request(requester, status=RequestStatus.SUBMITTED)
    client = client_for(request.getfixturevalue(persona))
    everything = [reverse("onboarding:requests"), reverse("onboarding:request_start"), *urls_for(mailbox_request)]
    for url in everything:
        assert client.get(url).status_code in (403, 404), url
        assert client.post(url, {"display_name": "x", "kind": "queue"}).status_code in (403, 404, 405), url
    mailbox_request.refresh_from_db()
    assert mailbox_request.status == RequestStatus.SUBMITTED
    assert MailboxRequest.objects.count() == 1


def test_signed_out_visitors_are_sent_to_sign_in(requester):
    request = complete_request(requester)
    for url in [reverse("onboarding:requests"), *urls_for(request)]:
        response = Client().get(url)
        assert response.status_code == 302 and response["Location"].startswith(reverse("accounts:sign_in")), url


def test_an_oversized_body_gets_an_error_summary_not_a_500(client, draft):
    response = client.post(question(draft, "justification"), {"justification": "x" * 3_000_000, **SAVE})
    assert response.status_code == 200
    assert error_summary(response) == ["What you sent was too large to read. Shorten your answers and try again."]
    draft.refresh_from_db()
    assert draft.justification == ""


def test_an_oversized_body_is_refused_before_the_view_when_csrf_is_checked(requester, draft):
    # In a browser the CSRF check reads the body first, and Django answers with its 400 page.
    client = Client(enforce_csrf_checks=True)
    client.force_login(requester)
    client.get(question(draft, "justification"))
    token = client.cookies["csrftoken"].value
    response = client.post(
        question(draft, "justification"), {"justification": "x" * 3_000_000}, headers={"X-CSRFToken": token}
    )
    assert response.status_code == 400


def test_too_many_fields_get_an_error_summary(client, draft):
    data = {f"field{index}": "x" for index in range(1100)}
    response = client.post(reverse("onboarding:request_members", args=[draft.pk]), data)
    assert response.status_code == 200
    assert "too large to read" in error_summary(response)[0]


def test_hostile_text_is_shown_escaped(client, requester):
    request = complete_request(requester, display_name="<script>alert(1)</script>", justification="<b>bold</b>")
    html = client.get(reverse("onboarding:request_detail", args=[request.pk])).content.decode()
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<b>bold</b>" not in html


def test_unknown_question_pages_are_not_found(client, draft):
    assert client.get(reverse("onboarding:request_question", args=[draft.pk, "favourite-colour"])).status_code == 404
