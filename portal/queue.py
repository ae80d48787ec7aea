"""Queueing background jobs after the transaction that decided them commits."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import Any

import django_rq
from django.db import transaction
from rq.job import Job
from rq.registry import ScheduledJobRegistry

from portal import correlation

logger = logging.getLogger(__name__)


def enqueue_on_commit(
    func: Callable[..., Any],
    *args: Any,
    queue: str = "default",
    job_timeout: int = 600,
    on_enqueue_error: Callable[[Exception], None] | None = None,
    **kwargs: Any,
) -> None:
    """Queue ``func(*args, **kwargs)`` once the current transaction commits.

    Jobs take ids and plain values only. The caller's correlation id travels
    with the job. When Redis cannot take the job, ``on_enqueue_error`` records
    that on the state row so nothing waits silently for a job that never runs.
    """
    kwargs.setdefault("correlation_id", correlation.current() or correlation.new_id())

    def _enqueue() -> None:
        try:
            django_rq.get_queue(queue).enqueue(func, *args, job_timeout=job_timeout, **kwargs)
        except Exception as exc:  # Redis down or refusing; record it, do not lose it.
            logger.exception("could not queue %s", getattr(func, "__name__", func))
            if on_enqueue_error is None:
                raise
            on_enqueue_error(exc)

    transaction.on_commit(_enqueue)


def periodic_schedule(
    func: Callable[..., Any],
    *,
    job_id: str,
    job_timeout: int,
    at: dt.datetime | None = None,
    delay: dt.timedelta | None = None,
    only_if_missing: bool = False,
    queue: Any = None,
) -> bool:
    """Schedule the next run of a periodic job under its fixed id, at ``at`` or ``delay`` from now.

    One fixed id means there is only ever one next run however often this is called. With
    ``only_if_missing`` a run already scheduled or queued is left alone. Returns whether it scheduled.
    """
    queue = queue or django_rq.get_queue("default")
    if only_if_missing and periodic_pending(job_id, queue=queue):
        return False
    if at is not None:
        queue.enqueue_at(at, func, job_id=job_id, job_timeout=job_timeout, result_ttl=-1)
    else:
        queue.enqueue_in(delay or dt.timedelta(0), func, job_id=job_id, job_timeout=job_timeout, result_ttl=-1)
    # A run schedules its successor under its own job id, so they share one job record. RQ sets
    # an expiry on a run's record when the run fails; clearing it here keeps the successor alive.
    queue.connection.persist(Job.key_for(job_id))
    return True


def periodic_pending(job_id: str, *, queue: Any) -> bool:
    """The next run is scheduled or queued, and its record is there to run from."""
    if not Job.exists(job_id, connection=queue.connection):
        return False
    return job_id in ScheduledJobRegistry(queue=queue) or job_id in queue.get_job_ids()
