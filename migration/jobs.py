"""RQ entry points for migration: ids in, one service call, log and re-raise."""

from __future__ import annotations

import datetime as dt
import logging
import zoneinfo
from typing import Any

from portal import correlation
from portal.queue import periodic_schedule

logger = logging.getLogger(__name__)

# Nightly discovery, under one fixed job id so there is only ever one next run however often
# it is scheduled (by schedule_periodic_jobs at every start, or by the run before).
NIGHTLY_DISCOVERY_JOB_ID = "migration-inventory-nightly-discovery"
NIGHTLY_DISCOVERY_AT = dt.time(2, 0)
NIGHTLY_DISCOVERY_ZONE = zoneinfo.ZoneInfo("Europe/London")
NIGHTLY_DISCOVERY_TIMEOUT = 120  # it only queues the discovery run, which has its own job


def inventory_sync_job(sync_id: int, *, correlation_id: str = "") -> None:
    from migration.services.discovery import inventory_sync_run

    with correlation.bound(correlation_id or correlation.new_id()):
        try:
            inventory_sync_run(sync_id=sync_id)
        except Exception:
            logger.exception("inventory discovery %s failed", sync_id)
            raise


def next_nightly_discovery(after: dt.datetime) -> dt.datetime:
    """The next 02:00 in London after ``after`` (02:00 exists exactly once every day there)."""
    local = after.astimezone(NIGHTLY_DISCOVERY_ZONE)
    candidate = dt.datetime.combine(local.date(), NIGHTLY_DISCOVERY_AT, tzinfo=NIGHTLY_DISCOVERY_ZONE)
    if candidate <= local:
        candidate = dt.datetime.combine(
            local.date() + dt.timedelta(days=1), NIGHTLY_DISCOVERY_AT, tzinfo=NIGHTLY_DISCOVERY_ZONE
        )
    return candidate.astimezone(dt.UTC)


def inventory_nightly_discovery_job(*, correlation_id: str = "", reschedule: bool = True) -> None:
    """Ask for an incremental discovery, having first scheduled tomorrow night's.

    Scheduling first keeps the cycle going even when this night's request fails.
    """
    from django.conf import settings

    from migration.models import SyncKind
    from migration.services.discovery import inventory_sync_request

    with correlation.bound(correlation_id or correlation.new_id()):
        try:
            if reschedule:
                inventory_nightly_discovery_schedule()
            if not settings.M365.enabled:
                logger.info("nightly discovery skipped: the Microsoft 365 integration is off")
                return
            sync = inventory_sync_request(actor=None, kind=SyncKind.INCREMENTAL)
        except Exception:
            logger.exception("nightly inventory discovery could not be requested")
            raise
        logger.info("nightly inventory discovery: run %s (%s)", sync.pk, sync.status)


def inventory_nightly_discovery_schedule(*, only_if_missing: bool = False, queue: Any = None) -> dt.datetime | None:
    """Schedule the next nightly discovery, under its fixed job id, at the next 02:00 London time.

    With ``only_if_missing`` an existing schedule (or a run already queued) is left alone, so calling
    it again changes nothing. Returns when the next run was scheduled for, or ``None`` when left alone.
    """
    when = next_nightly_discovery(dt.datetime.now(dt.UTC))
    scheduled = periodic_schedule(
        inventory_nightly_discovery_job,
        job_id=NIGHTLY_DISCOVERY_JOB_ID,
        job_timeout=NIGHTLY_DISCOVERY_TIMEOUT,
        at=when,
        only_if_missing=only_if_missing,
        queue=queue,
    )
    return when if scheduled else None


def router_import_job(import_id: int, *, correlation_id: str = "") -> None:
    from migration.services.router_import import router_import_run

    with correlation.bound(correlation_id or correlation.new_id()):
        try:
            router_import_run(import_id=import_id)
        except Exception:
            logger.exception("router configuration import %s failed", import_id)
            raise


def wave_dispatch_job(wave_id: int, *, correlation_id: str = "") -> None:
    """Queue the runs of a wave's mailboxes that may start now; see ``wave_dispatch``."""
    from migration.services.migration_runs import wave_dispatch

    with correlation.bound(correlation_id or correlation.new_id()):
        try:
            wave_dispatch(wave_id=wave_id)
        except Exception:
            logger.exception("dispatching wave %s failed", wave_id)
            raise


def preflight_run_job(preflight_id: int, *, correlation_id: str = "") -> None:
    from migration.services.preflight import preflight_run

    with correlation.bound(correlation_id or correlation.new_id()):
        try:
            preflight_run(preflight_id=preflight_id)
        except Exception:
            logger.exception("pre-flight %s failed", preflight_id)
            raise


def migration_run_job(entry_id: int, *, correlation_id: str = "") -> None:
    """Migrate one wave mailbox as far as it can go now; see ``migration_run``."""
    from migration.services.migration_runs import migration_run

    with correlation.bound(correlation_id or correlation.new_id()):
        try:
            migration_run(entry_id=entry_id)
        except Exception:
            logger.exception("migrating wave mailbox %s failed", entry_id)
            raise


def migration_rollback_job(entry_id: int, *, correlation_id: str = "") -> None:
    """Restore one wave mailbox's snapshot; see ``migration_rollback_run``."""
    from migration.services.migration_runs import migration_rollback_run

    with correlation.bound(correlation_id or correlation.new_id()):
        try:
            migration_rollback_run(entry_id=entry_id)
        except Exception:
            logger.exception("rolling back wave mailbox %s failed", entry_id)
            raise


def migration_watchdog_job(entry_id: int, *, correlation_id: str = "") -> None:
    """Queue a wave mailbox's run again if its worker stopped renewing its lease."""
    from migration.services.migration_runs import migration_recover

    with correlation.bound(correlation_id or correlation.new_id()):
        try:
            migration_recover(entry_id=entry_id)
        except Exception:
            logger.exception("checking on wave mailbox %s failed", entry_id)
            raise
