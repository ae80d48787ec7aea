"""Decommission pages: the list, a plan with its checklist, evidence uploads and downloads, sign-off
with its refusal as an error summary, who may do what, and the live "Process Email Using" check."""

from __future__ import annotations

import re
from html import unescape

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from migration.models import (
    Classification,
    DecommissionPlan,
    LegacySourceKind,
    OrganizationSnapshot,
    Readiness,
    WaveMailboxState,
)
from migration.selectors.decommission import ALL_MIGRATED
from migration.services import decommission as services
from portal.audit.models import AuditEvent
from tests.migration.factories import (
    InventoryMailboxFactory,
    LegacySourceFactory,
    WaveMailboxFactory,
    router_serving,
)

pytestmark = pytest.mark.django_db


def text(response) -> str:
    return unescape(response.content.decode())


def words(response) -> str:
    """The page's text as a reader sees it: no tags, single spaces."""
    return " ".join(re.sub(r"<[^>]+>", " ", text(response)).split())


@pytest.fixture
def lead_client(migration_lead, client_for):
    return client_for(migration_lead)


@pytest.fixture
def router(migration_lead):
    return LegacySourceFactory(name="CRMROUTER01", kind=LegacySourceKind.EMAIL_ROUTER, created_by=migration_lead)


@pytest.fixture
def waiting_mailbox(router):
    mailbox = InventoryMailboxFactory(
        name="Complaints",
        email_address="complaints@example.gov.uk",
        classification=Classification.EMAIL_ROUTER,
        readiness=Readiness.READY,
    )
    router_serving(router, mailbox)
    return mailbox


@pytest.fixture
def plan(router, migration_lead):
    return services.decommission_plan_ensure(actor=migration_lead, source_id=router.pk)


def test_the_list_shows_each_source_with_owner_due_date_and_what_remains(
    lead_client, router, waiting_mailbox, plan, migration_lead
):
    services.decommission_plan_update(actor=migration_lead, plan_id=plan.pk, owner=migration_lead, due_date=None)
    LegacySourceFactory(name="CRMROUTER02", kind=LegacySourceKind.EMAIL_ROUTER)

    page = text(lead_client.get(reverse("migration:decommission")))

    assert "CRMROUTER01" in page and "Tom Fletcher" in page
    assert "1 of 1" in page  # mailboxes remaining
    assert "0 of 3 done" in page
    assert "CRMROUTER02" in page and "No plan" in page


def test_starting_a_plan_from_its_page(lead_client, router, waiting_mailbox):
    page = text(lead_client.get(reverse("migration:decommission_plan", args=[router.pk])))
    assert "Start a decommission plan" in page

    response = lead_client.post(reverse("migration:decommission_plan_start", args=[router.pk]))

    assert response.status_code == 302
    page = text(lead_client.get(response.url))
    assert "Router service stopped" in page and "Server retired or configuration archived" in page
    assert "complaints@example.gov.uk" in page  # not migrated yet


def test_sign_off_refusal_is_an_error_summary_naming_the_mailbox(lead_client, router, waiting_mailbox, plan):
    response = lead_client.post(reverse("migration:decommission_sign_off", args=[router.pk]), {"note": ""})

    assert response.status_code == 400
    page = text(response)
    assert "govuk-error-summary" in page
    assert "CRMROUTER01 cannot be signed off" in page and "complaints@example.gov.uk" in page
    plan.refresh_from_db()
    assert plan.signed_off_at is None


def test_sign_off_through_the_page_once_everything_is_done(lead_client, router, waiting_mailbox, plan, migration_lead):
    WaveMailboxFactory(mailbox=waiting_mailbox, state=WaveMailboxState.MIGRATED, active=False)
    for item in plan.items.exclude(code=ALL_MIGRATED):
        response = lead_client.post(
            reverse("migration:decommission_item", args=[item.pk]), {"done": "yes", "evidence_note": "Done"}
        )
        assert response.status_code == 302

    response = lead_client.post(
        reverse("migration:decommission_sign_off", args=[router.pk]), {"note": "Server gone"}, follow=True
    )

    page = text(response)
    assert "Decommissioning of CRMROUTER01 signed off." in page
    assert "Signed off" in page and "Server gone" in page
    assert AuditEvent.objects.filter(action="decommission_plan.signed_off", actor=migration_lead).exists()


