"""The inventory list: filters, search, sorting, keyset pages, bad input, query counts and who may see it."""

from __future__ import annotations

import base64
import re
from html import unescape

import factory
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from migration.models import Classification, InventoryMailbox, LegacyMailboxLink, OwnerType, Readiness
from migration.selectors.inventory import BLANK, PAGE_SIZE, cursor_encode
from tests.migration.factories import (
    InventoryAnnotationFactory,
    InventoryMailboxFactory,
    LegacyMailboxLinkFactory,
    LegacySourceFactory,
    RouterImportFactory,
    inventory_mailboxes,
)

pytestmark = pytest.mark.django_db

LIST = "migration:inventory"


def names_on(html: str) -> list[str]:
    """The mailbox names in the list's table, in order."""
    return [unescape(name) for name in re.findall(r'href="/migration/inventory/\d+/">([^<]*)</a>', html)]


def ids_on(html: str) -> list[int]:
    return [int(pk) for pk in re.findall(r'href="/migration/inventory/(\d+)/"', html)]


def link(html: str, rel: str) -> str | None:
    match = re.search(rf'href="([^"]*)" rel="{rel}"', html)
    return unescape(match.group(1)) if match else None


@pytest.fixture
def lead_client(migration_lead, client_for):
    return client_for(migration_lead)


# --- who may see it ---------------------------------------------------------------------------


@pytest.mark.parametrize("persona", ["migration_lead", "platform_admin"])
def test_migration_leads_and_platform_admins_may_view(persona, request, client_for):
    mailbox = InventoryMailboxFactory(name="Finance enquiries")
    client = client_for(request.getfixturevalue(persona))
    assert client.get(reverse(LIST)).status_code == 200
    assert client.get(reverse("migration:inventory_mailbox", args=[mailbox.pk])).status_code == 200
    assert client.get(reverse("migration:inventory_export")).status_code == 200
    assert client.get(reverse("migration:dashboard")).status_code == 200


@pytest.mark.parametrize("persona", ["requester", "approver", "auditor", "outsider"])
def test_everyone_else_is_refused(persona, request, client_for):
    mailbox = InventoryMailboxFactory()
    client = client_for(request.getfixturevalue(persona))
    assert client.get(reverse(LIST)).status_code == 403
    assert client.get(reverse("migration:inventory_mailbox", args=[mailbox.pk])).status_code == 403
    assert client.get(reverse("migration:inventory_export")).status_code == 403
    assert client.get(reverse("migration:dashboard")).status_code == 403


def test_signed_out_visitors_are_sent_to_sign_in(client):
    mailbox = InventoryMailboxFactory()
    for url in (
        reverse(LIST),
        reverse("migration:inventory_mailbox", args=[mailbox.pk]),
        reverse("migration:inventory_export"),
        reverse("migration:dashboard"),
    ):
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("accounts:sign_in"))


def test_the_list_is_read_only(lead_client):
    assert lead_client.post(reverse(LIST)).status_code == 405


# --- what it lists ----------------------------------------------------------------------------


def test_lists_mailboxes_by_name_with_their_classification(lead_client):
    InventoryMailboxFactory(name="Payroll", email_address="payroll@example.gov.uk")
    InventoryMailboxFactory(
        name="Complaints",
        classification=Classification.EMAIL_ROUTER,
        readiness=Readiness.BLOCKED,
        owner_type=OwnerType.QUEUE,
    )
    response = lead_client.get(reverse(LIST))
    assert response.status_code == 200
    html = response.content.decode()
    assert names_on(html) == ["Complaints", "Payroll"]
    assert "payroll@example.gov.uk" in html
    assert "Email Router" in html and "Blocked" in html
    assert "Export all mailboxes as CSV" in html


def test_an_empty_inventory_says_so(lead_client):
    html = lead_client.get(reverse(LIST)).content.decode()
    assert "The inventory is empty" in html


def test_removed_mailboxes_are_left_out_unless_asked_for(lead_client):
    InventoryMailboxFactory(name="Still here")
    InventoryMailboxFactory(name="Gone", removed_at=timezone.now())
    assert names_on(lead_client.get(reverse(LIST)).content.decode()) == ["Still here"]
    html = lead_client.get(reverse(LIST), {"include_removed": "on"}).content.decode()
    assert names_on(html) == ["Gone", "Still here"]
    assert "Removed" in html


