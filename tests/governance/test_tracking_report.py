"""The tracking-rule report: over-tracking flags, recommended rules, counts per kind and rule, filters, queries."""

from __future__ import annotations

import re
import uuid

import pytest
from django.urls import reverse
from django.utils import timezone

from governance.models import ManagedKind, ManagedMailbox, ManagedSource, TrackingChange, TrackingChangeStatus
from governance.selectors.tracking import (
    NOT_READ,
    TrackingFilters,
    is_over_tracking,
    recommended_rule,
    tracking_report_mailboxes,
    tracking_rule_counts,
)
from portal.policy.models import PolicySettings, TrackingRule
from portal.policy.services import policy_get

pytestmark = pytest.mark.django_db


def managed(*, kind: str = ManagedKind.QUEUE, rule: int | None = TrackingRule.ALL, owners=(), **fields):
    fields.setdefault("name", f"Mailbox {uuid.uuid4().hex[:6]}")
    mailbox = ManagedMailbox.objects.create(
        dataverse_id=uuid.uuid4(),
        owner_dataverse_id=uuid.uuid4(),
        kind=kind,
        source=ManagedSource.INVENTORY,
        tracking_rule=rule,
        added_at=timezone.now(),
        **fields,
    )
    mailbox.owners.set(owners)
    return mailbox


def set_policy(**fields) -> PolicySettings:
    policy_get()
    PolicySettings.objects.filter(pk=1).update(**fields)
    return policy_get()


def cell(counts, kind: str, key) -> int:
    row = next(row for row in counts.rows if row.kind == kind)
    return next(count for column, count, _ in row.cells if column.key == key)


def test_queues_and_shared_mailboxes_on_all_email_are_over_tracking_users_only_when_policy_says():
    policy = set_policy(flag_user_over_tracking=False)
    queue = managed(kind=ManagedKind.QUEUE)
    shared = managed(kind=ManagedKind.SHARED)
    user = managed(kind=ManagedKind.USER)
    fine = managed(kind=ManagedKind.QUEUE, rule=TrackingRule.EMAIL_ENABLED_RECORDS)
    unread = managed(kind=ManagedKind.QUEUE, rule=None)
    retired = managed(kind=ManagedKind.QUEUE, is_active=False)

    assert is_over_tracking(queue, policy) and is_over_tracking(shared, policy)
    assert not is_over_tracking(user, policy)
    assert not any(is_over_tracking(m, policy) for m in (fine, unread, retired))

    policy = set_policy(flag_user_over_tracking=True)
    assert is_over_tracking(user, policy)


def test_the_recommended_rule_is_the_policy_default_for_the_kind():
    policy = set_policy(
        default_tracking_rule_queue=TrackingRule.EMAIL_ENABLED_RECORDS,
        default_tracking_rule_shared=TrackingRule.RESPONSES,
        default_tracking_rule_user=TrackingRule.NONE,
    )
    assert recommended_rule(ManagedKind.QUEUE, policy) == TrackingRule.EMAIL_ENABLED_RECORDS
    assert recommended_rule(ManagedKind.SHARED, policy) == TrackingRule.RESPONSES
    assert recommended_rule(ManagedKind.USER, policy) == TrackingRule.NONE


def test_the_counts_cover_every_kind_and_rule_including_not_read_yet(platform_admin):
    policy = set_policy(flag_user_over_tracking=False)
    for _ in range(3):
        managed(kind=ManagedKind.QUEUE)
    managed(kind=ManagedKind.QUEUE, rule=TrackingRule.EMAIL_ENABLED_RECORDS)
    managed(kind=ManagedKind.SHARED)
    managed(kind=ManagedKind.SHARED, rule=None)
    managed(kind=ManagedKind.USER)
    managed(kind=ManagedKind.USER, rule=TrackingRule.LEADS_CONTACTS_ACCOUNTS)
    managed(kind=ManagedKind.QUEUE, is_active=False)  # not managed any more: not counted

    counts = tracking_rule_counts(platform_admin, policy)

    assert cell(counts, ManagedKind.QUEUE, TrackingRule.ALL) == 3
    assert cell(counts, ManagedKind.QUEUE, TrackingRule.EMAIL_ENABLED_RECORDS) == 1
    assert cell(counts, ManagedKind.SHARED, TrackingRule.ALL) == 1
    assert cell(counts, ManagedKind.SHARED, NOT_READ) == 1
    assert cell(counts, ManagedKind.USER, TrackingRule.LEADS_CONTACTS_ACCOUNTS) == 1
    assert [row.total for row in counts.rows] == [4, 2, 2]
    assert counts.total == 8
    assert counts.totals[TrackingRule.ALL] == 5
    assert counts.over_tracking == 4  # the user on "All" counts only when the policy says so
    policy = set_policy(flag_user_over_tracking=True)
    assert tracking_rule_counts(platform_admin, policy).over_tracking == 5


def test_owners_count_and_list_only_their_mailboxes(requester, platform_admin):
    policy = policy_get()
    mine = managed(owners=[requester])
    managed(owners=[platform_admin])
    managed()
    assert tracking_rule_counts(requester, policy).total == 1
    assert list(tracking_report_mailboxes(requester, policy, TrackingFilters())) == [mine]
    assert tracking_rule_counts(platform_admin, policy).total == 3


