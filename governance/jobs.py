"""RQ entry points for mailbox health and governance: ids in, one service call, log and re-raise."""

from __future__ import annotations

import datetime as dt
import logging
import zoneinfo
from typing import Any

from portal import correlation
from portal.queue import periodic_schedule

logger = logging.getLogger(__name__)


def health_sync_job(sync_id: int, *, correlation_id: str = "") -> None:
    from governance.services.health_sync import health_sync_run

    with correlation.bound(correlation_id or correlation.new_id()):
        try:
            health_sync_run(sync_id=sync_id)
        except Exception:
            logger.exception("health sync %s failed", sync_id)
            raise


def tracking_change_apply_job(change_id: int, *, correlation_id: str = "") -> None:
    from governance.services.tracking import tracking_change_apply

    with correlation.bound(correlation_id or correlation.new_id()):
        try:
            tracking_change_apply(change_id=change_id)
        except Exception:
            logger.exception("tracking change %s failed", change_id)
            raise


# The health sync runs every 15 minutes, and the owners' digest every Monday at 07:00 London time,
# each under one fixed job id so there is only ever one next run.
HEALTH_SYNC_JOB_ID = "governance-health-sync"
HEALTH_SYNC_INTERVAL = dt.timedelta(minutes=15)
DIGEST_JOB_ID = "governance-weekly-digest"
DIGEST_AT = dt.time(7, 0)
DIGEST_ZONE = zoneinfo.ZoneInfo("Europe/London")
PERIODIC_TIMEOUT = 600


def health_sync_periodic_job(*, correlation_id: str = "", reschedule: bool = True) -> None:
    """Ask for a health sync, having first scheduled the next (so a failure does not stop the cycle)."""
    from django.conf import settings

    from governance.services.health_sync import health_sync_request

    with correlation.bound(correlation_id or correlation.new_id()):
        try:
            if reschedule:
                health_sync_schedule()
            if not settings.M365.enabled:
                logger.info("health sync skipped: the Microsoft 365 integration is off")
                return
            sync = health_sync_request(actor=None)
        except Exception:
            logger.exception("the periodic health sync could not be requested")
            raise
        logger.info("periodic health sync: run %s (%s)", sync.pk, sync.status)


def health_sync_schedule(
    *, delay: dt.timedelta = HEALTH_SYNC_INTERVAL, only_if_missing: bool = False, queue: Any = None
) -> bool:
    return periodic_schedule(
        health_sync_periodic_job,
        job_id=HEALTH_SYNC_JOB_ID,
        job_timeout=PERIODIC_TIMEOUT,
        delay=delay,
        only_if_missing=only_if_missing,
        queue=queue,
    )


def next_digest(after: dt.datetime) -> dt.datetime:
    """The next Monday 07:00 in London after ``after``."""
    local = after.astimezone(DIGEST_ZONE)
    day = local.date() + dt.timedelta(days=(7 - local.weekday()) % 7)
    candidate = dt.datetime.combine(day, DIGEST_AT, tzinfo=DIGEST_ZONE)
    if candidate <= local:
        candidate = dt.datetime.combine(day + dt.timedelta(days=7), DIGEST_AT, tzinfo=DIGEST_ZONE)
    return candidate.astimezone(dt.UTC)


def digest_weekly_job(*, correlation_id: str = "", reschedule: bool = True) -> None:
    from governance.services.digest import digests_send

    with correlation.bound(correlation_id or correlation.new_id()):
        try:
            if reschedule:
                digest_schedule()
            digests_send()
        except Exception:
            logger.exception("the weekly digest failed")
            raise


def digest_schedule(*, only_if_missing: bool = False, queue: Any = None) -> dt.datetime | None:
    when = next_digest(dt.datetime.now(dt.UTC))
    scheduled = periodic_schedule(
        digest_weekly_job,
        job_id=DIGEST_JOB_ID,
        job_timeout=PERIODIC_TIMEOUT,
        at=when,
        only_if_missing=only_if_missing,
        queue=queue,
    )
    return when if scheduled else None