def test_excluded_mailboxes_are_marked(lead_client):
    InventoryAnnotationFactory(mailbox=InventoryMailboxFactory(name="Old casework"), excluded=True)
    html = lead_client.get(reverse(LIST)).content.decode()
    assert "Excluded" in html


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"classification": "outlook_client"}, ["Outlook person"]),
        ({"readiness": "blocked"}, ["Router queue"]),
        ({"team": "Finance team"}, ["Router queue"]),
        ({"team": BLANK}, ["Outlook person"]),
        ({"business_unit": "Legal"}, ["Outlook person"]),
        ({"owner_type": "queue"}, ["Router queue"]),
        ({"owner_type": "queue", "classification": "outlook_client"}, []),
    ],
)
def test_filters_narrow_the_list(params, expected, lead_client):
    InventoryMailboxFactory(name="Compliant person")
    InventoryMailboxFactory(
        name="Outlook person",
        classification=Classification.OUTLOOK_CLIENT,
        readiness=Readiness.READY,
        team_name="",
        business_unit_name="Legal",
    )
    InventoryMailboxFactory(
        name="Router queue",
        classification=Classification.EMAIL_ROUTER,
        readiness=Readiness.BLOCKED,
        owner_type=OwnerType.QUEUE,
        team_name="Finance team",
    )
    html = lead_client.get(reverse(LIST), params).content.decode()
    assert "There is a problem" not in html
    assert names_on(html) == expected
    if not expected:
        assert "No mailboxes match these filters" in html


def test_legacy_source_filter_lists_each_mailbox_once(lead_client):
    router = LegacySourceFactory(name="ROUTER01")
    served = InventoryMailboxFactory(name="Served")
    LegacyMailboxLinkFactory(router_import__source=router, mailbox=served)
    LegacyMailboxLinkFactory(router_import__source=router, mailbox=served)  # listed again by a later import
    LegacyMailboxLinkFactory(router_import__source=LegacySourceFactory(name="ROUTER02"))
    InventoryMailboxFactory(name="Not served")
    html = lead_client.get(reverse(LIST), {"legacy_source": router.pk}).content.decode()
    assert names_on(html) == ["Served"]


@pytest.mark.parametrize("term", ["ANNA", "anna", "nna.s", "@finance.example"])
def test_search_matches_part_of_a_name_or_address_in_any_case(term, lead_client):
    InventoryMailboxFactory(name="Anna Smith", email_address="anna.smith@example.gov.uk")
    InventoryMailboxFactory(name="Accounts", email_address="accounts@finance.example.gov.uk")
    InventoryMailboxFactory(name="Ben Jones", email_address="ben.jones@example.gov.uk")
    html = lead_client.get(reverse(LIST), {"q": term}).content.decode()
    expected = ["Accounts"] if "finance" in term else ["Anna Smith"]
    assert names_on(html) == expected


def test_search_treats_wildcards_literally(lead_client):
    InventoryMailboxFactory(name="100% complaints")
    InventoryMailboxFactory(name="Other")
    assert names_on(lead_client.get(reverse(LIST), {"q": "%"}).content.decode()) == ["100% complaints"]
    assert names_on(lead_client.get(reverse(LIST), {"q": "_"}).content.decode()) == []


@pytest.mark.parametrize(
    ("sort", "order_by"),
    [
        ("name", ("name", "id")),
        ("-name", ("-name", "-id")),
        ("address", ("email_address", "id")),
        ("-address", ("-email_address", "-id")),
        ("classification", ("classification", "name", "id")),
        ("-classification", ("-classification", "-name", "-id")),
        ("team", ("team_name", "name", "id")),
        ("-team", ("-team_name", "-name", "-id")),
    ],
)
def test_sorting_matches_the_database_order_with_id_breaking_ties(sort, order_by, lead_client):
    for index in range(12):
        InventoryMailboxFactory(
            name=f"Shared name {index % 3}",
            email_address=f"box{index % 4}@example.gov.uk",
            classification=[Classification.EMAIL_ROUTER, Classification.OUTLOOK_CLIENT][index % 2],
            team_name=["Finance team", "Legal team", ""][index % 3],
        )
    html = lead_client.get(reverse(LIST), {"sort": sort}).content.decode()
    assert ids_on(html) == list(InventoryMailbox.objects.order_by(*order_by).values_list("id", flat=True))


def test_column_headers_sort_and_flip_direction(lead_client):
    InventoryMailboxFactory()
    html = lead_client.get(reverse(LIST), {"sort": "team", "classification": "compliant_sss"}).content.decode()
    assert 'aria-sort="ascending"><a class="govuk-link portal-sort-link" href="/migration/inventory/?' in html
    team_link = re.search(r'aria-sort="ascending"><a class="govuk-link portal-sort-link" href="([^"]+)"', html)
    assert "sort=-team" in unescape(team_link.group(1))
    assert "classification=compliant_sss" in unescape(team_link.group(1))


