"""RQ entry points for the audit trail: ids in, one service call, log and re-raise."""

from __future__ import annotations

import logging

from portal import correlation

from . import services

logger = logging.getLogger(__name__)


def audit_verification_job(verification_id: int, *, correlation_id: str = "") -> None:
    with correlation.bound(correlation_id or correlation.new_id()):
        try:
            services.audit_verification_run(verification_id=verification_id)
        except Exception:
            logger.exception("audit verification %s failed", verification_id)
            raise
