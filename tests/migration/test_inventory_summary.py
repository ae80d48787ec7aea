"""The migration dashboard: counts by classification, readiness, team and legacy source, and the last discovery."""

from __future__ import annotations

import re
from html import unescape

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from migration.models import Classification, InventoryMailbox, OwnerType, Readiness, SyncKind, SyncStatus
from migration.selectors.inventory import BLANK, inventory_summary
from tests.migration.factories import (
    InventoryMailboxFactory,
    InventorySyncFactory,
    LegacyMailboxLinkFactory,
    LegacySourceFactory,
    RouterImportFactory,
    inventory_mailboxes,
)

pytestmark = pytest.mark.django_db

DASHBOARD = "migration:dashboard"


@pytest.fixture
def lead_client(migration_lead, client_for):
    return client_for(migration_lead)


def _seed() -> None:
    inventory_mailboxes(6, team_name="Finance team")
    inventory_mailboxes(
        3, classification=Classification.EMAIL_ROUTER, readiness=Readiness.BLOCKED, team_name="Finance team"
    )
    inventory_mailboxes(2, classification=Classification.OUTLOOK_CLIENT, readiness=Readiness.READY, team_name="")
    inventory_mailboxes(1, classification=Classification.OUTLOOK_CLIENT, removed_at=timezone.now())


def test_counts_come_from_the_database_grouped(migration_lead):
    _seed()
    router = LegacySourceFactory(name="ROUTER01", created_by=migration_lead)
    router_import = RouterImportFactory(source=router)
    for mailbox in InventoryMailbox.objects.filter(classification=Classification.EMAIL_ROUTER):
        LegacyMailboxLinkFactory(router_import=router_import, mailbox=mailbox)
        LegacyMailboxLinkFactory(mailbox=mailbox, router_import__source=router)  # a re-import lists it again
    LegacyMailboxLinkFactory(router_import=router_import, mailbox=None, email_address="left@example.gov.uk")
    LegacySourceFactory(name="OUTLOOK-FINANCE", created_by=migration_lead)

    summary = inventory_summary()
    assert summary.total == 11
    assert summary.removed == 1
    assert summary.not_compliant == 5
    by_class = {row.value: row.count for row in summary.by_classification}
    assert by_class == {
        "outlook_client": 2,
        "email_router": 3,
        "forward_mailbox": 0,
        "sss_wrong_profile": 0,
        "not_in_exchange_online": 0,
        "no_email": 0,
        "compliant_sss": 6,
    }
    assert {row.value: row.count for row in summary.by_readiness} == {"ready": 2, "blocked": 3, "compliant": 6}
    compliant = next(row for row in summary.by_classification if row.value == "compliant_sss")
    assert compliant.percent == 55 and compliant.bar == 100
    assert [(team.label, team.total, team.compliant, team.ready, team.blocked) for team in summary.top_teams] == [
        ("Finance team", 9, 6, 0, 3),
        ("No team", 2, 0, 2, 0),
    ]
    assert summary.top_teams[1].value == BLANK
    sources = {source.name: (source.mailboxes, source.unmatched) for source in summary.legacy_sources}
    assert sources == {"ROUTER01": (3, 1), "OUTLOOK-FINANCE": (0, 0)}


def test_dashboard_shows_counts_with_links_to_the_filtered_list(lead_client, migration_lead):
    _seed()
    router = LegacySourceFactory(name="ROUTER01", created_by=migration_lead)
    LegacyMailboxLinkFactory(router_import__source=router, mailbox=InventoryMailboxFactory(name="Served"))
    html = lead_client.get(reverse(DASHBOARD)).content.decode()
    for href in (
        "/migration/inventory/?classification=compliant_sss",
        "/migration/inventory/?classification=email_router",
        "/migration/inventory/?readiness=blocked",
        "/migration/inventory/?team=Finance%20team",
        f"/migration/inventory/?team={BLANK}",
        "/migration/inventory/?team=Finance%20team&amp;readiness=blocked",
        f"/migration/inventory/?legacy_source={router.pk}",
        "/migration/inventory/?include_removed=on",
    ):
        assert f'href="{href}"' in html, href
    # Each link leads to a list page that lists exactly that many mailboxes.
    listed = lead_client.get(reverse("migration:inventory"), {"classification": "email_router"}).content.decode()
    assert len(re.findall(r'href="/migration/inventory/\d+/"', listed)) == 3


def test_the_chart_is_css_with_the_numbers_in_a_table(lead_client):
    _seed()
    html = lead_client.get(reverse(DASHBOARD)).content.decode()
    assert "<script>" not in html.split("<main", 1)[1].split("</main>", 1)[0]
    assert 'class="portal-bar" aria-hidden="true"' in html
    assert "portal-w-100" in html  # the longest bar
    assert re.search(r"Mailboxes by classification</caption>", html)
    assert "55%" in html


def test_the_last_discovery_run_is_shown(lead_client, migration_lead):
    InventorySyncFactory(requested_at=timezone.now() - timezone.timedelta(days=2), mailboxes_seen=5)
    InventorySyncFactory(
        kind=SyncKind.INCREMENTAL,
        status=SyncStatus.FAILED,
        requested_by=migration_lead,
        mailboxes_seen=20000,
        error="Dataverse answered 401.",
    )
    html = unescape(lead_client.get(reverse(DASHBOARD)).content.decode())
    assert "Changed mailboxes only" in html
    assert "Failed" in html and "Dataverse answered 401." in html
    assert "20,000 mailboxes seen" in html
    assert "Tom Fletcher" in html


def test_an_empty_inventory_says_discovery_has_not_run(lead_client):
    html = lead_client.get(reverse(DASHBOARD)).content.decode()
    assert "Discovery has not run yet" in html


def test_dashboard_queries_do_not_grow_with_the_inventory(lead_client, migration_lead, django_assert_num_queries):
    _seed()
    router = LegacySourceFactory(name="ROUTER01", created_by=migration_lead)
    LegacyMailboxLinkFactory(router_import__source=router, mailbox=InventoryMailboxFactory())
    InventorySyncFactory()
    with CaptureQueriesContext(connection) as small:
        assert lead_client.get(reverse(DASHBOARD)).status_code == 200

    for team in range(25):
        inventory_mailboxes(40, team_name=f"Team {team:02d}", owner_type=OwnerType.QUEUE)
    for name in ("ROUTER02", "ROUTER03", "OUTLOOK-A"):
        source = LegacySourceFactory(name=name, created_by=migration_lead)
        for _ in range(5):
            LegacyMailboxLinkFactory(router_import__source=source)
    InventorySyncFactory.create_batch(5)
    with django_assert_num_queries(len(small.captured_queries)):
        html = lead_client.get(reverse(DASHBOARD)).content.decode()
    active = InventoryMailbox.objects.filter(removed_at__isnull=True).count()
    assert active > 1000
    assert f"{active:,}</span> mailboxes" in html
