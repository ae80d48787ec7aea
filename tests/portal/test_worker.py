"""The portal's RQ worker runs jobs in its own process: tokens and connections stay warm between jobs."""

from __future__ import annotations

import os

import pytest
from rq import Queue
from rq.job import JobStatus
from rq.worker import Worker

from portal.accounts.models import User
from portal.m365.tokens import TokenProvider
from portal.worker import PortalWorker


def token_requests(sim, since: int) -> int:
    return len([entry for entry in sim.ledger(since) if entry["surface"] == "entra" and entry["method"] == "POST"])


def a_job_fetching_every_token() -> int:
    """Ask for every registration's tokens, as migration steps do; say which process ran it."""
    from django.conf import settings

    config = settings.M365
    for registration in config.registrations:
        provider = TokenProvider(config=config, registration=registration)
        for resource in (config.dataverse_url, config.graph_url, config.exchange_admin_url):
            provider.token(scope=config.scope_for(resource))
    return os.getpid()


def a_job_that_fails() -> None:
    raise RuntimeError("this job fails on purpose")


def a_job_reading_the_database() -> int:
    return User.objects.count()


def run_jobs(worker_class, queue, jobs) -> list:
    worker_class([queue], connection=queue.connection).work(burst=True)
    return [queue.fetch_job(job.id) for job in jobs]


# The worker closes stale database connections around every job, so it needs database access
# whichever tests ran before in this process.
@pytest.mark.django_db(transaction=True)
def test_jobs_share_the_workers_tokens_instead_of_each_fetching_them(m365_settings, fresh_sim, redis_queue):
    queue = Queue(redis_queue.name, connection=redis_queue.connection)
    per_job = 3 * len(m365_settings.registrations)  # Dataverse, Graph and Exchange for each registration

    since = fresh_sim.last_seq()
    forked = run_jobs(Worker, queue, [queue.enqueue(a_job_fetching_every_token) for _ in range(2)])
    assert token_requests(fresh_sim, since) == 2 * per_job  # RQ's forking worker: every job asked again
    assert {job.return_value() for job in forked} & {os.getpid()} == set()

    since = fresh_sim.last_seq()
    portal = run_jobs(PortalWorker, queue, [queue.enqueue(a_job_fetching_every_token) for _ in range(3)])
    assert {job.return_value() for job in portal} == {os.getpid()}  # no process per job
    assert token_requests(fresh_sim, since) <= per_job  # at most once for all three jobs


@pytest.mark.django_db(transaction=True)
def test_a_failing_job_does_not_stop_the_next(redis_queue):
    queue = Queue(redis_queue.name, connection=redis_queue.connection)
    jobs = [queue.enqueue(a_job_that_fails), queue.enqueue(a_job_reading_the_database)]

    failed, read = run_jobs(PortalWorker, queue, jobs)

    assert failed.get_status() == JobStatus.FAILED and "fails on purpose" in failed.latest_result().exc_string
    assert read.get_status() == JobStatus.FINISHED and read.return_value() == User.objects.count()
