"""Keyset pages over the inventory, checked as properties: walking them gives exactly the plain ordered query."""

from __future__ import annotations

import re

import pytest
from django.db import connection
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from migration.models import Classification, InventoryMailbox, Readiness
from migration.selectors.inventory import (
    SORT_CHOICES,
    InventoryFilters,
    _after,
    cursor_decode,
    cursor_encode,
    inventory_mailboxes_filtered,
    inventory_ordered,
    inventory_page,
    row_key,
)
from tests.migration.factories import InventoryMailboxFactory

pytestmark = pytest.mark.django_db

SORTS = [value for value, _ in SORT_CHOICES]

# Few distinct values, so equal keys (and the id tie-breaker) are the rule, not the exception.
rows = st.lists(
    st.fixed_dictionaries(
        {
            "name": st.sampled_from(["", "Anna", "anna", "Ben", "Zoë", "Åsa", "o'Neil", "100%"]),
            "email_address": st.sampled_from(["a@x.gov.uk", "b@x.gov.uk", "", "A@x.gov.uk"]),
            "team_name": st.sampled_from(["", "Finance", "Legal"]),
            "classification": st.sampled_from([Classification.EMAIL_ROUTER, Classification.COMPLIANT_SSS]),
            "removed": st.booleans(),
        }
    ),
    max_size=40,
)
filters = st.builds(
    InventoryFilters,
    classification=st.sampled_from(["", Classification.EMAIL_ROUTER]),
    team=st.sampled_from(["", "Legal"]),
    include_removed=st.booleans(),
    q=st.sampled_from(["", "a", "%"]),
)


def _load(data: list[dict]) -> None:
    InventoryMailbox.objects.all().delete()
    now = InventoryMailboxFactory.build().first_seen_at
    InventoryMailbox.objects.bulk_create(
        InventoryMailboxFactory.build(
            name=row["name"],
            email_address=row["email_address"],
            team_name=row["team_name"],
            classification=row["classification"],
            readiness=Readiness.BLOCKED,
            removed_at=now if row["removed"] else None,
        )
        for row in data
    )


def _walk_forwards(queryset, sort: str, size: int) -> list[list[int]]:
    pages, after = [], None
    while True:
        page = inventory_page(queryset, sort=sort, after=after, size=size)
        pages.append([mailbox["id"] for mailbox in page.mailboxes])
        if page.next_cursor is None:
            return pages
        after = cursor_decode(page.next_cursor, sort)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=rows, chosen=filters, sort=st.sampled_from(SORTS), size=st.integers(min_value=1, max_value=7))
def test_walking_the_pages_both_ways_gives_the_ordered_query_exactly(data, chosen, sort, size):
    _load(data)
    queryset = inventory_mailboxes_filtered(chosen)
    expected = list(inventory_ordered(queryset, sort).values_list("id", flat=True))

    forwards = _walk_forwards(queryset, sort, size)
    assert [pk for page in forwards for pk in page] == expected  # no gaps, no repeats, same order
    assert all(len(page) == size for page in forwards[:-1])

    # Back from the last page, "previous" visits the same pages in reverse.
    if len(forwards) > 1:
        page = inventory_page(queryset, sort=sort, after=_key_of(forwards[-2][-1], sort), size=size)
        assert [mailbox["id"] for mailbox in page.mailboxes] == forwards[-1]
        backwards = [[mailbox["id"] for mailbox in page.mailboxes]]
        while page.previous_cursor:
            page = inventory_page(queryset, sort=sort, before=cursor_decode(page.previous_cursor, sort), size=size)
            backwards.append([mailbox["id"] for mailbox in page.mailboxes])
        assert backwards == list(reversed(forwards))
        assert page.next_cursor is not None


def _key_of(pk: int, sort: str) -> tuple:
    return row_key(InventoryMailbox.objects.values().get(pk=pk), sort)


@given(
    values=st.lists(st.text(max_size=30).filter(lambda text: "\x00" not in text), min_size=0, max_size=2),
    pk=st.integers(min_value=1, max_value=2**63 - 1),
    sort=st.sampled_from(SORTS),
)
def test_cursors_round_trip_when_they_fit_the_sort(values, pk, sort):
    token = cursor_encode((*values, pk))
    expected_length = 2 if sort.lstrip("-") in ("name", "address") else 3
    decoded = cursor_decode(token, sort)
    if len(values) + 1 == expected_length:
        assert decoded == (*values, pk)
    else:
        assert decoded is None


@given(token=st.text(max_size=200), sort=st.sampled_from(SORTS))
def test_any_string_as_a_cursor_decodes_or_is_ignored(token, sort):
    decoded = cursor_decode(token, sort)
    assert decoded is None or isinstance(decoded[-1], int)


def _analysed_inventory() -> None:
    """Enough rows, with statistics, for the planner to choose as it would in production."""
    classes = [Classification.EMAIL_ROUTER, Classification.COMPLIANT_SSS, Classification.OUTLOOK_CLIENT]
    InventoryMailbox.objects.bulk_create(
        InventoryMailboxFactory.build(name=f"Person {index:05d}", classification=classes[index % 3])
        for index in range(5000)
    )
    with connection.cursor() as cursor:
        # New rows wait in the GIN indexes' pending lists until a vacuum; merge them as autovacuum would.
        for index in ("inventory_name_trgm_idx", "inventory_address_trgm_idx"):
            cursor.execute("SELECT gin_clean_pending_list(%s::regclass)", [index])
        cursor.execute("ANALYZE migration_inventorymailbox")


def test_the_search_indexes_exist_and_answer_the_search():
    if connection.vendor != "postgresql":
        pytest.skip("trigram indexes are PostgreSQL only")
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'migration_inventorymailbox'")
        names = {row[0] for row in cursor.fetchall()}
    assert {"inventory_name_trgm_idx", "inventory_address_trgm_idx", "inventory_address_idx"} <= names

    _analysed_inventory()
    queryset = inventory_mailboxes_filtered(InventoryFilters(q="smith", include_removed=True))
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        plan = queryset.order_by("name", "id").explain()
    assert "inventory_name_trgm_idx" in plan and "inventory_address_trgm_idx" in plan


def test_deep_pages_start_from_an_index_range_not_a_scan():
    if connection.vendor != "postgresql":
        pytest.skip("plan shape is PostgreSQL's")
    _analysed_inventory()
    queryset = inventory_mailboxes_filtered(InventoryFilters(classification=Classification.EMAIL_ROUTER))
    deep = queryset.filter(_after(("classification", "name", "id"), ("email_router", "M", 5000)))
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("SET LOCAL enable_bitmapscan = off")
        plan = deep.order_by("classification", "name", "id")[:51].explain()
    index_line = next(line for line in plan.splitlines() if "Index Scan using" in line)
    assert "inventory_class_name_idx" in index_line
    # The whole key comparison is the index condition: the scan starts at the cursor.
    assert re.search(r"Index Cond: .*ROW\(.*classification.*name.*id.*\) > ROW\(", plan), plan
