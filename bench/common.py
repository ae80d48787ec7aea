"""Pieces the benchmark scripts share.

A throwaway PostgreSQL database beside the one configured, a realistic inventory
of any size, the portal served by gunicorn with production settings, and a
closed-loop load generator that runs in its own process.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the portal's packages, for every benchmark

from portal.m365.simulator.seed import FIRST_NAMES, LAST_NAMES, QUEUE_MIX, USER_MIX  # noqa: E402

DEFAULT_SERVER = "postgres://postgres@127.0.0.1:5432/postgres"


def with_database(url: str, name: str) -> str:
    """``url`` pointing at database ``name`` on the same server."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


def server_connection(server_url: str):
    """An autocommit connection to the server (for CREATE and DROP DATABASE)."""
    import psycopg

    parts = urlsplit(server_url)
    return psycopg.connect(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 5432,
        user=parts.username or "postgres",
        password=parts.password or None,
        dbname=(parts.path or "/postgres").lstrip("/") or "postgres",
        autocommit=True,
    )


def create_database(server_url: str, name: str) -> None:
    with server_connection(server_url) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')


def drop_database(server_url: str, name: str) -> None:
    with server_connection(server_url) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- a realistic inventory -------------------------------------------------------------------


BUSINESS_UNITS = (
    "Corporate Services",
    "Finance",
    "Digital and Technology",
    "Operations",
    "Policy and Strategy",
    "Customer Services",
    "Legal",
    "People and HR",
)
FUNCTIONS = (
    "Accounts payable",
    "Appointments",
    "Casework",
    "Complaints",
    "Contracts",
    "Correspondence",
    "Data protection",
    "Enquiries",
    "Estates",
    "Grants",
    "Licensing",
    "Payroll",
    "Press office",
    "Procurement",
    "Recruitment",
    "Service desk",
    "Stakeholder engagement",
    "Training",
)
MAILBOX_COLUMNS = (
    "dataverse_id",
    "name",
    "email_address",
    "owner_type",
    "owner_dataverse_id",
    "owner_name",
    "owner_disabled",
    "business_unit_id",
    "business_unit_name",
    "team_name",
    "profile_id",
    "profile_name",
    "incoming_delivery",
    "outgoing_delivery",
    "act_delivery",
    "email_approval",
    "incoming_status",
    "outgoing_status",
    "act_status",
    "is_forward_mailbox",
    "open_error_alerts",
    "exchange_presence",
    "user_purpose",
    "presence_checked_at",
    "classification",
    "readiness",
    "blockers",
    "explanation",
    "dataverse_modified_on",
    "first_seen_at",
    "last_seen_at",
    "last_sync_id",
    "removed_at",
)


def _facts_for(rng: random.Random, klass: str, *, is_queue: bool, profiles: dict[str, uuid.UUID]) -> dict:
    """Dataverse facts that put a mailbox in ``klass`` (the portal's rules decide the final verdict)."""
    act_sss = 2 if is_queue else 1
    facts = {
        "incoming_delivery": 2,
        "outgoing_delivery": 2,
        "act_delivery": act_sss,
        "email_approval": 1 if rng.random() < 0.9 else rng.choice((0, 2, 3)),
        "incoming_status": 1,
        "outgoing_status": 1,
        "act_status": 1 if not is_queue else 0,
        "is_forward_mailbox": False,
        "profile": "exo",
        "exchange_presence": "exchange_online",
        "owner_disabled": False,
        "open_error_alerts": 0 if rng.random() < 0.85 else rng.randint(1, 6),
    }
    if klass == "outlook_client":
        facts["incoming_delivery"], facts["outgoing_delivery"] = rng.choice(((1, 1), (1, 2), (2, 1)))
        facts.update(act_delivery=0, profile=rng.choice(("exo", None)), incoming_status=0, outgoing_status=0)
    elif klass == "email_router":
        facts.update(profile=rng.choice(("pop3", None)), incoming_status=0, outgoing_status=0, act_delivery=2)
    elif klass == "forward_mailbox":
        facts.update(incoming_delivery=3, profile=None, incoming_status=0)
    elif klass == "sss_wrong_profile":
        facts.update(profile="hybrid", incoming_status=rng.choice((1, 2)))
    elif klass == "not_in_exchange_online":
        facts.update(exchange_presence=rng.choice(("not_in_exchange_online", "not_found")), incoming_status=2)
    elif klass == "no_email":
        if rng.random() < 0.5:
            facts.update(owner_disabled=True)
        else:
            facts.update(incoming_delivery=0, outgoing_delivery=0, act_delivery=2, profile=None)
    facts["profile_id"] = profiles[facts["profile"]] if facts["profile"] else None
    return facts