def test_filters_by_kind_and_over_tracking_only(platform_admin):
    policy = set_policy(flag_user_over_tracking=False)
    queue = managed(kind=ManagedKind.QUEUE, name="A queue")
    calm_queue = managed(kind=ManagedKind.QUEUE, rule=TrackingRule.RESPONSES, name="B queue")
    shared = managed(kind=ManagedKind.SHARED, name="C shared")
    managed(kind=ManagedKind.USER, name="D user")

    def names(**filters) -> list[str]:
        return [m.name for m in tracking_report_mailboxes(platform_admin, policy, TrackingFilters(**filters))]

    assert names(kind=ManagedKind.QUEUE) == [queue.name, calm_queue.name]
    assert names(over_tracking_only=True) == [queue.name, shared.name]
    assert names(kind=ManagedKind.SHARED, over_tracking_only=True) == [shared.name]


# --- the page --------------------------------------------------------------------------------------


def test_the_report_flags_over_tracking_rows_with_the_recommended_rule_and_a_request_button(client_for, platform_admin):
    set_policy(default_tracking_rule_queue=TrackingRule.EMAIL_ENABLED_RECORDS)
    flagged = managed(name="Housing queue")
    calm = managed(name="Parking queue", rule=TrackingRule.EMAIL_ENABLED_RECORDS)
    response = client_for(platform_admin).get(reverse("governance:tracking_report"))
    assert response.status_code == 200
    html = response.content.decode()
    row = re.search(rf'<tr class="govuk-table__row" data-mailbox="{flagged.pk}">(.*?)</tr>', html, re.S).group(1)
    assert "Over-tracking" in row
    assert "Email messages from Dynamics 365 records that are email enabled" in row
    assert reverse("governance:tracking_request", args=[flagged.pk]) in row
    calm_row = re.search(rf'<tr class="govuk-table__row" data-mailbox="{calm.pk}">(.*?)</tr>', html, re.S).group(1)
    assert "Over-tracking" not in calm_row
    assert "Request change" not in calm_row
    counts = re.search(r'<tr class="govuk-table__row" data-kind="queue">(.*?)</tr>', html, re.S).group(1)
    assert re.search(r'data-rule="0">1 <strong class="govuk-tag govuk-tag--red">Over-tracking', counts)


def test_a_row_with_an_open_change_links_to_it_instead_of_offering_another(client_for, platform_admin):
    mailbox = managed(name="Rates queue")
    change = TrackingChange.objects.create(
        mailbox=mailbox,
        from_rule=TrackingRule.ALL,
        to_rule=TrackingRule.EMAIL_ENABLED_RECORDS,
        status=TrackingChangeStatus.PENDING,
        requested_by=platform_admin,
        requested_at=timezone.now(),
        updated_at=timezone.now(),
    )
    html = client_for(platform_admin).get(reverse("governance:tracking_report")).content.decode()
    row = re.search(rf'data-mailbox="{mailbox.pk}">(.*?)</tr>', html, re.S).group(1)
    assert reverse("governance:tracking_change", args=[change.pk]) in row
    assert "Waiting for approval" in row
    assert "Request change" not in row


def test_the_over_tracking_filter_on_the_page(client_for, platform_admin):
    flagged = managed(name="Alpha queue")
    calm = managed(name="Beta queue", rule=TrackingRule.NONE)
    html = (
        client_for(platform_admin)
        .get(reverse("governance:tracking_report"), {"over_tracking": "on", "kind": "queue"})
        .content.decode()
    )
    assert f'data-mailbox="{flagged.pk}"' in html
    assert f'data-mailbox="{calm.pk}"' not in html
    assert 'name="over_tracking"' in html and "checked" in html


def test_a_bad_filter_does_not_break_the_page(client_for, platform_admin):
    managed()
    response = client_for(platform_admin).get(reverse("governance:tracking_report"), {"kind": "nonsense", "page": "x"})
    assert response.status_code == 200
    assert "Select a kind of mailbox from the list" in response.content.decode()


def test_the_report_pages_fifty_at_a_time_in_constant_queries(
    client_for, platform_admin, django_assert_max_num_queries
):
    client = client_for(platform_admin)
    for _ in range(3):
        managed()
    with django_assert_max_num_queries(20) as few:
        client.get(reverse("governance:tracking_report"))
    for index in range(60):
        mailbox = managed(kind=[ManagedKind.QUEUE, ManagedKind.SHARED, ManagedKind.USER][index % 3])
        if index % 4 == 0:
            TrackingChange.objects.create(
                mailbox=mailbox,
                to_rule=TrackingRule.NONE,
                requested_by=platform_admin,
                requested_at=timezone.now(),
                updated_at=timezone.now(),
            )
    with django_assert_max_num_queries(len(few.captured_queries)):
        response = client.get(reverse("governance:tracking_report"))
    assert response.content.decode().count('data-mailbox="') == 50
    second = client.get(reverse("governance:tracking_report"), {"page": 2}).content.decode()
    assert second.count('data-mailbox="') == 13
