"""The burn-down: today's row of mailboxes by state, and the dashboard's chart, waves and sources."""

from __future__ import annotations

import datetime as dt
import re
from html import unescape

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from migration.models import Classification, LegacySourceKind, MigrationProgressDay, Readiness, WaveMailboxState
from migration.selectors.progress import burn_down
from migration.services.decommission import decommission_plan_ensure
from migration.services.progress import progress_record_today
from tests.migration.factories import (
    InventoryMailboxFactory,
    LegacySourceFactory,
    WaveFactory,
    WaveMailboxFactory,
    router_serving,
)

pytestmark = pytest.mark.django_db


def legacy_mailbox(**fields):
    return InventoryMailboxFactory(classification=Classification.EMAIL_ROUTER, readiness=Readiness.READY, **fields)


def test_today_counts_each_live_mailbox_once_by_state():
    InventoryMailboxFactory()  # compliant from the start
    legacy_mailbox()
    legacy_mailbox(removed_at=timezone.now())  # gone from Dynamics 365: not counted
    migrated = legacy_mailbox()
    WaveMailboxFactory(mailbox=migrated, state=WaveMailboxState.MIGRATED, active=False)
    failed = legacy_mailbox()
    WaveMailboxFactory(mailbox=failed, state=WaveMailboxState.NEEDS_ATTENTION, active=False)
    retried = legacy_mailbox()  # needed attention, then migrated in a later wave
    WaveMailboxFactory(mailbox=retried, state=WaveMailboxState.NEEDS_ATTENTION, active=False)
    WaveMailboxFactory(mailbox=retried, state=WaveMailboxState.MIGRATED, active=False)
    waiting = legacy_mailbox()
    WaveMailboxFactory(mailbox=waiting, state=WaveMailboxState.PENDING, active=True)

    row = progress_record_today()

    assert row.day == timezone.localdate()
    assert (row.legacy, row.compliant, row.migrated, row.needs_attention) == (2, 1, 2, 1)


def test_recording_again_the_same_day_overwrites_the_row():
    legacy_mailbox()
    progress_record_today()
    InventoryMailboxFactory()

    row = progress_record_today()

    assert MigrationProgressDay.objects.count() == 1
    assert (row.legacy, row.compliant) == (1, 1)


def days_of_progress():
    start = timezone.localdate() - dt.timedelta(days=3)
    for offset, (legacy, migrated) in enumerate([(40, 0), (30, 10), (12, 28), (2, 37)]):
        MigrationProgressDay.objects.create(
            day=start + dt.timedelta(days=offset),
            legacy=legacy,
            compliant=5,
            migrated=migrated,
            needs_attention=1 if offset == 3 else 0,
            recorded_at=timezone.now(),
        )


def test_the_burn_down_lines_fall_and_rise_with_the_numbers():
    days_of_progress()

    chart = burn_down()

    assert [day.legacy for day in chart.days] == [40, 30, 12, 2]
    lines = {series.key: series for series in chart.series}
    legacy_heights = [float(point.split(",")[1]) for point in lines["legacy"].points.split()]
    migrated_heights = [float(point.split(",")[1]) for point in lines["migrated"].points.split()]
    # SVG y grows downwards: the legacy line goes down the page as its number falls.
    assert legacy_heights == sorted(legacy_heights)
    assert migrated_heights == sorted(migrated_heights, reverse=True)
    assert lines["legacy"].last == 2 and lines["migrated"].last == 37
    assert [tick.value for tick in chart.ticks] == [0, 25, 50]


@pytest.fixture
def lead_client(migration_lead, client_for):
    return client_for(migration_lead)


def test_the_dashboard_draws_the_burn_down_with_its_numbers_in_a_table(lead_client):
    days_of_progress()

    html = unescape(lead_client.get(reverse("migration:dashboard")).content.decode())

    main = html.split("<main", 1)[1].split("</main>", 1)[0]
    assert "<script" not in main
    assert 'role="img"' in main and "<polyline" in main
    assert "Mailboxes by state at the end of each day" in main
    table = main.split("Mailboxes by state at the end of each day", 1)[1].split("</table>", 1)[0]
    cells = re.findall(r'govuk-table__cell--numeric">([\d,]+)<', table)
    assert cells[:4] == ["40", "0", "5", "0"] and cells[-4:] == ["2", "37", "5", "1"]