def load_inventory(count: int, *, seed: int = 20260) -> dict:
    """Write ``count`` mailboxes with COPY, plus sources, links, annotations and history; return probe values."""
    from django.contrib.auth.models import Group
    from django.db import connection
    from django.utils import timezone

    from migration.classification import MailboxFacts, classify
    from migration.models import (
        InventoryAnnotation,
        InventoryChange,
        InventoryMailbox,
        InventorySync,
        LegacyMailboxLink,
        LegacySource,
        RouterImport,
    )
    from portal.accounts.models import User
    from portal.accounts.roles import ROLE_GROUP_NAMES, Role
    from portal.accounts.services import roles_sync

    rng = random.Random(seed)  # noqa: S311 - repeatable test data, not secrets
    now = timezone.now()
    roles_sync()
    lead = User.objects.create_user(
        username="bench-lead", password=secrets.token_urlsafe(24), first_name="Tom", last_name="Fletcher"
    )
    lead.groups.set([Group.objects.get(name=ROLE_GROUP_NAMES[Role.MIGRATION_LEAD])])
    sync = InventorySync.objects.create(
        kind="full",
        status="succeeded",
        requested_by=lead,
        requested_at=now - timedelta(hours=2),
        started_at=now - timedelta(hours=2),
        finished_at=now - timedelta(hours=1, minutes=40),
        mailboxes_seen=count,
        mailboxes_changed=count,
    )
    profiles = {"exo": uuid.uuid4(), "hybrid": uuid.uuid4(), "pop3": uuid.uuid4()}
    profile_names = {
        profiles["exo"]: "Microsoft Exchange Online",
        profiles["hybrid"]: "Exchange 2016 on-premises (hybrid)",
        profiles["pop3"]: "Legacy POP3/SMTP (Email Router era)",
    }
    units = [(uuid.uuid4(), name) for name in BUSINESS_UNITS]
    teams = [(unit, f"{unit[1]} / {function}") for unit in units for function in FUNCTIONS]

    def rows():
        used: set[str] = set()
        for index in range(count):
            kind = rng.random()
            is_queue = kind < 0.12
            is_forward = 0.12 <= kind < 0.125
            unit, team = rng.choice(teams)
            if is_forward:
                name, owner_type = f"Forward mailbox {index}", "none"
                address, klass = f"crm-forward-{index}@example.gov.uk", "forward_mailbox"
            elif is_queue:
                function = rng.choice(FUNCTIONS)
                name, owner_type, klass = f"{unit[1]} {function.lower()} {index}", "queue", None
                address = f"{unit[1]}-{function}-{index}".lower().replace(" ", "-") + "@example.gov.uk"
            else:
                first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
                name, owner_type, klass = f"{first} {last}", "user", None
                local = f"{first}.{last}".lower()
                address = f"{local if local not in used else f'{local}{index}'}@example.gov.uk"
                used.add(local)
            if klass is None:
                mix = QUEUE_MIX if is_queue else USER_MIX
                klass = rng.choices(list(mix), weights=list(mix.values()))[0]
            facts = _facts_for(rng, klass, is_queue=is_queue, profiles=profiles)
            if is_forward:
                facts.update(is_forward_mailbox=True, incoming_delivery=2, outgoing_delivery=0, act_delivery=2)
            verdict = classify(
                MailboxFacts(
                    email_address=address,
                    owner_type=owner_type,
                    owner_disabled=facts["owner_disabled"],
                    incoming_delivery=facts["incoming_delivery"],
                    outgoing_delivery=facts["outgoing_delivery"],
                    act_delivery=facts["act_delivery"],
                    email_approval=facts["email_approval"],
                    incoming_status=facts["incoming_status"],
                    outgoing_status=facts["outgoing_status"],
                    is_forward_mailbox=facts["is_forward_mailbox"],
                    profile_id=str(facts["profile_id"]) if facts["profile_id"] else None,
                    profile_is_exchange_online=facts["profile_id"] == profiles["exo"],
                    profile_is_legacy=facts["profile_id"] == profiles["pop3"],
                    exchange_presence=facts["exchange_presence"],
                    open_error_alerts=facts["open_error_alerts"],
                    listed_by_router=klass == "email_router",
                )
            )
            has_team = is_queue or rng.random() < 0.7
            seen = now - timedelta(days=rng.randint(0, 400))
            yield (
                uuid.uuid4(),
                name,
                address,
                owner_type,
                None if is_forward else uuid.uuid4(),
                "" if is_forward else name,
                facts["owner_disabled"],
                unit[0],
                unit[1],
                team if has_team else "",
                facts["profile_id"],
                profile_names.get(facts["profile_id"], ""),
                facts["incoming_delivery"],
                facts["outgoing_delivery"],
                facts["act_delivery"],
                facts["email_approval"],
                facts["incoming_status"],
                facts["outgoing_status"],
                facts["act_status"],
                facts["is_forward_mailbox"],
                facts["open_error_alerts"],
                facts["exchange_presence"],
                "shared" if is_queue or is_forward else "user",
                now - timedelta(hours=3),
                verdict.classification,
                verdict.readiness,
                json.dumps(verdict.blocker_dicts()),
                verdict.explanation,
                seen,
                seen,
                now - timedelta(hours=2),
                sync.pk,
                now - timedelta(days=rng.randint(1, 30)) if rng.random() < 0.01 else None,
            )

    table = InventoryMailbox._meta.db_table
    with (
        connection.cursor() as cursor,
        cursor.cursor.copy(f"COPY {table} ({', '.join(MAILBOX_COLUMNS)}) FROM STDIN") as copy,
    ):
        for row in rows():
            copy.write_row(row)

    # Two Email Router servers and an Outlook deployment, listing the router-era mailboxes.
    sources = [
        LegacySource.objects.create(kind=kind, name=name, created_at=now, created_by=lead)
        for kind, name in (
            ("email_router", "CRMROUTER01"),
            ("email_router", "CRMROUTER02"),
            ("outlook_client", "Outlook deployment (Finance)"),
        )
    ]
    imports = [
        RouterImport.objects.create(
            source=source,
            status="succeeded",
            file_name="Microsoft.Crm.Tools.EmailAgent.xml",
            file_size=10,
            file_sha256="0" * 64,
            content=b"<Configuration/>",
            uploaded_by=lead,
            uploaded_at=now,
            finished_at=now,
        )
        for source in sources
    ]
    links = []
    for index, (pk, address, klass) in enumerate(
        InventoryMailbox.objects.filter(classification__in=["email_router", "outlook_client"])
        .order_by("id")
        .values_list("id", "email_address", "classification")
        .iterator(chunk_size=5000)
    ):
        at = 2 if klass == "outlook_client" else index % 2
        links.append(
            LegacyMailboxLink(
                source=sources[at],
                router_import=imports[at],
                mailbox_id=pk,
                email_address=address,
                object_type="user",
                directions=["incoming", "outgoing"],
                profile_names=["Incoming POP3", "Outgoing SMTP"],
            )
        )
    LegacyMailboxLink.objects.bulk_create(links, batch_size=5000)

    sample = list(InventoryMailbox.objects.order_by("?").values_list("id", flat=True)[: max(1, count // 20)])
    InventoryAnnotation.objects.bulk_create(
        [
            InventoryAnnotation(
                mailbox_id=pk, notes="Checked with the team.", excluded=pk % 3 == 0, updated_at=now, updated_by=lead
            )
            for pk in sample[: len(sample) // 2]
        ],
        batch_size=5000,
    )
    InventoryChange.objects.bulk_create(
        [
            InventoryChange(
                mailbox_id=pk,
                sync=sync,
                at=now - timedelta(days=step),
                changes={"incoming_delivery": [1, 2], "open_error_alerts": [step, step + 1]},
            )
            for pk in sample
            for step in range(3)
        ],
        batch_size=5000,
    )
    busiest = sample[0]
    InventoryChange.objects.bulk_create(
        [
            InventoryChange(
                mailbox_id=busiest, sync=sync, at=now - timedelta(hours=h), changes={"open_error_alerts": [h, h]}
            )
            for h in range(400)
        ]
    )
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")

    team = (
        InventoryMailbox.objects.filter(classification="email_router", removed_at__isnull=True)
        .exclude(team_name="")
        .values_list("team_name", flat=True)
        .first()
    )
    return {"lead_id": lead.pk, "team": team, "mailbox_id": busiest}


def signed_in_cookie(user_id: int) -> str:
    """A session for the user, exactly as signing in would store it."""
    from importlib import import_module

    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY

    from portal.accounts.models import User

    user = User.objects.get(pk=user_id)
    store = import_module(settings.SESSION_ENGINE).SessionStore()
    store[SESSION_KEY] = str(user.pk)
    store[BACKEND_SESSION_KEY] = settings.AUTHENTICATION_BACKENDS[0]
    store[HASH_SESSION_KEY] = user.get_session_auth_hash()
    store.save()
    return f"{settings.SESSION_COOKIE_NAME}={store.session_key}"


# --- the portal under gunicorn, on a throwaway database --------------------------------------


@dataclass
class BenchPortal:
    """The throwaway database and the environment every process of one benchmark run shares."""

    name: str
    env: dict[str, str]
    work_dir: Path


# Production settings, except that static files come from the built assets (the manifest storage
# needs collectstatic, which is not what is measured) and cache keys carry the run's name, so a
# run shares nothing with another and removes exactly its own keys.
_SETTINGS = (
    "from portal.settings.production import *  # noqa: F403\n"
    "STORAGES = {{**STORAGES, 'staticfiles': "
    "{{'BACKEND': 'django.contrib.staticfiles.storage.StaticFilesStorage'}}}}\n"
    "WHITENOISE_USE_FINDERS = True\n"
    "CACHES['default']['KEY_PREFIX'] = {name!r}\n"
)


@contextmanager
def throwaway_portal(prefix: str) -> Iterator[BenchPortal]:
    """A new database named ``<prefix>_<random>``, migrated, with Django set up in this process.

    The database and the run's Redis keys are removed at the end, whatever happens.
    """
    server_url = os.environ.get("DATABASE_URL", DEFAULT_SERVER)
    name = f"{prefix}_{secrets.token_hex(4)}"
    work_dir = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
    (work_dir / f"{name}_settings.py").write_text(_SETTINGS.format(name=name))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), str(work_dir), os.environ.get("PYTHONPATH", "")])),
        "DJANGO_SETTINGS_MODULE": f"{name}_settings",
        "DATABASE_URL": with_database(server_url, name),
        "SECRET_KEY": secrets.token_urlsafe(64),
        "ALLOWED_HOSTS": "127.0.0.1",
        "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
        "SECURE_SSL_REDIRECT": "false",
        "LOG_LEVEL": "WARNING",
        "DATABASE_CONN_MAX_AGE": "60",
    }
    create_database(server_url, name)
    try:
        os.environ.update(env)
        sys.path[:0] = [str(ROOT), str(work_dir)]
        import django

        django.setup()
        from django.core.management import call_command

        started = time.perf_counter()
        call_command("migrate", verbosity=0)
        print(f"database {name} migrated in {time.perf_counter() - started:.1f} s", flush=True)
        yield BenchPortal(name=name, env=env, work_dir=work_dir)
    finally:
        try:
            from django.db import connections

            connections.close_all()
        except Exception:  # noqa: S110 - Django may not have started; the drop below still runs
            pass
        _forget_cached(env["REDIS_URL"], name)
        drop_database(server_url, name)
        shutil.rmtree(work_dir, ignore_errors=True)
        print(f"database {name} dropped", flush=True)