# --- keyset pages -----------------------------------------------------------------------------


def _walk(client, params: dict, *, rel: str = "next", start: dict | None = None) -> list[list[int]]:
    pages = []
    url = reverse(LIST)
    query = {**params, **(start or {})}
    for _ in range(100):
        response = client.get(url, query)
        assert response.status_code == 200
        html = response.content.decode()
        pages.append(ids_on(html))
        following = link(html, rel)
        if following is None:
            return pages
        url, query = following, None
    raise AssertionError("paging did not end")


@pytest.mark.parametrize("sort", ["name", "-name", "address", "-classification", "team"])
def test_paging_forwards_then_backwards_visits_every_mailbox_once(sort, lead_client):
    inventory_mailboxes(60, name="Same name")  # one long run of equal sort keys
    for index in range(75):
        InventoryMailboxFactory(
            name=f"Person {index % 40:02d}",
            team_name=["Finance team", "Legal team", ""][index % 3],
            classification=[Classification.EMAIL_ROUTER, Classification.COMPLIANT_SSS][index % 2],
        )
    # Names repeat, so compare ids in the order a plain ORDER BY gives.
    expected = list(InventoryMailbox.objects.order_by(*_ORDER[sort]).values_list("id", flat=True))
    forwards = _walk(lead_client, {"sort": sort})
    assert [len(page) for page in forwards] == [PAGE_SIZE, PAGE_SIZE, 35]
    assert [pk for page in forwards for pk in page] == expected

    # From the last page, "Previous" walks back over the same pages.
    last_page_html = lead_client.get(reverse(LIST), {"sort": sort, "after": _cursor_before_last_page(sort)})
    backwards = _walk_from_html(lead_client, last_page_html.content.decode(), rel="prev")
    assert backwards == list(reversed(forwards))


_ORDER = {
    "name": ("name", "id"),
    "-name": ("-name", "-id"),
    "address": ("email_address", "id"),
    "-classification": ("-classification", "-name", "-id"),
    "team": ("team_name", "name", "id"),
}
_KEYS = {
    "name": ("name", "id"),
    "-name": ("name", "id"),
    "address": ("email_address", "id"),
    "-classification": ("classification", "name", "id"),
    "team": ("team_name", "name", "id"),
}


def _cursor_before_last_page(sort: str) -> str:
    row = InventoryMailbox.objects.order_by(*_ORDER[sort])[2 * PAGE_SIZE - 1]
    return cursor_encode(tuple(getattr(row, key) for key in _KEYS[sort]))


def _walk_from_html(client, html: str, *, rel: str) -> list[list[int]]:
    pages = [ids_on(html)]
    for _ in range(100):
        following = link(html, rel)
        if following is None:
            return pages
        html = client.get(following).content.decode()
        pages.append(ids_on(html))
    raise AssertionError("paging did not end")


def test_pages_keep_the_filters(lead_client):
    inventory_mailboxes(70, classification=Classification.EMAIL_ROUTER, readiness=Readiness.BLOCKED)
    inventory_mailboxes(70)
    pages = _walk(lead_client, {"classification": "email_router"})
    assert [len(page) for page in pages] == [50, 20]
    html = lead_client.get(reverse(LIST), {"classification": "email_router"}).content.decode()
    assert "classification=email_router" in link(html, "next")


def test_the_first_page_has_no_previous_link(lead_client):
    inventory_mailboxes(60)
    html = lead_client.get(reverse(LIST)).content.decode()
    assert link(html, "prev") is None and link(html, "next") is not None


# --- bad input --------------------------------------------------------------------------------


def test_bad_filter_values_get_an_error_summary_and_the_good_ones_still_apply(lead_client):
    InventoryMailboxFactory(name="Router queue", classification=Classification.EMAIL_ROUTER)
    InventoryMailboxFactory(name="Compliant")
    response = lead_client.get(
        reverse(LIST),
        {
            "classification": "email_router",
            "readiness": "<script>alert(1)</script>",
            "team": "No such team",
            "legacy_source": "999999",
            "owner_type": "robot",
            "sort": "dataverse_id",
            "q": "x" * 500,
        },
    )
    assert response.status_code == 200
    html = response.content.decode()
    assert "There is a problem" in html
    assert "<title>Error: " in html
    for message in (
        "Select a readiness from the list",
        "Select a team from the list",
        "Select a legacy source from the list",
        "Select an owner type from the list",
        "Select a sort order from the list",
        "Name or email address must be 200 characters or fewer",
    ):
        assert message in html
    assert "<script>alert(1)</script>" not in html
    assert names_on(html) == ["Router queue"]


