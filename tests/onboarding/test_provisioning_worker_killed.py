"""A worker process killed in the middle of provisioning: another worker finishes, and nothing is done twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import pytest
from django.db import connection

from onboarding.models import MailboxRequest, ProvisioningRun, ProvisioningStep, RequestStatus, RunStatus, StepStatus
from portal.audit.models import AuditEvent
from tests.onboarding.provisioning_support import (
    WRITE_OPERATIONS,
    operations,
    prepare,
    provisioning_request,
    standard_members,
    start,
)
from tests.servers import ROOT, clean_env

# A SIGKILLed worker's RQ scheduler keeps its Redis lock until the lock's TTL runs out (about a minute).
SCHEDULER_LOCK = "rq:scheduler-lock:default"


def _database_url() -> str:
    """The test database (not the configured one): the worker process must see what this test writes."""
    db = connection.settings_dict
    password = f":{quote(db['PASSWORD'], safe='')}" if db.get("PASSWORD") else ""
    port = f":{db['PORT']}" if db.get("PORT") else ""
    return f"postgres://{quote(db['USER'] or '', safe='')}{password}@{db['HOST'] or '127.0.0.1'}{port}/{db['NAME']}"


def _start_worker(sim, log_path: Path) -> subprocess.Popen:
    env = clean_env(
        **sim.portal_env(),
        DJANGO_SETTINGS_MODULE="portal.settings.test",
        DATABASE_URL=_database_url(),
        REDIS_URL=os.environ["REDIS_URL"],
    )
    # Its own session (process group), so the worker and the scheduler process it starts can be stopped together.
    with log_path.open("w") as log:
        return subprocess.Popen(
            [sys.executable, "manage.py", "rqworker", "--with-scheduler", "default"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _stop(process: subprocess.Popen, sig: int) -> None:
    if process.poll() is None:
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=15)


def _job_process_of(worker: subprocess.Popen, run: ProvisioningRun) -> int | None:
    """The process running the job: its pid is in the run's lease, and it is ``worker`` itself
    (the portal's worker runs jobs in its own process) or a work horse ``worker`` forked."""
    run.refresh_from_db()
    try:
        pid = int(run.lease_owner.split(":")[1])
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (IndexError, ValueError, OSError):
        return None
    parent = int(stat.rsplit(")", 1)[1].split()[1])
    return pid if worker.pid in (pid, parent) else None


def _wait_for(condition: Callable[[], bool], *, timeout: float, what: str, logs: list[Path]) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {path.name}\n{path.read_text()[-4000:]}" for path in logs if path.exists())
            raise AssertionError(f"timed out waiting until {what}\n{tails}")
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_killed_worker_is_replaced_and_no_change_is_made_twice(
    m365_settings, fresh_sim, redis_queue, platform_admin, tmp_path
):
    started = time.monotonic()
    prepare(fresh_sim, test_enable_delay=1)
    fresh_sim.control("PUT", "faults", {"slow_ms": 400})  # slow enough to be caught in the middle
    members = standard_members(fresh_sim)
    request = provisioning_request(members=members)
    since = fresh_sim.last_seq()
    run = start(request, platform_admin)
    logs = [tmp_path / "worker-1.log", tmp_path / "worker-2.log"]

    first = _start_worker(fresh_sim, logs[0])
    try:
        # Kill it once the mailbox exists and it has begun granting access: after a step, before the end.
        made = ProvisioningStep.objects.filter(run=run, name="exchange_mailbox", status=StepStatus.SUCCEEDED)
        _wait_for(
            lambda: made.exists() and bool(operations(fresh_sim, since, "Add-MailboxPermission")),
            timeout=30,
            what="the first worker has made the mailbox and started on permissions",
            logs=logs,
        )
        doing_it = _job_process_of(first, run)
        assert doing_it is not None, "the run's lease must name the first worker's process"
        os.kill(doing_it, signal.SIGKILL)
    finally:
        _stop(first, signal.SIGKILL)

    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING  # abandoned: its lease is held by a dead worker
    assert run.steps.filter(status=StepStatus.SUCCEEDED).exists()
    assert run.steps.exclude(status=StepStatus.SUCCEEDED).exists()
    interrupted = run.steps.exclude(status=StepStatus.SUCCEEDED).order_by("order").first()

    redis_queue.connection.delete(SCHEDULER_LOCK)  # as its expiry would, a minute later
    fresh_sim.control("PUT", "faults", {"slow_ms": 0})
    second = _start_worker(fresh_sim, logs[1])
    try:
        _wait_for(
            lambda: ProvisioningRun.objects.get(pk=run.pk).status in (RunStatus.SUCCEEDED, RunStatus.NEEDS_ATTENTION),
            timeout=50,
            what="the second worker has finished the run",
            logs=logs,
        )
    finally:
        _stop(second, signal.SIGTERM)

    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.last_error
    assert MailboxRequest.objects.get(pk=request.pk).status == RequestStatus.ACTIVE
    assert run.steps.get(pk=interrupted.pk).attempts >= 2  # the interrupted step ran again, checking first
    resumed = AuditEvent.objects.filter(
        object_id=str(request.pk), action__in=["provisioning.run_recovered", "provisioning.run_taken_over"]
    )
    assert resumed.exists()

    calls = Counter(call["operation"] for call in operations(fresh_sim, since, *WRITE_OPERATIONS))
    assert calls["New-Mailbox"] == 1
    assert calls["Add-MailboxPermission"] == sum(1 for member in members if member["full_access"])
    assert calls["Add-RecipientPermission"] == sum(1 for member in members if member["send_as"])
    assert calls["Set-Mailbox"] == 1
    assert calls["POST queues"] == 1
    assert calls["PATCH queues"] == 1  # the address approval
    assert calls["PATCH mailboxes"] <= 2  # at most the delivery settings, and Test & Enable once
    # About 40 s: the lease (20 s) and the watchdog's margin dominate. Far longer means recovery is broken.
    assert time.monotonic() - started < 90
