"""One inventory mailbox: every fact, why it is classified so, its blockers, legacy sources, annotation and history."""

from __future__ import annotations

import datetime as dt
from html import unescape

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from migration.models import Classification, ExchangePresence, OwnerType, Readiness
from tests.migration.factories import (
    InventoryAnnotationFactory,
    InventoryChangeFactory,
    InventoryMailboxFactory,
    InventorySyncFactory,
    LegacyMailboxLinkFactory,
    LegacySourceFactory,
)

pytestmark = pytest.mark.django_db


def page(client, mailbox) -> str:
    response = client.get(reverse("migration:inventory_mailbox", args=[mailbox.pk]))
    assert response.status_code == 200
    return unescape(response.content.decode())


@pytest.fixture
def lead_client(migration_lead, client_for):
    return client_for(migration_lead)


@pytest.fixture
def router_mailbox():
    return InventoryMailboxFactory(
        name="Complaints",
        email_address="complaints@example.gov.uk",
        owner_type=OwnerType.QUEUE,
        owner_name="Complaints",
        team_name="Customer Services team",
        business_unit_name="Customer Services",
        profile_name="Legacy POP3/SMTP (Email Router era)",
        incoming_delivery=2,
        outgoing_delivery=2,
        act_delivery=2,
        email_approval=2,
        incoming_status=2,
        outgoing_status=0,
        act_status=None,
        open_error_alerts=3,
        exchange_presence=ExchangePresence.NOT_IN_EXCHANGE_ONLINE,
        user_purpose="shared",
        classification=Classification.EMAIL_ROUTER,
        readiness=Readiness.BLOCKED,
        explanation="Email is set to 'Server-Side Synchronization or Email Router' with a POP3/SMTP profile, "
        "so the Email Router handles it.",
        blockers=[
            {
                "code": "not_in_exchange_online",
                "message": "The mailbox is not in Exchange Online.",
                "fix": "Move the mailbox to Exchange Online before migrating it.",
            },
            {
                "code": "address_not_approved",
                "message": "The email address is not approved, and the organisation requires approval.",
                "fix": "Approve the address in Dynamics 365 (an Exchange or Global admin must do it).",
            },
        ],
    )


def test_shows_every_fact_with_dataverse_labels(lead_client, router_mailbox):
    html = page(lead_client, router_mailbox)
    for text in (
        "Complaints",
        "complaints@example.gov.uk",
        "Queue",
        "Customer Services team",
        "Customer Services",
        "Legacy POP3/SMTP (Email Router era)",
        "Server-Side Synchronization or Email Router (2)",
        "None (2)",  # ACT delivery 2 is None: numbered differently from incoming/outgoing
        "Pending Approval (2)",
        "Failure (2)",
        "Not Run (0)",
        "Not set",
        "Not in Exchange Online",
        "shared",
        "Email Router",
        "Blocked",
        str(router_mailbox.dataverse_id),
    ):
        assert text in html, text
    assert "Open error alerts" in html and ">3<" in html


def test_explains_the_classification_and_each_blocker_with_its_fix(lead_client, router_mailbox):
    html = page(lead_client, router_mailbox)
    assert "so the Email Router handles it." in html
    assert "The mailbox is not in Exchange Online." in html
    assert "Move the mailbox to Exchange Online before migrating it." in html
    assert "Approve the address in Dynamics 365 (an Exchange or Global admin must do it)." in html


def test_a_compliant_mailbox_has_nothing_blocking_it(lead_client):
    html = page(lead_client, InventoryMailboxFactory())
    assert "already uses compliant server-side synchronisation" in html


def test_lists_the_legacy_source_records_that_name_it(lead_client, router_mailbox, migration_lead):
    router = LegacySourceFactory(name="ROUTER01", created_by=migration_lead)
    LegacyMailboxLinkFactory(
        router_import__source=router,
        router_import__file_name="router01-config.xml",
        mailbox=router_mailbox,
        object_type="queue",
        object_name="Complaints queue",
        profile_names=["Incoming POP3 profile", "Outgoing SMTP profile"],
    )
    LegacyMailboxLinkFactory(router_import__source=LegacySourceFactory(name="ROUTER02"))  # someone else's
    html = page(lead_client, router_mailbox)
    assert "ROUTER01" in html and "ROUTER02" not in html
    assert "Complaints queue" in html
    assert "Incoming POP3 profile, Outgoing SMTP profile" in html
    assert "router01-config.xml" in html
    assert f'href="/migration/inventory/?legacy_source={router.pk}"' in html


