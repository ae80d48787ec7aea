"""RQ entry points for onboarding: ids in, one service call, log and re-raise."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from portal import correlation
from portal.queue import periodic_schedule

logger = logging.getLogger(__name__)


def notification_send_job(notification_id: int, *, correlation_id: str = "") -> None:
    from onboarding.services.notifications import notification_send

    with correlation.bound(correlation_id or correlation.new_id()):
        try:
            notification_send(notification_id=notification_id)
        except Exception:
            logger.exception("notification %s failed", notification_id)
            raise


def provisioning_run_job(run_id: int, *, correlation_id: str = "") -> None:
    from onboarding.services.provisioning import provisioning_advance

    with correlation.bound(correlation_id or correlation.new_id()):
        try:
            provisioning_advance(run_id=run_id)
        except Exception:
            logger.exception("provisioning run %s failed", run_id)
            raise


def provisioning_watchdog_job(run_id: int, *, correlation_id: str = "") -> None:
    from onboarding.services.provisioning import provisioning_recover

    with correlation.bound(correlation_id or correlation.new_id()):
        try:
            provisioning_recover(run_id=run_id)
        except Exception:
            logger.exception("provisioning watchdog for run %s failed", run_id)
            raise


# The escalation job runs every few minutes under one fixed job id, so however often it is
# scheduled (by the command at every start, or by itself) there is only ever one next run.
ESCALATION_JOB_ID = "onboarding-approvals-escalate-overdue"
ESCALATION_INTERVAL = dt.timedelta(minutes=5)
ESCALATION_TIMEOUT = 300


def approvals_escalate_overdue_job(*, correlation_id: str = "", reschedule: bool = True) -> None:
    """Escalate overdue approval stages, having first scheduled the next run.

    Scheduling first keeps the cycle going even when this run fails.
    """
    from onboarding.services.approvals import approval_stages_escalate_overdue

    with correlation.bound(correlation_id or correlation.new_id()):
        try:
            if reschedule:
                approvals_escalation_schedule()
            escalated = approval_stages_escalate_overdue()
        except Exception:
            logger.exception("escalating overdue approval stages failed")
            raise
        if escalated:
            logger.info("escalated %s overdue approval stage(s)", escalated)


def approvals_escalation_schedule(
    *, delay: dt.timedelta = ESCALATION_INTERVAL, only_if_missing: bool = False, queue: Any = None
) -> bool:
    """Schedule the next escalation run, under its fixed job id, ``delay`` from now.

    With ``only_if_missing`` an existing schedule (or a run already queued) is left alone, so
    calling it again changes nothing. Returns whether a run was scheduled.
    """
    return periodic_schedule(
        approvals_escalate_overdue_job,
        job_id=ESCALATION_JOB_ID,
        job_timeout=ESCALATION_TIMEOUT,
        delay=delay,
        only_if_missing=only_if_missing,
        queue=queue,
    )