def test_the_dashboard_shows_progress_per_wave_and_per_legacy_source(lead_client, migration_lead):
    wave = WaveFactory(name="Finance queues", status="running")
    for state in (WaveMailboxState.MIGRATED, WaveMailboxState.MIGRATED, WaveMailboxState.RUNNING):
        WaveMailboxFactory(wave=wave, state=state)
    router = LegacySourceFactory(name="CRMROUTER01", kind=LegacySourceKind.EMAIL_ROUTER)
    done = legacy_mailbox()
    WaveMailboxFactory(mailbox=done, state=WaveMailboxState.MIGRATED, active=False)
    router_serving(router, done, legacy_mailbox(), legacy_mailbox(), legacy_mailbox())
    decommission_plan_ensure(actor=migration_lead, source_id=router.pk)

    html = unescape(lead_client.get(reverse("migration:dashboard")).content.decode())
    text = " ".join(re.sub(r"<[^>]+>", " ", html).split())

    assert "Finance queues Running 2 of 3 0 67%" in text
    assert "CRMROUTER01 Email Router server 1 of 4 0 of 3 done 25%" in text
    assert "portal-w-67" in html and "portal-w-25" in html


def test_dashboard_queries_do_not_grow_with_waves_sources_or_days(
    lead_client, migration_lead, django_assert_num_queries
):
    def add_some(n):
        for index in range(n):
            wave = WaveFactory(name=f"Wave {n}-{index}")
            WaveMailboxFactory(wave=wave, state=WaveMailboxState.MIGRATED)
            router = LegacySourceFactory(name=f"ROUTER-{n}-{index}", kind=LegacySourceKind.EMAIL_ROUTER)
            router_serving(router, legacy_mailbox())
            decommission_plan_ensure(actor=migration_lead, source_id=router.pk)
            MigrationProgressDay.objects.create(
                day=timezone.localdate() - dt.timedelta(days=n * 10 + index), recorded_at=timezone.now()
            )

    add_some(1)
    with CaptureQueriesContext(connection) as few:
        assert lead_client.get(reverse("migration:dashboard")).status_code == 200
    add_some(6)
    with django_assert_num_queries(len(few.captured_queries)):
        assert lead_client.get(reverse("migration:dashboard")).status_code == 200


def test_decommission_list_queries_do_not_grow(lead_client, migration_lead, django_assert_num_queries):
    def add_some(n):
        for index in range(n):
            router = LegacySourceFactory(name=f"ROUTER-{n}-{index}", kind=LegacySourceKind.EMAIL_ROUTER)
            router_serving(router, legacy_mailbox())
            decommission_plan_ensure(actor=migration_lead, source_id=router.pk)

    add_some(1)
    with CaptureQueriesContext(connection) as few:
        assert lead_client.get(reverse("migration:decommission")).status_code == 200
    add_some(5)
    with django_assert_num_queries(len(few.captured_queries)):
        assert lead_client.get(reverse("migration:decommission")).status_code == 200


def test_a_finished_discovery_records_todays_progress(
    m365_settings, fresh_sim, redis_queue, django_capture_on_commit_callbacks
):
    from rq import SimpleWorker

    from migration.models import InventoryMailbox, InventorySync, SyncKind, SyncStatus
    from migration.services.discovery import inventory_sync_request

    with django_capture_on_commit_callbacks(execute=True):
        sync = inventory_sync_request(actor=None, kind=SyncKind.FULL)
    SimpleWorker([redis_queue], connection=redis_queue.connection).work(burst=True)

    assert InventorySync.objects.get(pk=sync.pk).status == SyncStatus.SUCCEEDED
    row = MigrationProgressDay.objects.get(day=timezone.localdate())
    live = InventoryMailbox.objects.filter(removed_at__isnull=True)
    assert row.legacy + row.compliant == live.count() > 0
    assert row.compliant == live.filter(readiness=Readiness.COMPLIANT).count()
    assert row.migrated == row.needs_attention == 0
