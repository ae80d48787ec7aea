"""The nightly discovery: 02:00 London time, one next run under a fixed job id, scheduled at start-up."""

from __future__ import annotations

import datetime as dt
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone
from rq import SimpleWorker
from rq.job import Job
from rq.registry import ScheduledJobRegistry

from migration.jobs import (
    NIGHTLY_DISCOVERY_JOB_ID,
    inventory_nightly_discovery_job,
    inventory_nightly_discovery_schedule,
    next_nightly_discovery,
)
from migration.models import InventorySync, SyncKind, SyncStatus
from onboarding.jobs import ESCALATION_JOB_ID
from portal.audit.models import AuditEvent
from portal.m365.config import M365Config

pytestmark = pytest.mark.django_db

UTC = dt.UTC


def scheduled(queue) -> dict[str, dt.datetime]:
    key = ScheduledJobRegistry(queue=queue).key
    return {
        job_id.decode(): dt.datetime.fromtimestamp(score, tz=UTC)
        for job_id, score in queue.connection.zrange(key, 0, -1, withscores=True)
    }


def schedule_command() -> str:
    out = StringIO()
    call_command("schedule_periodic_jobs", stdout=out)
    return out.getvalue()


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        # Winter: London is on GMT, 02:00 is 02:00 UTC.
        (dt.datetime(2026, 1, 15, 10, 0, tzinfo=UTC), dt.datetime(2026, 1, 16, 2, 0, tzinfo=UTC)),
        (dt.datetime(2026, 1, 15, 1, 59, tzinfo=UTC), dt.datetime(2026, 1, 15, 2, 0, tzinfo=UTC)),
        (dt.datetime(2026, 1, 15, 2, 0, tzinfo=UTC), dt.datetime(2026, 1, 16, 2, 0, tzinfo=UTC)),
        # Summer: British Summer Time, 02:00 is 01:00 UTC.
        (dt.datetime(2026, 7, 15, 0, 30, tzinfo=UTC), dt.datetime(2026, 7, 15, 1, 0, tzinfo=UTC)),
        (dt.datetime(2026, 7, 15, 1, 30, tzinfo=UTC), dt.datetime(2026, 7, 16, 1, 0, tzinfo=UTC)),
        # The nights the clocks change: forward at 01:00 GMT, back at 02:00 BST.
        (dt.datetime(2026, 3, 28, 23, 0, tzinfo=UTC), dt.datetime(2026, 3, 29, 1, 0, tzinfo=UTC)),
        (dt.datetime(2026, 10, 24, 23, 0, tzinfo=UTC), dt.datetime(2026, 10, 25, 2, 0, tzinfo=UTC)),
    ],
)
def test_the_next_run_is_at_two_in_the_morning_london_time(now, expected):
    assert next_nightly_discovery(now) == expected


def test_the_start_up_command_schedules_the_nightly_discovery_once(redis_queue):
    first = schedule_command()
    assert f"Scheduled {NIGHTLY_DISCOVERY_JOB_ID}: it runs every night at 02:00 London time" in first
    assert f"{NIGHTLY_DISCOVERY_JOB_ID} is already scheduled" in schedule_command()
    assert f"{NIGHTLY_DISCOVERY_JOB_ID} is already scheduled" in schedule_command()

    jobs = scheduled(redis_queue)
    assert set(jobs) == {
        NIGHTLY_DISCOVERY_JOB_ID,
        ESCALATION_JOB_ID,
        "governance-health-sync",
        "governance-weekly-digest",
    }
    assert jobs[NIGHTLY_DISCOVERY_JOB_ID] == next_nightly_discovery(timezone.now())


def test_the_command_schedules_again_when_the_record_was_lost(redis_queue):
    schedule_command()
    redis_queue.connection.delete(Job.key_for(NIGHTLY_DISCOVERY_JOB_ID))
    assert f"Scheduled {NIGHTLY_DISCOVERY_JOB_ID}" in schedule_command()
    assert Job.exists(NIGHTLY_DISCOVERY_JOB_ID, connection=redis_queue.connection)


def test_a_night_asks_for_an_incremental_discovery_and_schedules_the_next_night(
    m365_settings, redis_queue, django_capture_on_commit_callbacks
):
    InventorySync.objects.create(
        kind=SyncKind.FULL,
        status=SyncStatus.SUCCEEDED,
        requested_at=timezone.now(),
        finished_at=timezone.now(),
        high_water_mark=timezone.now(),
    )
    inventory_nightly_discovery_schedule()
    # What RQ's scheduler does at 02:00: move the job onto the queue; a worker runs it.
    ScheduledJobRegistry(queue=redis_queue).remove(NIGHTLY_DISCOVERY_JOB_ID)
    redis_queue.enqueue_job(Job.fetch(NIGHTLY_DISCOVERY_JOB_ID, connection=redis_queue.connection))
    with django_capture_on_commit_callbacks(execute=True):
        SimpleWorker([redis_queue], connection=redis_queue.connection).work(burst=True, max_jobs=1)

    night = InventorySync.objects.get(status=SyncStatus.QUEUED)
    assert night.kind == SyncKind.INCREMENTAL and night.requested_by is None
    assert AuditEvent.objects.get(action="inventory.sync_requested").actor_name == "System"
    assert list(scheduled(redis_queue)) == [NIGHTLY_DISCOVERY_JOB_ID]
    assert scheduled(redis_queue)[NIGHTLY_DISCOVERY_JOB_ID] == next_nightly_discovery(timezone.now())
    assert [job.args for job in redis_queue.get_jobs()] == [(night.pk,)]  # the discovery run itself, queued


def test_a_night_without_microsoft_365_does_nothing_but_keeps_the_schedule(settings, redis_queue):
    settings.M365 = M365Config(enabled=False)
    inventory_nightly_discovery_job()
    assert not InventorySync.objects.exists()
    assert list(scheduled(redis_queue)) == [NIGHTLY_DISCOVERY_JOB_ID]


def discover_command(*args: str) -> str:
    out = StringIO()
    call_command("discover_inventory", *args, stdout=out)
    return out.getvalue()


def test_the_command_queues_a_discovery_and_at_start_up_only_the_first(
    m365_settings, redis_queue, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        assert "Discovery run" in discover_command("--kind", "full", "--if-never-run")
    first = InventorySync.objects.get()
    assert (first.kind, first.status, first.requested_by) == (SyncKind.FULL, SyncStatus.QUEUED, None)
    assert [job.args for job in redis_queue.get_jobs()] == [(first.pk,)]

    assert "nothing queued" in discover_command("--if-never-run")
    assert "is queued" in discover_command()  # joins the run already waiting
    assert InventorySync.objects.count() == 1


def test_the_command_says_why_it_cannot_queue_without_microsoft_365(settings):
    settings.M365 = M365Config(enabled=False)
    with pytest.raises(CommandError, match="not connected to Microsoft 365"):
        discover_command()
    assert not InventorySync.objects.exists()
