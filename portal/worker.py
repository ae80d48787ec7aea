"""The portal's RQ worker: jobs run one after another in the worker's own long-lived process."""

from __future__ import annotations

from django.db import close_old_connections
from rq.worker import SimpleWorker


class PortalWorker(SimpleWorker):
    """``rqworker`` without a fork per job.

    RQ's default worker forks a fresh process for every job, and each one then pays again for
    what the worker already has: Django's start-up, a database connection, the Entra ID discovery
    document and a token per resource, and TLS handshakes with every Microsoft 365 host. Running
    jobs in the worker's process keeps all of that warm (MSAL's token cache and the HTTP sessions
    live for the process), which is most of a short migration step's cost.

    What forking gave is kept where it matters: a job's timeout still interrupts it (RQ's
    alarm-based death penalty runs in this process), a job that fails leaves the worker running,
    and database connections are checked before and after every job as Django does around a
    request, so a connection a job broke or left open is not handed to the next one. A worker
    killed mid-job loses only that job, which the services' leases and checked steps recover.
    """

    def execute_job(self, job, queue):  # type: ignore[no-untyped-def]
        close_old_connections()
        try:
            return super().execute_job(job, queue)
        finally:
            close_old_connections()
