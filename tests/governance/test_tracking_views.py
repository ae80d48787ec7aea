"""The tracking pages: who may see what (admin, owner, outsider, signed out), requesting, deciding, retrying."""

from __future__ import annotations

import re
import uuid

import pytest
from django.urls import reverse
from django.utils import timezone

from governance.models import ManagedKind, ManagedMailbox, ManagedSource, TrackingChange, TrackingChangeStatus
from portal.accounts.roles import Role
from portal.policy.models import TrackingRule
from tests.factories import UserFactory
from tests.governance.health_support import error_summary

pytestmark = pytest.mark.django_db

REPORT = reverse("governance:tracking_report")
CHANGES = reverse("governance:tracking_changes")


def managed(*, kind: str = ManagedKind.QUEUE, rule: int | None = TrackingRule.ALL, owners=(), **fields):
    fields.setdefault("name", f"Mailbox {uuid.uuid4().hex[:6]}")
    mailbox = ManagedMailbox.objects.create(
        dataverse_id=uuid.uuid4(),
        owner_dataverse_id=uuid.uuid4(),
        kind=kind,
        source=ManagedSource.ONBOARDING,
        tracking_rule=rule,
        added_at=timezone.now(),
        **fields,
    )
    mailbox.owners.set(owners)
    return mailbox


def change_for(mailbox, requester, *, status=TrackingChangeStatus.PENDING, **fields) -> TrackingChange:
    now = timezone.now()
    return TrackingChange.objects.create(
        mailbox=mailbox,
        from_rule=mailbox.tracking_rule,
        to_rule=fields.pop("to_rule", TrackingRule.EMAIL_ENABLED_RECORDS),
        status=status,
        requested_by=requester,
        requested_at=now,
        updated_at=now,
        **fields,
    )


@pytest.fixture
def second_admin(db):
    return UserFactory(username="ravi", first_name="Ravi", last_name="Shah", roles=[Role.PLATFORM_ADMIN])


# --- access ----------------------------------------------------------------------------------------


def test_signed_out_people_are_sent_to_sign_in(client, platform_admin):
    change = change_for(managed(), platform_admin)
    for url in (REPORT, CHANGES, reverse("governance:tracking_change", args=[change.pk])):
        response = client.get(url)
        assert response.status_code == 302
        assert reverse("accounts:sign_in") in response["Location"]
    response = client.post(reverse("governance:tracking_request", args=[change.mailbox_id]))
    assert response.status_code == 302
    assert TrackingChange.objects.count() == 1


def test_people_who_own_no_managed_mailbox_get_403(client_for, outsider, approver, migration_lead, platform_admin):
    mailbox = managed(owners=[platform_admin])
    change = change_for(mailbox, platform_admin)
    for person in (outsider, approver, migration_lead):
        client = client_for(person)
        for url in (REPORT, CHANGES, reverse("governance:tracking_change", args=[change.pk])):
            assert client.get(url).status_code == 403, (person, url)
        assert client.post(reverse("governance:tracking_request", args=[mailbox.pk])).status_code == 403
        decide = reverse("governance:tracking_change_decide", args=[change.pk])
        assert client.post(decide, {"decision": "approve"}).status_code == 403
    assert TrackingChange.objects.get().status == TrackingChangeStatus.PENDING


def test_an_owner_sees_only_their_mailboxes_and_changes(client_for, requester, platform_admin):
    mine = managed(owners=[requester], name="My queue")
    theirs = managed(owners=[platform_admin], name="Their queue")
    my_change = change_for(mine, requester)
    their_change = change_for(theirs, platform_admin)
    client = client_for(requester)

    report = client.get(REPORT).content.decode()
    assert f'data-mailbox="{mine.pk}"' in report
    assert f'data-mailbox="{theirs.pk}"' not in report
    assert "Their queue" not in report

    changes = client.get(CHANGES).content.decode()
    assert f'data-change="{my_change.pk}"' in changes
    assert f'data-change="{their_change.pk}"' not in changes

    assert client.get(reverse("governance:tracking_change", args=[my_change.pk])).status_code == 200
    assert client.get(reverse("governance:tracking_change", args=[their_change.pk])).status_code == 404