def test_shows_the_annotation_and_links_to_edit_it(lead_client, router_mailbox):
    InventoryAnnotationFactory(
        mailbox=router_mailbox,
        owner_correction="complaints-lead@example.gov.uk",
        notes="Moving to the new complaints service in spring.",
        excluded=True,
        exclusion_reason="Being retired.",
    )
    html = page(lead_client, router_mailbox)
    assert "complaints-lead@example.gov.uk" in html
    assert "Moving to the new complaints service in spring." in html
    assert "Excluded from migration" in html and "Being retired." in html
    edit_url = reverse("migration:annotation_edit", args=[router_mailbox.pk])
    assert f'href="{edit_url}"' in html
    assert "Change the annotation" in html


def test_offers_to_add_an_annotation_when_there_is_none(lead_client, router_mailbox):
    html = page(lead_client, router_mailbox)
    assert "Add an annotation" in html


def test_platform_admins_see_the_mailbox_without_links_they_may_not_follow(platform_admin, client_for, router_mailbox):
    LegacyMailboxLinkFactory(mailbox=router_mailbox)
    admin = client_for(platform_admin)
    html = page(admin, router_mailbox)
    dashboard = unescape(admin.get(reverse("migration:dashboard")).content.decode())

    assert "complaints@example.gov.uk" in html and "Add an annotation" not in html
    for lead_only in ("migration:annotations", "migration:discovery", "migration:legacy_sources"):
        assert admin.get(reverse(lead_only)).status_code == 403
        assert f'href="{reverse(lead_only)}' not in html + dashboard
    assert "/annotations/" not in html and "/legacy-sources/" not in dashboard


def test_history_is_newest_first_with_labels(lead_client, router_mailbox):
    sync = InventorySyncFactory()
    now = timezone.now()
    InventoryChangeFactory(
        mailbox=router_mailbox, at=now - dt.timedelta(days=3), changes={"incoming_delivery": [1, 2]}, sync=sync
    )
    InventoryChangeFactory(
        mailbox=router_mailbox,
        at=now - dt.timedelta(days=1),
        changes={"classification": ["outlook_client", "email_router"], "removed_at": [None, None]},
    )
    html = page(lead_client, router_mailbox)
    newer, older = html.index("Outlook client"), html.index("Microsoft Dynamics 365 for Outlook (1)")
    assert newer < older
    assert "Server-Side Synchronization or Email Router (2)" in html[older:]


def test_removed_mailboxes_say_so(lead_client):
    html = page(lead_client, InventoryMailboxFactory(removed_at=timezone.now()))
    assert "Discovery stopped finding this mailbox in Dynamics 365" in html


def test_unknown_mailbox_is_404(lead_client):
    assert lead_client.get(reverse("migration:inventory_mailbox", args=[999999])).status_code == 404


def test_queries_do_not_grow_with_history_or_links(lead_client, router_mailbox, django_assert_num_queries):
    InventoryAnnotationFactory(mailbox=router_mailbox)
    InventoryChangeFactory(mailbox=router_mailbox, sync=InventorySyncFactory())
    LegacyMailboxLinkFactory(mailbox=router_mailbox)
    url = reverse("migration:inventory_mailbox", args=[router_mailbox.pk])
    with CaptureQueriesContext(connection) as few:
        assert lead_client.get(url).status_code == 200

    syncs = InventorySyncFactory.create_batch(5)
    for index in range(300):
        InventoryChangeFactory(
            mailbox=router_mailbox,
            sync=syncs[index % 5],
            at=timezone.now() - dt.timedelta(minutes=index),
            changes={"open_error_alerts": [index, index + 1], "blockers": [[], [{"code": "alerts_present"}]]},
        )
    for index in range(12):
        LegacyMailboxLinkFactory(mailbox=router_mailbox, router_import__source=LegacySourceFactory(name=f"R{index}"))
    with django_assert_num_queries(len(few.captured_queries)):
        html = lead_client.get(url).content.decode()
    assert "Showing the 50 most recent changes" in html
    assert "alerts_present" in html
