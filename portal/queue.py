"""Queueing background jobs after the transaction that decided them commits."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import django_rq
from django.db import transaction

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
