"""Exporting the filtered inventory as CSV: same filters as the list, streamed, formula-safe, audited."""

from __future__ import annotations

import csv
import io

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from migration.models import Classification, Readiness
from portal.audit.models import AuditEvent
from tests.migration.factories import (
    InventoryAnnotationFactory,
    InventoryMailboxFactory,
    LegacyMailboxLinkFactory,
    LegacySourceFactory,
    inventory_mailboxes,
)

pytestmark = pytest.mark.django_db

EXPORT = "migration:inventory_export"


def export_rows(response) -> list[dict[str, str]]:
    assert response.streaming
    body = b"".join(response.streaming_content).decode("utf-8-sig")
    return list(csv.DictReader(io.StringIO(body)))


@pytest.fixture
def lead_client(migration_lead, client_for):
    return client_for(migration_lead)


def test_export_neutralises_formulas(lead_client):
    InventoryMailboxFactory(name='=HYPERLINK("http://evil.example")', owner_name="+1+1", team_name="-2")
    InventoryMailboxFactory(name="@SUM(A1)", business_unit_name="\tTabbed")
    InventoryMailboxFactory(name="Plain name")
    response = lead_client.get(reverse(EXPORT))
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert response["Content-Disposition"].startswith('attachment; filename="inventory-')
    rows = {row["mailbox_id"]: row for row in export_rows(response)}
    names = sorted(row["name"] for row in rows.values())
    assert names == ['\'=HYPERLINK("http://evil.example")', "'@SUM(A1)", "Plain name"]
    assert any(row["owner_name"] == "'+1+1" and row["team"] == "'-2" for row in rows.values())
    assert any(row["business_unit"] == "'\tTabbed" for row in rows.values())


def test_export_applies_the_list_filters_and_sort(lead_client):
    router = LegacySourceFactory(name="ROUTER01")
    for name in ("Charlie", "Alpha", "Bravo"):
        mailbox = InventoryMailboxFactory(
            name=name, classification=Classification.EMAIL_ROUTER, readiness=Readiness.BLOCKED, team_name="Finance"
        )
        LegacyMailboxLinkFactory(router_import__source=router, mailbox=mailbox)
    InventoryMailboxFactory(name="Delta", classification=Classification.EMAIL_ROUTER, team_name="Legal")
    InventoryMailboxFactory(name="Echo")
    InventoryMailboxFactory(name="Foxtrot", classification=Classification.EMAIL_ROUTER, removed_at=timezone.now())

    rows = export_rows(lead_client.get(reverse(EXPORT), {"classification": "email_router", "sort": "-name"}))
    assert [row["name"] for row in rows] == ["Delta", "Charlie", "Bravo", "Alpha"]

    rows = export_rows(lead_client.get(reverse(EXPORT), {"legacy_source": router.pk, "q": "a"}))
    assert [row["name"] for row in rows] == ["Alpha", "Bravo", "Charlie"]
    assert {row["legacy_sources"] for row in rows} == {"ROUTER01"}
    assert {row["classification"] for row in rows} == {"email_router"}

    rows = export_rows(lead_client.get(reverse(EXPORT), {"include_removed": "on", "classification": "email_router"}))
    assert "Foxtrot" in [row["name"] for row in rows]


def test_export_carries_labels_blockers_and_annotations(lead_client):
    mailbox = InventoryMailboxFactory(
        name="Router queue",
        incoming_delivery=2,
        act_delivery=0,
        email_approval=2,
        classification=Classification.EMAIL_ROUTER,
        readiness=Readiness.BLOCKED,
        blockers=[
            {"code": "address_not_approved", "message": "Not approved.", "fix": "Approve it."},
            {"code": "alerts_present", "message": "2 alerts.", "fix": "Read them."},
        ],
    )
    InventoryAnnotationFactory(mailbox=mailbox, excluded=True, owner_correction="finance-lead@example.gov.uk")
    (row,) = export_rows(lead_client.get(reverse(EXPORT)))
    assert row["incoming_email"] == "Server-Side Synchronization or Email Router (2)"
    assert row["appointments_contacts_tasks"] == "Microsoft Dynamics 365 for Outlook (0)"
    assert row["address_approval"] == "Pending Approval (2)"
    assert row["blockers"] == "address_not_approved; alerts_present"
    assert row["excluded"] == "yes"
    assert row["owner_correction"] == "finance-lead@example.gov.uk"
    assert row["dataverse_id"] == str(mailbox.dataverse_id)


def test_export_is_recorded_in_the_audit_trail(lead_client, migration_lead):
    InventoryMailboxFactory()
    lead_client.get(reverse(EXPORT), {"readiness": "blocked"})
    event = AuditEvent.objects.get(action="inventory.exported")
    assert event.actor_id == migration_lead.pk
    assert event.after == {"filters": {"readiness": "blocked"}, "sort": "name"}


def test_bad_filters_send_you_back_to_the_list_instead_of_exporting(lead_client):
    response = lead_client.get(reverse(EXPORT), {"classification": "nonsense"})
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("migration:inventory") + "?classification=nonsense")
    assert not AuditEvent.objects.filter(action="inventory.exported").exists()
    html = lead_client.get(response["Location"]).content.decode()
    assert "Correct the filters before exporting." in html
    assert "Select a classification from the list" in html


def test_export_queries_grow_by_chunk_not_by_row(lead_client):
    router = LegacySourceFactory(name="ROUTER01")
    for mailbox in inventory_mailboxes(30):
        LegacyMailboxLinkFactory(router_import__source=router, mailbox=mailbox)
    with CaptureQueriesContext(connection) as small:
        rows = export_rows(lead_client.get(reverse(EXPORT)))
    assert len(rows) == 30
    inventory_mailboxes(1500)
    with CaptureQueriesContext(connection) as large:
        rows = export_rows(lead_client.get(reverse(EXPORT)))
    assert len(rows) == 1530
    assert len(large.captured_queries) == len(small.captured_queries)