def test_a_platform_admin_sees_everything(client_for, platform_admin, requester):
    first = managed(owners=[requester])
    second = managed()
    change = change_for(first, requester)
    client = client_for(platform_admin)
    report = client.get(REPORT).content.decode()
    assert f'data-mailbox="{first.pk}"' in report and f'data-mailbox="{second.pk}"' in report
    assert f'data-change="{change.pk}"' in client.get(CHANGES).content.decode()


def test_an_owner_cannot_request_for_a_mailbox_they_do_not_own(client_for, requester, platform_admin):
    managed(owners=[requester])
    theirs = managed(owners=[platform_admin], name="Their queue")
    response = client_for(requester).post(reverse("governance:tracking_request", args=[theirs.pk]))
    # Not found, as for a mailbox that is not there: the answer does not tell them it exists.
    assert response.status_code == 404
    assert "Their queue" not in response.content.decode()
    assert not TrackingChange.objects.exists()
    missing = client_for(requester).post(reverse("governance:tracking_request", args=[theirs.pk + 1000]))
    assert missing.status_code == 404


# --- requesting ------------------------------------------------------------------------------------


def test_an_owner_requests_the_recommended_rule_with_one_click(client_for, requester):
    mailbox = managed(owners=[requester], name="Licensing queue")
    client = client_for(requester)
    assert "Request change" in client.get(REPORT).content.decode()

    response = client.post(reverse("governance:tracking_request", args=[mailbox.pk]), {"back": "over_tracking=on"})

    change = TrackingChange.objects.get()
    assert response.status_code == 302
    assert response["Location"] == reverse("governance:tracking_change", args=[change.pk])
    assert (change.to_rule, change.requested_by) == (TrackingRule.EMAIL_ENABLED_RECORDS, requester)
    page = client.get(response["Location"]).content.decode()
    assert "govuk-notification-banner--success" in page
    assert f"Change {change.pk} requested" in page
    assert "Waiting for approval" in page
    assert "Record decision" not in page  # an owner does not decide


def test_a_second_request_shows_an_error_summary_naming_the_open_change(client_for, requester, platform_admin):
    mailbox = managed(owners=[requester], name="Grants queue")
    open_change = change_for(mailbox, requester)
    response = client_for(platform_admin).post(
        reverse("governance:tracking_request", args=[mailbox.pk]), {"back": "kind=queue&over_tracking=on"}
    )
    assert response.status_code == 400
    summary = error_summary(response)
    assert f"change {open_change.pk}" in summary
    assert "Grants queue already has an open tracking change" in summary
    html = response.content.decode()
    assert "<title>Error: Tracking rules" in html
    assert '<option value="queue" selected>' in html  # the filters the person had are kept
    assert TrackingChange.objects.count() == 1


def test_a_request_for_a_mailbox_already_at_the_target_shows_an_error(client_for, platform_admin):
    mailbox = managed(rule=TrackingRule.EMAIL_ENABLED_RECORDS, name="Quiet queue")
    response = client_for(platform_admin).post(reverse("governance:tracking_request", args=[mailbox.pk]))
    assert response.status_code == 400
    assert "Quiet queue already tracks" in error_summary(response)


def test_requesting_needs_post(client_for, platform_admin):
    mailbox = managed()
    assert client_for(platform_admin).get(reverse("governance:tracking_request", args=[mailbox.pk])).status_code == 405


# --- deciding --------------------------------------------------------------------------------------


def test_the_requester_sees_no_decision_form_and_cannot_post_one(client_for, platform_admin):
    change = change_for(managed(), platform_admin)
    client = client_for(platform_admin)
    page = client.get(reverse("governance:tracking_change", args=[change.pk])).content.decode()
    assert "Record decision" not in page
    assert "You requested this change, so another platform admin must approve or reject it." in page

    response = client.post(reverse("governance:tracking_change_decide", args=[change.pk]), {"decision": "approve"})
    assert response.status_code == 400
    assert "another platform admin must approve or reject it" in error_summary(response)
    change.refresh_from_db()
    assert change.status == TrackingChangeStatus.PENDING


