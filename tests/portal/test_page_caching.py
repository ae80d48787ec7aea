"""What the list and dashboard pages keep between requests, and that none of it shows anything wrong.

The migration dashboard's figures are reused for a stated number of seconds and the page says when
they were worked out; after that time a change shows. Filter forms are reused only for exactly the
same submitted values and choice lists, so they are never out of date.
"""

from __future__ import annotations

import re
import time
import uuid
from html import unescape

import pytest
from django.core.cache import cache
from django.test import Client
from django.urls import reverse

from migration.models import Classification, Readiness
from portal.accounts.roles import Role
from tests.factories import UserFactory
from tests.migration.factories import inventory_mailboxes

pytestmark = pytest.mark.django_db

DASHBOARD = "migration:dashboard"
INVENTORY = "migration:inventory"


@pytest.fixture
def empty_cache(settings):
    """The cache outlives each test's rolled-back data: give the test keys of its own, seen by no other
    test (without emptying a Redis database other processes may share)."""
    settings.CACHES = {"default": {**settings.CACHES["default"], "KEY_PREFIX": f"test-{uuid.uuid4().hex}"}}
    assert cache.get("figures:1:migration_dashboard") is None


def _mailbox_total(html: str) -> int:
    found = re.search(r'portal-count__number">([\d,]+)</span> mailbox', html)
    assert found, "the dashboard shows no mailbox total"
    return int(found.group(1).replace(",", ""))


def _selected(html: str, name: str) -> list[str]:
    select = re.search(rf'<select[^>]*name="{name}"[^>]*>(.*?)</select>', html, re.S)
    assert select, f"no {name} filter"
    return [unescape(value) for value in re.findall(r'<option value="([^"]*)" selected>', select.group(1))]


def _options(html: str, name: str) -> list[str]:
    select = re.search(rf'<select[^>]*name="{name}"[^>]*>(.*?)</select>', html, re.S)
    assert select, f"no {name} filter"
    return [unescape(value) for value in re.findall(r'<option value="([^"]*)"', select.group(1))]


def test_dashboard_figures_are_reused_for_the_stated_time_then_show_a_change(
    migration_lead, client_for, settings, empty_cache
):
    settings.DASHBOARD_FIGURES_SECONDS = 2
    inventory_mailboxes(3)
    client = client_for(migration_lead)

    first = client.get(reverse(DASHBOARD)).content.decode()
    assert _mailbox_total(first) == 3
    assert "Figures as of" in first and "at most every 2 seconds" in first

    inventory_mailboxes(2, classification=Classification.EMAIL_ROUTER, readiness=Readiness.BLOCKED)
    # Within the stated time the page may still show the earlier figures, and says how old they are.
    assert _mailbox_total(client.get(reverse(DASHBOARD)).content.decode()) in (3, 5)

    time.sleep(2.1)
    later = client.get(reverse(DASHBOARD)).content.decode()
    assert _mailbox_total(later) == 5
    assert 'href="/migration/inventory/?classification=email_router">2<' in later


def test_dashboard_figures_are_shared_between_people_with_the_same_permissions_only(
    migration_lead, platform_admin, client_for, settings, empty_cache
):
    settings.DASHBOARD_FIGURES_SECONDS = 60
    inventory_mailboxes(1)
    lead_page = client_for(migration_lead).get(reverse(DASHBOARD)).content.decode()
    admin_page = client_for(platform_admin).get(reverse(DASHBOARD)).content.decode()

    # Only migration leads get the links to the lead's own pages, whoever rendered the figures first.
    assert reverse("migration:discovery") in lead_page
    assert reverse("migration:discovery") not in admin_page
    assert _mailbox_total(lead_page) == _mailbox_total(admin_page) == 1


def test_without_a_stated_time_the_dashboard_counts_on_every_request(migration_lead, client_for, settings):
    settings.DASHBOARD_FIGURES_SECONDS = 0
    inventory_mailboxes(2)
    client = client_for(migration_lead)
    page = client.get(reverse(DASHBOARD)).content.decode()
    assert _mailbox_total(page) == 2
    assert "Figures as of" not in page

    inventory_mailboxes(1)
    assert _mailbox_total(client.get(reverse(DASHBOARD)).content.decode()) == 3


def test_a_reused_filter_form_shows_each_request_its_own_choices(migration_lead, client_for, empty_cache):
    inventory_mailboxes(2, team_name="Finance team")
    inventory_mailboxes(2, team_name="Payroll team")
    client = client_for(migration_lead)

    finance = client.get(reverse(INVENTORY), {"team": "Finance team"}).content.decode()
    payroll = client.get(reverse(INVENTORY), {"team": "Payroll team"}).content.decode()
    again = client.get(reverse(INVENTORY), {"team": "Finance team"}).content.decode()

    assert _selected(finance, "team") == ["Finance team"]
    assert _selected(payroll, "team") == ["Payroll team"]
    assert _selected(again, "team") == ["Finance team"]


def test_a_team_found_by_discovery_is_offered_at_once(migration_lead, client_for, empty_cache):
    inventory_mailboxes(1, team_name="Finance team")
    client = client_for(migration_lead)
    assert "Legal team" not in _options(client.get(reverse(INVENTORY)).content.decode(), "team")

    inventory_mailboxes(1, team_name="Legal team")
    assert "Legal team" in _options(client.get(reverse(INVENTORY)).content.decode(), "team")


def test_a_reused_filter_form_still_shows_its_errors(migration_lead, client_for, empty_cache):
    inventory_mailboxes(1, team_name="Finance team")
    client = client_for(migration_lead)
    for _ in range(2):
        page = client.get(reverse(INVENTORY), {"classification": "not-a-class"}).content.decode()
        assert "Select a classification from the list" in page


def test_a_reused_audit_filter_form_shows_each_request_its_own_date(auditor, client_for, empty_cache):
    client = client_for(auditor)

    def day_shown(day: str) -> str:
        page = client.get(reverse("audit:events"), {"date_from_0": day, "date_from_1": "3", "date_from_2": "2026"})
        found = re.search(r'name="date_from_0"[^>]*value="(\d+)"', page.content.decode())
        assert found, "the from date's day is not shown"
        return found.group(1)

    assert day_shown("27") == "27"
    assert day_shown("28") == "28"


def test_the_reused_dashboard_still_gives_each_person_their_own_form_token(migration_lead, settings, empty_cache):
    settings.DASHBOARD_FIGURES_SECONDS = 60
    inventory_mailboxes(1)
    other_lead = UserFactory(username="lena", roles=[Role.MIGRATION_LEAD])
    first = Client(enforce_csrf_checks=True)
    first.force_login(other_lead)
    first.get(reverse(DASHBOARD))  # the shared figures are rendered for this person

    second = Client(enforce_csrf_checks=True)
    second.force_login(migration_lead)
    page = second.get(reverse(DASHBOARD)).content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert token, "the dashboard has no form for the lead"

    # The page's token works for the person it was shown to (signing out is a harmless POST to try it on).
    response = second.post(reverse("accounts:sign_out"), {"csrfmiddlewaretoken": token.group(1)})
    assert response.status_code == 302
