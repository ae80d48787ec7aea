"""The portal's RQ worker: each forked job starts with the Microsoft 365 tokens its parent holds."""

from __future__ import annotations

import logging
import time

from django.conf import settings
from rq.worker import Worker

from portal.m365.errors import M365Error
from portal.m365.tokens import tokens_warm

logger = logging.getLogger(__name__)

# MSAL hands out a cached token until it is within minutes of expiring; looking again this often
# keeps what the children inherit fresh. After a failure, try again sooner.
REWARM_SECONDS = 15 * 60
RETRY_SECONDS = 60


class PortalWorker(Worker):
    """``rqworker`` with tokens fetched once in the long-lived parent and inherited by every job.

    Without it every job (a fresh forked process) asks Entra ID for the discovery document and a
    token per resource before doing any work. A job whose inherited token is missing or expired
    simply fetches its own, so a failure here only costs speed.
    """

    _next_warm = 0.0

    def execute_job(self, job, queue):  # type: ignore[no-untyped-def]
        self._warm_tokens()
        return super().execute_job(job, queue)

    def _warm_tokens(self) -> None:
        config = settings.M365
        now = time.monotonic()
        if not config.enabled or now < self._next_warm:
            return
        try:
            tokens_warm(config)
        except M365Error as error:
            logger.warning("could not fetch Microsoft 365 tokens ahead of jobs: %s", error)
            self._next_warm = now + RETRY_SECONDS
            return
        self._next_warm = now + REWARM_SECONDS