def test_another_admin_approves_and_the_job_is_queued(
    client_for, requester, platform_admin, redis_queue, django_capture_on_commit_callbacks
):
    change = change_for(managed(owners=[requester]), requester)
    client = client_for(platform_admin)
    page = client.get(reverse("governance:tracking_change", args=[change.pk])).content.decode()
    assert "Record decision" in page
    assert f'action="{reverse("governance:tracking_change_decide", args=[change.pk])}"' in page

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            reverse("governance:tracking_change_decide", args=[change.pk]), {"decision": "approve", "reason": ""}
        )
    assert response.status_code == 302
    change.refresh_from_db()
    assert (change.status, change.decided_by) == (TrackingChangeStatus.APPROVED, platform_admin)
    assert redis_queue.count == 1
    assert "is approved" in client.get(response["Location"]).content.decode()


def test_rejecting_without_a_reason_shows_the_field_error(client_for, requester, platform_admin):
    change = change_for(managed(owners=[requester]), requester)
    url = reverse("governance:tracking_change_decide", args=[change.pk])
    client = client_for(platform_admin)
    response = client.post(url, {"decision": "reject", "reason": "  "})
    assert response.status_code == 400
    assert "Enter why you are rejecting the change" in error_summary(response)
    response = client.post(url, {})
    assert "Select whether you approve the change" in error_summary(response)

    response = client.post(url, {"decision": "reject", "reason": "The team needs every email"})
    assert response.status_code == 302
    change.refresh_from_db()
    assert (change.status, change.decision_reason) == (TrackingChangeStatus.REJECTED, "The team needs every email")
    page = client.get(reverse("governance:tracking_change", args=[change.pk])).content.decode()
    assert "The team needs every email" in page
    assert "Rejected" in page


def test_deciding_twice_shows_an_error(client_for, requester, platform_admin):
    change = change_for(managed(owners=[requester]), requester, status=TrackingChangeStatus.APPLIED)
    response = client_for(platform_admin).post(
        reverse("governance:tracking_change_decide", args=[change.pk]), {"decision": "approve"}
    )
    assert response.status_code == 400
    assert "The change is applied, so it cannot be approved" in error_summary(response)


# --- the list and retry ----------------------------------------------------------------------------


def test_the_changes_list_is_newest_first_with_status_tags(client_for, platform_admin):
    mailbox = managed()
    older = change_for(mailbox, platform_admin, status=TrackingChangeStatus.FAILED, error="Gone")
    newer = change_for(mailbox, platform_admin, status=TrackingChangeStatus.APPLIED)
    html = client_for(platform_admin).get(CHANGES).content.decode()
    assert html.index(f'data-change="{newer.pk}"') < html.index(f'data-change="{older.pk}"')
    assert re.search(r'govuk-tag--red">Failed<', html)
    assert re.search(r'govuk-tag--green">Applied<', html)


def test_a_failed_change_shows_its_error_and_a_retry_button_for_admins(
    client_for, requester, platform_admin, redis_queue, django_capture_on_commit_callbacks
):
    change = change_for(
        managed(owners=[requester]),
        requester,
        status=TrackingChangeStatus.FAILED,
        error="Dynamics 365 answered with an error (403).",
    )
    url = reverse("governance:tracking_change", args=[change.pk])
    owner_page = client_for(requester).get(url).content.decode()
    assert "Dynamics 365 answered with an error (403)." in owner_page
    assert "Retry the change" not in owner_page
    assert client_for(requester).post(reverse("governance:tracking_change_retry", args=[change.pk])).status_code == 400

    admin = client_for(platform_admin)
    assert "Retry the change" in admin.get(url).content.decode()
    with django_capture_on_commit_callbacks(execute=True):
        response = admin.post(reverse("governance:tracking_change_retry", args=[change.pk]))
    assert response.status_code == 302
    change.refresh_from_db()
    assert change.status == TrackingChangeStatus.APPROVED
    assert redis_queue.count == 1