def _forget_cached(redis_url: str, prefix: str) -> None:
    """Delete the run's cache keys (Django spells them ``<prefix>:<version>:<key>``), nothing else."""
    import redis

    try:
        client = redis.Redis.from_url(redis_url)
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    except redis.RedisError as error:
        print(f"could not remove the run's cache keys: {error}", flush=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_up(port: int, server: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if http_get("127.0.0.1", port, "/healthz", "")[0] == 200:
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("gunicorn did not answer /healthz in time")


@contextmanager
def served_by_gunicorn(
    portal: BenchPortal, *, workers: int, worker_class: str = "sync", threads: int = 1
) -> Iterator[int]:
    """The portal served on a free loopback port (yielded), stopped at the end."""
    from django.db import connections

    connections.close_all()  # the workers fork from a clean process, not from this one's connection
    port = _free_port()
    log_path = portal.work_dir / "gunicorn.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(  # noqa: S603 - our own interpreter and fixed arguments
            [
                sys.executable,
                "-m",
                "gunicorn",
                "portal.wsgi",
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                str(workers),
                "--worker-class",
                worker_class,
                "--threads",
                str(threads),
                "--no-control-socket",
                "--graceful-timeout",
                "5",
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            env=portal.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_until_up(port, server, log_path)
            yield port
        finally:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()


# --- measuring ---------------------------------------------------------------------------------


def http_get(host: str, port: int, path: str, cookie: str) -> tuple[int, float, bytes]:
    """Status, milliseconds and body of one GET on a new connection (as a browser's first request)."""
    started = time.perf_counter()
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request("GET", path, headers={"Cookie": cookie, "Host": host})
        response = conn.getresponse()
        body = response.read()
        return response.status, (time.perf_counter() - started) * 1000, body
    finally:
        conn.close()


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile: a value that was really measured."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def latency_stats(outcomes: list[tuple[bool, float]], wall_s: float) -> dict:
    """p50/p95/p99 of the successful requests, successful requests a second, and the failures."""
    latencies = [ms for ok, ms in outcomes if ok]
    errors = sum(1 for ok, _ in outcomes if not ok)
    return {
        "p50_ms": round(statistics.median(latencies), 1) if latencies else 0.0,
        "p95_ms": round(percentile(latencies, 0.95), 1),
        "p99_ms": round(percentile(latencies, 0.99), 1),
        "rps": round(len(latencies) / wall_s, 1) if wall_s else 0.0,
        "errors": errors,
    }


def page_ok(host: str, port: int, path: str, cookie: str, marker: str) -> tuple[bool, float]:
    """One request: did the page answer 200 with ``marker`` in it, and how long did it take."""
    try:
        status, ms, body = http_get(host, port, path, cookie)
    except OSError:
        return False, 0.0
    return status == 200 and marker.encode() in body, ms


def closed_loop(request, *, clients: int, requests: int) -> tuple[list[tuple[bool, float]], float]:
    """``clients`` threads each sending the next request as soon as their last answered, no think time,
    until ``requests`` have been sent in all; the outcomes and the wall time."""
    outcomes: list[tuple[bool, float]] = []
    sent = iter(range(requests))
    lock = threading.Lock()

    def client() -> None:
        while True:
            with lock:
                if next(sent, None) is None:
                    return
            outcome = request()
            with lock:
                outcomes.append(outcome)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes, time.perf_counter() - started


def run_client_process(script: str, spec: dict) -> dict:
    """Run ``script --client`` in a second process with ``spec`` on stdin; its last line, parsed."""
    client = subprocess.run(  # noqa: S603 - our own interpreter and one of our scripts
        [sys.executable, script, "--client"],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return json.loads(client.stdout.strip().splitlines()[-1])


def print_page_figures(results: dict[str, dict], *, width: int) -> int:
    """One line per page, then the JSON line; the exit status: 0 when no page had an error."""
    for page, figures in results.items():
        print(
            f"{page:{width}} p50 {figures['p50_ms']:7.1f} ms  p95 {figures['p95_ms']:7.1f} ms  "
            f"p99 {figures['p99_ms']:7.1f} ms  {figures['rps']:6.1f} req/s  errors {figures['errors']}"
        )
    print(json.dumps({"pages": results}), flush=True)
    return 0 if all(figures["errors"] == 0 for figures in results.values()) else 1
