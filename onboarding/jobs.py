"""RQ entry points for onboarding: ids in, one service call, log and re-raise."""

from __future__ import annotations

import logging

from portal import correlation

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


def approvals_escalate_overdue_job(*, correlation_id: str = "") -> None:
    from onboarding.services.approvals import approval_stages_escalate_overdue

    with correlation.bound(correlation_id or correlation.new_id()):
        try:
            approval_stages_escalate_overdue()
        except Exception:
            logger.exception("escalating overdue approval stages failed")
            raise
