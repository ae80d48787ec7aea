"""The health sync's and the weekly digest's schedules, and the review dates retention gives."""

from __future__ import annotations

import datetime as dt
from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone
from rq import SimpleWorker
from rq.job import Job
from rq.registry import ScheduledJobRegistry

from governance.jobs import DIGEST_JOB_ID, HEALTH_SYNC_JOB_ID, health_sync_schedule, next_digest
from governance.models import HealthSync, HealthSyncStatus
from governance.services.health_sync import HealthSyncError, health_sync_request
from governance.services.managed import add_months
from portal.m365.config import M365Config

UTC = dt.UTC


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        # Friday in winter: the next Monday 07:00 GMT.
        (dt.datetime(2026, 11, 27, 10, 0, tzinfo=UTC), dt.datetime(2026, 11, 30, 7, 0, tzinfo=UTC)),
        # Monday before seven: the same morning; at seven or after, a week later.
        (dt.datetime(2026, 11, 30, 6, 59, tzinfo=UTC), dt.datetime(2026, 11, 30, 7, 0, tzinfo=UTC)),
        (dt.datetime(2026, 11, 30, 7, 0, tzinfo=UTC), dt.datetime(2026, 12, 7, 7, 0, tzinfo=UTC)),
        # Summer: 07:00 BST is 06:00 UTC.
        (dt.datetime(2026, 7, 15, 12, 0, tzinfo=UTC), dt.datetime(2026, 7, 20, 6, 0, tzinfo=UTC)),
    ],
)
def test_the_digest_goes_out_on_monday_at_seven_london_time(now, expected):
    assert next_digest(now) == expected


@pytest.mark.parametrize(
    ("day", "months", "expected"),
    [
        (dt.date(2026, 1, 31), 1, dt.date(2026, 2, 28)),
        (dt.date(2027, 11, 15), 3, dt.date(2028, 2, 15)),
        (dt.date(2028, 1, 31), 1, dt.date(2028, 2, 29)),
        (dt.date(2026, 6, 1), 24, dt.date(2028, 6, 1)),
    ],
)
def test_a_retention_period_ends_on_the_same_day_of_a_later_month(day, months, expected):
    assert add_months(day, months) == expected


def test_the_start_up_command_schedules_both_jobs_once(redis_queue):
    out = StringIO()
    call_command("schedule_periodic_jobs", stdout=out)
    assert f"Scheduled {HEALTH_SYNC_JOB_ID}" in out.getvalue()
    assert f"Scheduled {DIGEST_JOB_ID}" in out.getvalue()
    again = StringIO()
    call_command("schedule_periodic_jobs", stdout=again)
    assert f"{HEALTH_SYNC_JOB_ID} is already scheduled" in again.getvalue()
    assert f"{DIGEST_JOB_ID} is already scheduled" in again.getvalue()


@pytest.mark.django_db
def test_a_scheduled_run_asks_for_a_sync_and_schedules_the_next(
    m365_settings, redis_queue, django_capture_on_commit_callbacks
):
    health_sync_schedule(delay=dt.timedelta(0))
    ScheduledJobRegistry(queue=redis_queue).remove(HEALTH_SYNC_JOB_ID)
    redis_queue.enqueue_job(Job.fetch(HEALTH_SYNC_JOB_ID, connection=redis_queue.connection))
    with django_capture_on_commit_callbacks(execute=True):
        SimpleWorker([redis_queue], connection=redis_queue.connection).work(burst=True, max_jobs=1)

    sync = HealthSync.objects.get()
    assert sync.status == HealthSyncStatus.QUEUED and sync.requested_by is None
    assert HEALTH_SYNC_JOB_ID in ScheduledJobRegistry(queue=redis_queue)
    assert [job.args for job in redis_queue.get_jobs()] == [(sync.pk,)]


@pytest.mark.django_db
def test_asking_twice_while_one_waits_returns_the_same_sync(m365_settings, redis_queue, platform_admin):
    first = health_sync_request(actor=platform_admin)
    assert health_sync_request(actor=platform_admin).pk == first.pk
    assert HealthSync.objects.count() == 1


@pytest.mark.django_db
def test_without_microsoft_365_there_is_nothing_to_sync(settings, platform_admin):
    settings.M365 = M365Config(enabled=False)
    with pytest.raises(HealthSyncError, match="not connected to Microsoft 365"):
        health_sync_request(actor=platform_admin)
    assert not HealthSync.objects.exists()


@pytest.mark.django_db
def test_a_sync_left_running_by_a_lost_worker_does_not_block_the_next(m365_settings, redis_queue, platform_admin):
    stuck = HealthSync.objects.create(
        status=HealthSyncStatus.RUNNING,
        requested_at=timezone.now() - dt.timedelta(hours=2),
        started_at=timezone.now() - dt.timedelta(hours=2),
    )
    fresh = health_sync_request(actor=platform_admin)
    stuck.refresh_from_db()
    assert fresh.pk != stuck.pk and stuck.status == HealthSyncStatus.FAILED