@pytest.mark.parametrize(
    "params",
    [
        {"after": "not-a-cursor"},
        {"before": "!!!"},
        {"after": cursor_encode(("name",))},
        {"after": cursor_encode((1, 2))},
        {"after": cursor_encode(("a\x00b", 1))},
        {"after": cursor_encode(("a", 2**70))},
        {"after": cursor_encode(("a", True))},
        {"after": "e" * 5000},
        {"after": base64.urlsafe_b64encode(b"[" * 1400).decode()},
        {"q": "nul\x00byte"},
        {"team": "nul\x00byte"},
        {"sort": "-classification", "after": cursor_encode(("a", 1))},
    ],
)
def test_mangled_links_never_give_a_500(params, lead_client):
    inventory_mailboxes(3)
    response = lead_client.get(reverse(LIST), params)
    assert response.status_code == 200


# --- query counts -----------------------------------------------------------------------------


def _count_queries(client, url: str, params: dict | None = None) -> int:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url, params)
    assert response.status_code == 200
    return len(captured.captured_queries)


def _fill(count: int, router) -> None:
    """``count`` router mailboxes, every tenth excluded, each listed by the router, across 30 teams."""
    mailboxes = inventory_mailboxes(count, classification=Classification.EMAIL_ROUTER, readiness=Readiness.BLOCKED)
    for index, mailbox in enumerate(mailboxes):
        if index % 10 == 0:
            InventoryAnnotationFactory(mailbox=mailbox, excluded=True)
    router_import = RouterImportFactory(source=router)
    LegacyMailboxLink.objects.bulk_create(
        LegacyMailboxLinkFactory.build(router_import=router_import, mailbox=mailbox) for mailbox in mailboxes
    )
    LegacyMailboxLinkFactory.create_batch(
        3,
        router_import=router_import,
        mailbox=None,
        email_address=factory.Sequence(lambda n: f"gone{n}@example.gov.uk"),
    )
    for index in range(count // 30 or 1):
        InventoryMailboxFactory(team_name=f"Team {index}", business_unit_name=f"Unit {index}")


def _cursor_after_fifth(params: dict) -> dict:
    fifth = InventoryMailbox.objects.filter(removed_at__isnull=True).order_by("name", "id")[4]
    return {**params, "after": cursor_encode((fifth.name, fifth.pk))}


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"classification": "email_router", "readiness": "blocked", "owner_type": "user", "legacy_source": "ROUTER"},
        {"q": "mailbox", "include_removed": "on"},
        {"team": "Corporate Services team", "business_unit": "Corporate Services"},
    ],
)
def test_the_list_costs_the_same_queries_for_10_and_1000_mailboxes(
    params, lead_client, migration_lead, django_assert_num_queries
):
    router = LegacySourceFactory(name="ROUTER01", created_by=migration_lead)
    if "legacy_source" in params:
        params = {**params, "legacy_source": router.pk}
    url = reverse(LIST)

    _fill(10, router)
    first_page = _count_queries(lead_client, url, params)
    later_page = _count_queries(lead_client, url, _cursor_after_fifth(params))
    backwards = _count_queries(lead_client, url, {**params, "before": cursor_encode(("zz", 999999))})

    _fill(990, router)
    with django_assert_num_queries(first_page):
        assert lead_client.get(url, params).status_code == 200
    after_fifth = _cursor_after_fifth(params)
    with django_assert_num_queries(later_page):
        assert lead_client.get(url, after_fifth).status_code == 200
    with django_assert_num_queries(backwards):
        assert lead_client.get(url, {**params, "before": cursor_encode(("zz", 999999))}).status_code == 200


def test_a_filtered_list_offers_a_wave_of_those_mailboxes_to_migration_leads(lead_client, platform_admin, client_for):
    InventoryMailboxFactory(name="Router queue", classification="email_router", owner_type="queue")
    wave_link = reverse("migration:wave_new") + "?classification=email_router"

    filtered = unescape(lead_client.get(reverse(LIST), {"classification": "email_router"}).content.decode())
    unfiltered = lead_client.get(reverse(LIST)).content.decode()
    as_admin = client_for(platform_admin).get(reverse(LIST), {"classification": "email_router"}).content.decode()

    assert "Plan a wave of these mailboxes" in filtered and wave_link in filtered
    assert "Plan a wave" not in unfiltered  # a wave of the whole inventory is one filter away, deliberately
    assert "Plan a wave" not in as_admin  # platform admins approve waves, they do not plan them
