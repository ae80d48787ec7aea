"""Benchmark: how close a migration wave runs to the service protection limits, with one and two app users.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres REDIS_URL=redis://127.0.0.1:6379/11 \\
        .venv/bin/python bench/migration_throughput.py --mailboxes 200 --workers 8

It starts the simulator (seeded with enough legacy mailboxes), scales its limits down to
``--max-requests`` per ``--window-seconds`` per application user and sets the portal's own budget to
the same (less the margin the portal keeps below Microsoft's limits), creates a throwaway PostgreSQL
database on the server ``DATABASE_URL`` points at (dropped afterwards), and runs a wave of
``--mailboxes`` legacy mailboxes with real RQ worker processes: once with one application user, then a
second wave of as many other mailboxes with two.

The default limit, 150 requests per 10 s, is Microsoft's 6,000 per 5 minutes scaled down far enough
that on a two-core machine the application users' budgets bind rather than the CPU (the workers, the
simulator, PostgreSQL and Redis share the cores), even with two users: only then can a second user
show what it adds. With ``--max-requests 300`` two users outrun two cores.

The last line printed is one JSON object: ``mailboxes_per_min`` (one application user),
``requests_per_mailbox`` (Dataverse requests the tenant received per migrated mailbox),
``limit_max_per_min`` (the most mailboxes a minute the limits allow at that many requests each),
``ratio`` (the first divided by the third; the target is at least 0.8), ``throttled_429`` (answers of
429 over both runs), ``two_users_speedup`` (mailboxes a minute with two application users divided by
with one), and what held each run back: ``bound_by`` is ``budget`` when the workers spent at least a
quarter of their time waiting for room in the budgets (``budget_wait_share``), else ``cpu`` when the
machine's CPU was at least 90 % busy (``machine_cpu_busy``, every process on it), else ``workers``
(more workers would go faster). ``worker_cpu_s_per_mailbox`` and ``simulator_cpu_s_per_mailbox`` are
the CPU seconds the worker processes and the simulator spent per mailbox.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

from common import DEFAULT_SERVER, ROOT, server_connection, with_database

DEFAULT_REDIS = "redis://127.0.0.1:6379/11"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mailboxes", type=int, default=200, help="mailboxes per wave (default 200)")
    parser.add_argument("--workers", type=int, default=8, help="RQ worker processes (default 8)")
    parser.add_argument("--max-requests", type=int, default=150, help="requests per window per app user (default 150)")
    parser.add_argument("--window-seconds", type=int, default=10, help="the limits' sliding window in seconds")
    args = parser.parse_args()
    if not 1 <= args.mailboxes <= 5000:
        parser.error("--mailboxes must be between 1 and 5,000")
    if not 1 <= args.workers <= 64:
        parser.error("--workers must be between 1 and 64")

    server_url = os.environ.get("DATABASE_URL") or DEFAULT_SERVER
    if urlsplit(server_url).scheme not in ("postgres", "postgresql"):
        parser.error("DATABASE_URL must name a PostgreSQL server (postgres://user@host:port/db)")
    redis_url = os.environ.get("REDIS_URL") or DEFAULT_REDIS
    database = f"bench_migration_{secrets.token_hex(4)}"
    work_dir = Path(tempfile.mkdtemp(prefix="bench-migration-"))
    admin = server_connection(server_url)
    admin.execute(f'CREATE DATABASE "{database}"')
    log(f"database {database} created on {urlsplit(server_url).hostname}; Redis {redis_url}")
    try:
        from tests.simulator import run_simulator

        # About a third of the seeded users are still on the Outlook client or the Email Router.
        seed = max(2000, args.mailboxes * 8)
        with run_simulator(work_dir / "sim", seed=str(seed), apps=2, timeout=1800) as sim:
            os.environ.update(sim.portal_env())
            os.environ.update(
                {
                    "DATABASE_URL": with_database(server_url, database),
                    "REDIS_URL": redis_url,
                    "DJANGO_SETTINGS_MODULE": "portal.settings.local",
                    "PORTAL_VAR_DIR": str(work_dir / "var"),
                    "SECRET_KEY": secrets.token_urlsafe(50),
                    "DATABASE_CONN_MAX_AGE": "0",
                    # The portal's own budget, matched to the tenant's scaled-down limits with the same small
                    # margin its defaults keep below Microsoft's (5,800 of 6,000).
                    "DATAVERSE_MAX_REQUESTS_PER_WINDOW": str(max(1, args.max_requests * 58 // 60)),
                    "DATAVERSE_WINDOW_SECONDS": str(args.window_seconds),
                }
            )
            os.environ.setdefault("LOG_LEVEL", "WARNING")
            result = run_benchmark(sim, args, work_dir)
    finally:
        try:
            from django.db import connections

            connections.close_all()
        except Exception as exc:  # Django may not have started; the drop below must still run
            log(f"closing connections: {exc}")
        admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        admin.close()
        shutil.rmtree(work_dir, ignore_errors=True)
        log(f"database {database} dropped")
    print(json.dumps(result))
    return 0


def _one_app(environ: dict[str, str]) -> dict[str, str]:
    return {key: value for key, value in environ.items() if not key.endswith("_2")}


def run_benchmark(sim, args, work_dir: Path) -> dict:
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    from portal.m365.config import load_m365_config
    from portal.policy.models import PolicySettings
    from portal.policy.services import policy_get

    call_command("migrate", verbosity=0)
    sim.control("PUT", "settings", {"test_enable_delay_seconds": 0.5})
    sim.control("PUT", "limits", {"max_requests": args.max_requests, "window_seconds": args.window_seconds})
    policy_get()
    PolicySettings.objects.filter(pk=1).update(test_enable_poll_seconds=1)
    rows = _legacy_rows(sim, 2 * args.mailboxes)
    if len(rows) < 2 * args.mailboxes:
        raise SystemExit(f"the simulated tenant has only {len(rows)} legacy mailboxes; ask for fewer")

    runs = []
    for apps, batch in ((1, rows[: args.mailboxes]), (2, rows[args.mailboxes :])):
        environ = dict(os.environ) if apps == 2 else _one_app(dict(os.environ))
        settings.M365 = load_m365_config(environ)
        runs.append(_run_wave(sim, batch, apps=apps, workers=args.workers, environ=environ, work_dir=work_dir))
        log(f"{apps} application user(s): {runs[-1]}")

    one, two = runs
    per_minute_limit = args.max_requests * 60 / args.window_seconds
    limit_max = per_minute_limit / one["requests_per_mailbox"]
    return {
        "mailboxes": args.mailboxes,
        "workers": args.workers,
        "max_requests": args.max_requests,
        "window_seconds": args.window_seconds,
        "mailboxes_per_min": round(one["mailboxes_per_min"], 1),
        "requests_per_mailbox": round(one["requests_per_mailbox"], 2),
        "limit_max_per_min": round(limit_max, 1),
        "ratio": round(one["mailboxes_per_min"] / limit_max, 2),
        "throttled_429": one["throttled_429"] + two["throttled_429"],
        "two_users_mailboxes_per_min": round(two["mailboxes_per_min"], 1),
        "two_users_speedup": round(two["mailboxes_per_min"] / one["mailboxes_per_min"], 2),
        "migrated": one["migrated"] + two["migrated"],
        "needs_attention": one["needs_attention"] + two["needs_attention"],
        "bound_by": one["bound_by"],
        "budget_wait_share": round(one["budget_wait_share"], 2),
        "machine_cpu_busy": round(one["machine_cpu_busy"], 2),
        "two_users_bound_by": two["bound_by"],
        "two_users_budget_wait_share": round(two["budget_wait_share"], 2),
        "two_users_machine_cpu_busy": round(two["machine_cpu_busy"], 2),
        "worker_cpu_s_per_mailbox": round(one["worker_cpu_s_per_mailbox"], 3),
        "simulator_cpu_s_per_mailbox": round(one["simulator_cpu_s_per_mailbox"], 3),
    }


def _legacy_rows(sim, count: int) -> list[dict]:
    """User mailboxes on the Outlook client or the Email Router whose person is in Exchange Online."""
    profiles = {
        row["name"]: row["emailserverprofileid"] for row in sim.control("GET", "rows/emailserverprofiles")["value"]
    }
    exo = profiles["Microsoft Exchange Online"]
    online = {
        (row.get("mail") or "").casefold()
        for row in sim.control("GET", "rows/graph_users")["value"]
        if row.get("mailbox_location") == "exchange_online"
    }
    users = {row["systemuserid"]: row for row in sim.control("GET", "rows/systemusers")["value"]}
    chosen = []
    for row in sim.control("GET", "rows/mailboxes")["value"]:
        if row.get("regardingobjecttypecode") != "systemuser" or row.get("isforwardmailbox"):
            continue
        if users.get(row.get("_regardingobjectid_value"), {}).get("isdisabled"):
            continue
        on_outlook = 1 in (row.get("incomingemaildeliverymethod"), row.get("outgoingemaildeliverymethod"))
        on_router = row.get("incomingemaildeliverymethod") == 2 and row.get("_emailserverprofile_value") != exo
        if (on_outlook or on_router) and (row.get("emailaddress") or "").casefold() in online:
            chosen.append(row)
        if len(chosen) == count:
            break
    return chosen


def _run_wave(sim, rows: list[dict], *, apps: int, workers: int, environ: dict[str, str], work_dir: Path) -> dict:
    import django_rq
    from django.conf import settings
    from django.utils import timezone

    from migration.models import (
        Classification,
        InventoryMailbox,
        OwnerType,
        Readiness,
        Wave,
        WaveMailbox,
        WaveMailboxState,
        WaveStatus,
    )
    from migration.services.migration_runs import wave_dispatch
    from portal.accounts.models import User
    from portal.m365.budget import dataverse_budget

    django_rq.get_queue("default").connection.flushdb()  # no budget or job left over from the last run
    now = timezone.now()
    lead, _ = User.objects.get_or_create(username="bench-lead")
    wave = Wave.objects.create(
        name=f"Benchmark wave ({apps} application users)",
        status=WaveStatus.RUNNING,
        created_by=lead,
        created_at=now,
        test_enable_cap=100_000,
        started_at=now,
    )
    for position, row in enumerate(rows, start=1):
        mailbox = InventoryMailbox.objects.create(
            dataverse_id=uuid.UUID(row["mailboxid"]),
            name=row.get("name") or "",
            email_address=row.get("emailaddress") or "",
            owner_type=OwnerType.USER,
            owner_dataverse_id=uuid.UUID(row["_regardingobjectid_value"]),
            classification=Classification.EMAIL_ROUTER,
            readiness=Readiness.READY,
            first_seen_at=now,
            last_seen_at=now,
        )
        WaveMailbox.objects.create(wave=wave, mailbox=mailbox, position=position)

    logs = [work_dir / f"worker-{apps}-{n}.log" for n in range(workers)]
    processes = [_start_worker(environ, log_path) for log_path in logs]
    since = sim.last_seq()
    try:
        time.sleep(2)  # the workers start (Django, RQ) before the clock does
        cpu_before = _cpu_seconds(sim, processes)
        started = time.monotonic()
        wave_dispatch(wave_id=wave.pk)
        finished_states = [
            WaveMailboxState.MIGRATED,
            WaveMailboxState.NEEDS_ATTENTION,
            WaveMailboxState.CANCELLED,
        ]
        deadline = started + 1800
        while WaveMailbox.objects.filter(wave=wave).exclude(state__in=finished_states).exists():
            if time.monotonic() > deadline:
                raise SystemExit("the wave did not finish within 30 minutes; see the worker logs")
            time.sleep(0.2)
        seconds = time.monotonic() - started
        cpu_after = _cpu_seconds(sim, processes)
    finally:
        for process in processes:
            _stop_worker(process)
    ledger = sim.ledger(since)
    dataverse = [entry for entry in ledger if entry["surface"] == "dataverse"]
    migrated = WaveMailbox.objects.filter(wave=wave, state=WaveMailboxState.MIGRATED).count()
    needs_attention = WaveMailbox.objects.filter(wave=wave, state=WaveMailboxState.NEEDS_ATTENTION).count()
    # The workers' own budget, as this process sees it (run_benchmark set the configuration to theirs).
    config = settings.M365
    budget = dataverse_budget(config)
    waited = sum(budget.waited(registration.client_id) for registration in config.registrations)
    wait_share = waited / (workers * seconds)
    busy = _busy_share(cpu_before["machine"], cpu_after["machine"])
    return {
        "seconds": round(seconds, 1),
        "mailboxes_per_min": len(rows) * 60 / seconds,
        "requests_per_mailbox": len(dataverse) / len(rows),
        "throttled_429": sum(1 for entry in dataverse if entry["status"] == 429),
        "apps_used": len({entry["app"] for entry in dataverse}),
        "migrated": migrated,
        "needs_attention": needs_attention,
        "worker_cpu_s_per_mailbox": (cpu_after["workers"] - cpu_before["workers"]) / len(rows),
        "simulator_cpu_s_per_mailbox": (cpu_after["simulator"] - cpu_before["simulator"]) / len(rows),
        "machine_cpu_busy": busy,
        "budget_wait_share": wait_share,
        "bound_by": "budget" if wait_share >= 0.25 else "cpu" if busy >= 0.9 else "workers",
    }


def _cpu_seconds(sim, processes: list[subprocess.Popen]) -> dict:
    """CPU seconds used so far by the workers and the simulator, and the machine's CPU times."""
    import psutil

    def used(pid: int) -> float:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.NoSuchProcess:
            return 0.0
        return times.user + times.system + times.children_user + times.children_system

    return {
        "workers": sum(used(process.pid) for process in processes),
        "simulator": used(sim.process.pid),
        "machine": psutil.cpu_times(),
    }


def _busy_share(before, after) -> float:
    """The share of the machine's CPU time (every core) that was not idle between two readings."""

    def idle(times) -> float:
        return times.idle + getattr(times, "iowait", 0)

    def total(times) -> float:
        # Linux counts guest time inside user time already.
        return sum(times) - getattr(times, "guest", 0) - getattr(times, "guest_nice", 0)

    spent = total(after) - total(before)
    return 1 - (idle(after) - idle(before)) / spent if spent > 0 else 0.0


def _start_worker(environ: dict[str, str], log_path: Path) -> subprocess.Popen:
    with log_path.open("w") as log_file:
        return subprocess.Popen(
            [sys.executable, "manage.py", "rqworker", "--with-scheduler", "default"],
            cwd=ROOT,
            env={**environ, "LOG_LEVEL": "WARNING"},
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _stop_worker(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
