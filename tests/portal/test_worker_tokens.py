"""The portal's RQ worker hands its Microsoft 365 tokens down to the jobs it forks."""

from __future__ import annotations

import os

import pytest
from rq import Queue
from rq.worker import Worker

from portal.m365 import tokens
from portal.m365.config import M365Config, load_m365_config
from portal.m365.tokens import TokenProvider
from portal.worker import PortalWorker


def token_requests(sim, since: int) -> int:
    return len([entry for entry in sim.ledger(since) if entry["surface"] == "entra" and entry["method"] == "POST"])


def a_job_fetching_every_token() -> int:
    """Runs in the forked job: ask for every registration's tokens, as migration steps do."""
    from django.conf import settings

    config = settings.M365
    for registration in config.registrations:
        provider = TokenProvider(config=config, registration=registration)
        for resource in (config.dataverse_url, config.graph_url, config.exchange_admin_url):
            provider.token(scope=config.scope_for(resource))
    return os.getpid()


@pytest.fixture
def nothing_handed_down():
    tokens._inherited.clear()
    yield
    tokens._inherited.clear()


def run_jobs(worker_class, queue, count: int) -> set[int]:
    jobs = [queue.enqueue(a_job_fetching_every_token) for _ in range(count)]
    worker_class([queue], connection=queue.connection).work(burst=True)
    return {queue.fetch_job(job.id).return_value() for job in jobs}


def test_forked_jobs_use_the_tokens_the_worker_fetched(m365_settings, fresh_sim, redis_queue, nothing_handed_down):
    queue = Queue(redis_queue.name, connection=redis_queue.connection)
    per_job = 3 * len(m365_settings.registrations)  # Dataverse, Graph and Exchange for each registration

    since = fresh_sim.last_seq()
    plain = run_jobs(Worker, queue, 2)
    assert token_requests(fresh_sim, since) == 2 * per_job  # every forked job asked for its own

    since = fresh_sim.last_seq()
    portal = run_jobs(PortalWorker, queue, 3)
    assert len(plain | portal) == 5 and os.getpid() not in plain | portal  # five forked processes
    assert token_requests(fresh_sim, since) <= per_job  # the worker's own, once; none by the jobs


def test_a_worker_that_cannot_fetch_tokens_says_so_and_tries_again_later(settings, caplog):
    settings.M365 = load_m365_config(
        {
            "M365_TENANT_ID": "00000000-0000-4000-8000-000000000001",
            "M365_CLIENT_ID": "00000000-0000-4000-8000-000000000002",
            "M365_CLIENT_SECRET": "not-a-real-secret",
            "M365_AUTHORITY_HOST": "https://127.0.0.1:1",
            "DATAVERSE_URL": "https://127.0.0.1:1/dataverse",
            "M365_TIMEOUT_SECONDS": "1",
        }
    )
    worker = PortalWorker.__new__(PortalWorker)

    worker._warm_tokens()

    assert "could not fetch Microsoft 365 tokens ahead of jobs" in caplog.text
    assert worker._next_warm > 0  # not again before every job


def test_without_microsoft_365_the_worker_fetches_nothing(settings):
    settings.M365 = M365Config(enabled=False)
    worker = PortalWorker.__new__(PortalWorker)
    worker._warm_tokens()
    assert worker._next_warm == 0.0