def test_owner_and_due_date_form(lead_client, router, plan, platform_admin):
    url = reverse("migration:decommission_plan_details", args=[router.pk])
    assert "Owner and due date" in text(lead_client.get(url))

    bad = lead_client.post(
        url, {"owner": str(platform_admin.pk), "due_date_0": "31", "due_date_1": "2", "due_date_2": "2027"}
    )
    assert bad.status_code == 200 and "Due date must be a real date" in text(bad)

    response = lead_client.post(
        url, {"owner": str(platform_admin.pk), "due_date_0": "1", "due_date_1": "3", "due_date_2": "2027"}
    )
    assert response.status_code == 302
    plan.refresh_from_db()
    assert plan.owner == platform_admin and plan.due_date.isoformat() == "2027-03-01"


def test_the_computed_item_has_no_page(lead_client, plan):
    computed = plan.items.get(code=ALL_MIGRATED)
    assert lead_client.get(reverse("migration:decommission_item", args=[computed.pk])).status_code == 404


# --- evidence -----------------------------------------------------------------------------------


def upload(client, item, name, content, done="yes"):
    return client.post(
        reverse("migration:decommission_item", args=[item.pk]),
        {"done": done, "evidence_note": "See the file", "evidence_file": SimpleUploadedFile(name, content)},
    )


def test_uploaded_evidence_is_listed_and_served_back_as_an_attachment(lead_client, router, plan):
    item = plan.items.get(code="router_stopped")

    response = upload(lead_client, item, "stopped.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 16)

    assert response.status_code == 302
    page = text(lead_client.get(reverse("migration:decommission_plan", args=[router.pk])))
    assert "stopped.png" in page and "See the file" in page
    evidence = item.evidence.get()
    download = lead_client.get(reverse("migration:decommission_evidence", args=[evidence.pk]))
    assert download.status_code == 200
    assert download["Content-Type"] == "image/png"
    assert download["X-Content-Type-Options"] == "nosniff"
    assert download["Content-Disposition"].startswith("attachment;")
    assert download.content == b"\x89PNG\r\n\x1a\n" + b"\x00" * 16


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("page.html", b"<html><script>alert(1)</script></html>", "must be a PDF, PNG, JPEG, plain text or CSV"),
        ("virus.pdf", b"MZ\x90\x00\x03\x00", "must be a PDF, PNG, JPEG, plain text or CSV"),
        ("empty.txt", b"", "The selected file is empty"),
    ],
)
def test_bad_evidence_files_get_an_error_message_not_a_500(lead_client, plan, name, content, message):
    item = plan.items.get(code="router_stopped")

    response = upload(lead_client, item, name, content)

    assert response.status_code == 400
    page = text(response)
    assert "govuk-error-summary" in page and message in page
    item.refresh_from_db()
    assert not item.done and not item.evidence.exists()


def test_an_oversized_evidence_file_is_refused(lead_client, plan, settings):
    item = plan.items.get(code="server_retired")

    response = upload(lead_client, item, "big.txt", b"a" * (services.MAX_EVIDENCE_BYTES + 1))

    assert response.status_code == 400
    assert "The selected file must be smaller than 10MB" in text(response)


def test_an_item_form_without_an_answer_says_what_to_do(lead_client, plan):
    item = plan.items.get(code="router_stopped")
    response = lead_client.post(reverse("migration:decommission_item", args=[item.pk]), {"evidence_note": ""})
    assert response.status_code == 400
    assert "Select yes if this is done" in text(response)


# --- permissions --------------------------------------------------------------------------------


@pytest.mark.parametrize("persona", ["requester", "approver", "auditor", "outsider"])
def test_people_without_migration_roles_are_refused_every_page(request, client_for, persona, router, plan):
    client = client_for(request.getfixturevalue(persona))
    item = plan.items.get(code="router_stopped")

    assert client.get(reverse("migration:decommission")).status_code == 403
    assert client.get(reverse("migration:decommission_plan", args=[router.pk])).status_code == 403
    assert client.post(reverse("migration:decommission_sign_off", args=[router.pk])).status_code == 403
    assert client.post(reverse("migration:decommission_item", args=[item.pk]), {"done": "yes"}).status_code == 403
    assert client.post(reverse("migration:decommission_org_check")).status_code == 403


def test_a_platform_admin_may_look_but_not_change(client_for, platform_admin, router, plan):
    client = client_for(platform_admin)
    item = plan.items.get(code="router_stopped")

    page = client.get(reverse("migration:decommission_plan", args=[router.pk]))
    assert page.status_code == 200
    assert "Sign off decommissioning" not in text(page)
    assert client.post(reverse("migration:decommission_sign_off", args=[router.pk])).status_code == 403
    assert client.post(reverse("migration:decommission_item", args=[item.pk]), {"done": "yes"}).status_code == 403
    assert client.post(reverse("migration:decommission_plan_start", args=[router.pk])).status_code == 403


