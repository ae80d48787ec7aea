"""The escalation job keeps itself scheduled, once, and the start-up command makes sure it is."""

from __future__ import annotations

import datetime as dt
from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone
from rq import SimpleWorker
from rq.job import Job
from rq.registry import ScheduledJobRegistry

from onboarding.jobs import (
    ESCALATION_INTERVAL,
    ESCALATION_JOB_ID,
    approvals_escalate_overdue_job,
    approvals_escalation_schedule,
)
from onboarding.models import RequestStage
from tests.onboarding.approval_helpers import configure_route, draft_for, make_cast, owner_stage, submit, waiting_stage

pytestmark = pytest.mark.django_db


def scheduled(queue) -> list[tuple[str, float]]:
    """Every scheduled job of the queue: (job id, when as a timestamp)."""
    key = ScheduledJobRegistry(queue=queue).key
    return [(job_id.decode(), score) for job_id, score in queue.connection.zrange(key, 0, -1, withscores=True)]


def run_the_scheduled_job(queue) -> None:
    """What RQ does when the time comes: the scheduler moves the job onto the queue, a worker runs it."""
    ScheduledJobRegistry(queue=queue).remove(ESCALATION_JOB_ID)
    queue.enqueue_job(Job.fetch(ESCALATION_JOB_ID, connection=queue.connection))
    SimpleWorker([queue], connection=queue.connection).work(burst=True)


def schedule_command() -> str:
    out = StringIO()
    call_command("schedule_periodic_jobs", stdout=out)
    return out.getvalue()


def test_the_command_schedules_the_job_once_however_often_it_runs(redis_queue):
    assert "Scheduled onboarding-approvals-escalate-overdue: it runs now, then every 5 minutes." in schedule_command()
    assert "onboarding-approvals-escalate-overdue is already scheduled" in schedule_command()
    assert "onboarding-approvals-escalate-overdue is already scheduled" in schedule_command()
    # Each periodic job once (the nightly inventory discovery, the health sync and the digest are the others).
    assert sorted(job_id for job_id, _ in scheduled(redis_queue)) == sorted(
        [
            ESCALATION_JOB_ID,
            "migration-inventory-nightly-discovery",
            "governance-health-sync",
            "governance-weekly-digest",
        ]
    )


def test_the_command_schedules_again_when_the_record_was_lost(redis_queue):
    schedule_command()
    redis_queue.connection.delete(Job.key_for(ESCALATION_JOB_ID))  # e.g. Redis lost the key
    assert "Scheduled" in schedule_command()
    assert Job.exists(ESCALATION_JOB_ID, connection=redis_queue.connection)


def test_a_run_schedules_the_next_one_under_the_same_id(redis_queue):
    before = timezone.now()
    approvals_escalate_overdue_job()
    approvals_escalate_overdue_job()

    ((job_id, at),) = scheduled(redis_queue)
    assert job_id == ESCALATION_JOB_ID
    next_run = dt.datetime.fromtimestamp(at, tz=dt.UTC)
    assert before + ESCALATION_INTERVAL - dt.timedelta(seconds=2) <= next_run <= timezone.now() + ESCALATION_INTERVAL


def test_the_cycle_survives_real_runs_on_a_worker(redis_queue):
    """Run the scheduled job on a real RQ worker twice: each run leaves exactly one next run behind."""
    cast = make_cast()
    configure_route(owner_stage(sla_hours=1, fallback_approvers=[cast.fallback]))
    request = submit(draft_for(cast))
    RequestStage.objects.filter(pk=waiting_stage(request).pk).update(due_at=timezone.now() - dt.timedelta(minutes=1))
    approvals_escalation_schedule(delay=dt.timedelta(0), only_if_missing=True)

    for _ in range(2):
        run_the_scheduled_job(redis_queue)

        assert [job_id for job_id, _ in scheduled(redis_queue)] == [ESCALATION_JOB_ID]
        assert redis_queue.connection.ttl(Job.key_for(ESCALATION_JOB_ID)) == -1  # the record does not expire
        assert redis_queue.count == 0

    assert waiting_stage(request).escalated_at is not None


def test_a_failing_run_still_leaves_the_next_one_scheduled(redis_queue, monkeypatch):
    def broken(**kwargs):
        raise RuntimeError("database unavailable")

    monkeypatch.setattr("onboarding.services.approvals.approval_stages_escalate_overdue", broken)
    approvals_escalation_schedule(delay=dt.timedelta(0))
    run_the_scheduled_job(redis_queue)

    assert Job.fetch(ESCALATION_JOB_ID, connection=redis_queue.connection).get_status() == "failed"
    assert [job_id for job_id, _ in scheduled(redis_queue)] == [ESCALATION_JOB_ID]
    assert redis_queue.connection.ttl(Job.key_for(ESCALATION_JOB_ID)) > 0  # RQ keeps a failed run for a while
    monkeypatch.undo()
    run_the_scheduled_job(redis_queue)  # the next run schedules its successor and clears that expiry
    assert [job_id for job_id, _ in scheduled(redis_queue)] == [ESCALATION_JOB_ID]
    assert redis_queue.connection.ttl(Job.key_for(ESCALATION_JOB_ID)) == -1
