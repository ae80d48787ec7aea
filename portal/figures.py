"""Dashboard figures worked out at most once every ``DASHBOARD_FIGURES_SECONDS``, shared by every web process.

Aggregates over the whole inventory (counts by classification, by team, per legacy source) cost
the same for every viewer and change only when discovery or a wave runs, so twenty people on a
dashboard need not each recount a hundred thousand rows. The figures live in the shared cache
(Redis) with the moment they were worked out; a page shows that moment ("Figures as of 14:02:07"),
and figures older than the setting are worked out again, so a change shows within that time.
Setting it to 0 works them out on every request.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from django.conf import settings
from django.core.cache import cache
from django.utils import timezone
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Bumped when the shape of what is stored changes, so a deploy never reads the old shape.
_VERSION = 1


@dataclass(frozen=True)
class Figures(Generic[T]):
    value: T
    as_of: dt.datetime  # when the work started: the figures are at least this recent
    seconds: int  # the longest the figures may be reused, as the page states it


def figures_max_age() -> int:
    return settings.DASHBOARD_FIGURES_SECONDS


def figures_get(name: str, compute: Callable[[], T]) -> Figures[T]:
    """``compute()``'s result, reused from the cache while it is younger than the stated time.

    If the cache cannot be reached the figures are worked out for this request (and the failure
    logged): a dashboard is slower, never wrong or broken, while Redis is away.
    """
    seconds = figures_max_age()
    key = f"figures:{_VERSION}:{name}"
    if seconds > 0:
        try:
            cached = cache.get(key)
        except RedisError:
            logger.warning("Dashboard figures %s: cache unavailable, working them out now", name, exc_info=True)
            cached = None
        if isinstance(cached, Figures) and timezone.now() - cached.as_of < dt.timedelta(seconds=seconds):
            return cached
    as_of = timezone.now()
    figures = Figures(value=compute(), as_of=as_of, seconds=seconds)
    if seconds > 0:
        try:
            cache.set(key, figures, timeout=seconds)
        except RedisError:
            logger.warning("Dashboard figures %s: could not store them in the cache", name, exc_info=True)
    return figures