def test_signed_out_people_go_to_sign_in(client, router):
    response = client.get(reverse("migration:decommission_plan", args=[router.pk]))
    assert response.status_code == 302 and "sign-in" in response.url


def test_outlook_populations_are_added_from_the_list_page(lead_client):
    InventoryMailboxFactory(
        business_unit_name="Finance", classification=Classification.OUTLOOK_CLIENT, readiness=Readiness.READY
    )

    response = lead_client.post(reverse("migration:decommission_outlook_sync"), follow=True)

    assert "Outlook client: Finance" in text(response)
    assert DecommissionPlan.objects.filter(business_unit_name="Finance").exists()


# --- "Process Email Using" ----------------------------------------------------------------------


def test_the_list_says_when_the_organisation_can_switch(lead_client):
    OrganizationSnapshot.objects.create(pk=1, email_connection_channel=1, taken_at="2026-01-05T10:00:00Z")

    page = words(lead_client.get(reverse("migration:decommission")))
    assert "can switch Process Email Using to Server-Side Synchronization" in page
    assert "Microsoft Dynamics 365 Email Router (1)" in page

    InventoryMailboxFactory(classification=Classification.EMAIL_ROUTER, readiness=Readiness.READY)
    page = words(lead_client.get(reverse("migration:decommission")))
    assert "1 mailbox in the inventory still uses the Email Router" in page
    assert "can switch" not in page


@pytest.fixture
def organisation(fresh_sim):
    """The simulator's organisation row, with its "Process Email Using" restored after the test."""
    [row] = fresh_sim.control("GET", "rows/organizations")["value"]
    yield row
    fresh_sim.control("PATCH", f"state/organizations/{row['organizationid']}", {"emailconnectionchannel": 0})


def test_check_now_reads_the_live_setting_and_is_audited(
    lead_client, m365_settings, fresh_sim, organisation, migration_lead
):
    fresh_sim.control("PATCH", f"state/organizations/{organisation['organizationid']}", {"emailconnectionchannel": 1})
    since = fresh_sim.last_seq()

    response = lead_client.post(reverse("migration:decommission_org_check"), follow=True)

    page = text(response)
    assert "Process Email Using is Microsoft Dynamics 365 Email Router (1)" in page
    assert any("organizations" in entry["path"] for entry in fresh_sim.ledger(since))
    event = AuditEvent.objects.get(action="organization.email_channel_checked")
    assert event.actor_id == migration_lead.pk and event.object_id == organisation["organizationid"]

    fresh_sim.control("PATCH", f"state/organizations/{organisation['organizationid']}", {"emailconnectionchannel": 0})
    page = text(lead_client.post(reverse("migration:decommission_org_check"), follow=True))
    assert "the organisation already uses server-side sync" in page
    assert "checked" in page and "Server-Side Synchronization (0)" in page


def test_check_now_says_so_when_dynamics_cannot_be_reached(lead_client, m365_settings, fresh_sim):
    fresh_sim.control("PUT", "faults", {"rate_5xx": 1.0, "surfaces": ["dataverse"]})

    response = lead_client.post(reverse("migration:decommission_org_check"), follow=True)

    assert response.status_code == 200
    assert "could not be reached to check the setting" in text(response)


def test_a_router_mailbox_migrated_since_the_last_discovery_no_longer_holds_the_switch_back(lead_client):
    mailbox = InventoryMailboxFactory(classification=Classification.EMAIL_ROUTER, readiness=Readiness.READY)
    WaveMailboxFactory(mailbox=mailbox, state=WaveMailboxState.MIGRATED, active=False)

    page = words(lead_client.get(reverse("migration:decommission")))

    assert "can switch Process Email Using to Server-Side Synchronization" in page


def test_the_dashboard_and_legacy_source_pages_link_to_decommissioning(lead_client, router):
    for url in (reverse("migration:dashboard"), reverse("migration:legacy_sources")):
        assert f'href="{reverse("migration:decommission")}"' in text(lead_client.get(url))
    detail = text(lead_client.get(reverse("migration:legacy_source", args=[router.pk])))
    assert f'href="{reverse("migration:decommission_plan", args=[router.pk])}"' in detail
