"""Benchmark: one full inventory discovery against a freshly seeded tenant simulator.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres REDIS_URL=redis://127.0.0.1:6379/0 \\
        .venv/bin/python bench/inventory_sync.py --mailboxes 20000

It starts the simulator seeded with N mailboxes, creates a throwaway PostgreSQL database on the
server ``DATABASE_URL`` points at (and drops it afterwards), runs one full discovery in this
process, measuring wall time and peak resident memory, then makes the same HTTP requests again in a
plain sequential loop (the same Dataverse pages through ``@odata.nextLink`` and the same Graph
``$batch`` requests, with no processing and no writes). The last line printed is one JSON object:
``mailboxes``, ``seconds``, ``mailboxes_per_s``, ``peak_rss_mb``, ``raw_fetch_seconds`` and
``ratio_to_raw_fetch`` (raw fetch time divided by discovery time: above 1 means discovery beats a
plain sequential loop over the same requests).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

from common import DEFAULT_SERVER, server_connection, with_database

DEFAULT_REDIS = "redis://127.0.0.1:6379/0"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class RssSampler:
    """The process's resident memory, sampled every 20 ms on a thread (psutil), plus the kernel's peak."""

    def __init__(self) -> None:
        import psutil

        self._process = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            self._stop.wait(0.02)

    def __enter__(self) -> RssSampler:
        self.peak = self._process.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @staticmethod
    def current() -> int:
        import psutil

        return psutil.Process().memory_info().rss


def kernel_peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mailboxes", type=int, default=20000, help="how many mailboxes to seed (default 20000)")
    args = parser.parse_args()
    if not 1 <= args.mailboxes <= 1_000_000:
        parser.error("--mailboxes must be between 1 and 1,000,000")

    server_url = os.environ.get("DATABASE_URL") or DEFAULT_SERVER
    if urlsplit(server_url).scheme not in ("postgres", "postgresql"):
        parser.error("DATABASE_URL must name a PostgreSQL server (postgres://user@host:port/db)")
    redis_url = os.environ.get("REDIS_URL") or DEFAULT_REDIS
    database = f"bench_inventory_sync_{secrets.token_hex(4)}"
    work_dir = Path(tempfile.mkdtemp(prefix="bench-inventory-sync-"))
    admin = server_connection(server_url)
    admin.execute(f'CREATE DATABASE "{database}"')
    log(f"database {database} created on {urlsplit(server_url).hostname}; Redis {redis_url}")
    try:
        from tests.simulator import run_simulator

        started = time.monotonic()
        with run_simulator(work_dir / "sim", seed=str(args.mailboxes), timeout=1800) as sim:
            log(f"simulator seeded with {args.mailboxes} mailboxes in {time.monotonic() - started:.1f}s")
            os.environ.update(sim.portal_env())
            os.environ.update(
                {
                    "DATABASE_URL": with_database(server_url, database),
                    "REDIS_URL": redis_url,
                    "DJANGO_SETTINGS_MODULE": "portal.settings.local",
                    "PORTAL_VAR_DIR": str(work_dir / "var"),
                    "SECRET_KEY": secrets.token_urlsafe(50),
                    "DATABASE_CONN_MAX_AGE": "0",
                }
            )
            os.environ.setdefault("LOG_LEVEL", "WARNING")
            result = run_benchmark(sim, args.mailboxes)
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


def run_benchmark(sim, mailboxes: int) -> dict:
    import django

    django.setup()
    from django.core.management import call_command
    from django.db.models import Count
    from django.utils import timezone

    from migration.models import ExchangePresence, InventoryMailbox, InventorySync, OwnerType, SyncKind, SyncStatus
    from migration.services import discovery as d
    from migration.services.discovery import inventory_sync_run

    call_command("migrate", verbosity=0)
    truth = sim.control("GET", "truth")
    sync = InventorySync.objects.create(kind=SyncKind.FULL, status=SyncStatus.QUEUED, requested_at=timezone.now())

    baseline = RssSampler.current()
    log(f"running discovery (baseline RSS {baseline / 2**20:.0f} MB)")
    with RssSampler() as sampler:
        started = time.perf_counter()
        inventory_sync_run(sync_id=sync.pk)
        seconds = time.perf_counter() - started
    peak = max(sampler.peak, kernel_peak_bytes())
    sync.refresh_from_db()
    if sync.status != SyncStatus.SUCCEEDED:
        raise SystemExit(f"discovery did not succeed: {sync.status} {sync.error}")
    counts = dict(InventoryMailbox.objects.values_list("classification").annotate(n=Count("id")))
    matches = counts == {k: v for k, v in truth["by_classification"].items() if v}
    log(
        f"discovery: {seconds:.1f}s, {sync.requests_made} requests, peak RSS {peak / 2**20:.0f} MB, "
        f"classification {'matches' if matches else 'DIFFERS FROM'} the seed's truth"
    )

    # The Graph requests discovery made: the same keys, in the same $batch groups (discovery asks
    # about each slice of mailboxes, in the order Dataverse pages them, 20 to a batch).
    entra_ids = _entra_ids(sim)
    batches: list[list[str]] = []
    rows = InventoryMailbox.objects.order_by("dataverse_id").values_list(
        "exchange_presence", "email_address", "owner_type", "owner_dataverse_id"
    )
    slice_keys: list[str] = []
    for position, (presence, address, owner_type, owner_id) in enumerate(rows.iterator(chunk_size=5000), start=1):
        if presence != ExchangePresence.UNKNOWN:
            entra = entra_ids.get(str(owner_id)) if owner_type == OwnerType.USER else None
            slice_keys.append(entra or address)
        if position % d.UNIT == 0:
            batches += _in_twenties(slice_keys)
            slice_keys = []
    batches += _in_twenties(slice_keys)
    del entra_ids

    raw_seconds, raw_requests = raw_fetch(sim, batches)
    log(f"raw sequential fetch: {raw_seconds:.1f}s, {raw_requests} requests")
    return {
        "mailboxes": truth["mailboxes"],
        "seconds": round(seconds, 2),
        "mailboxes_per_s": round(truth["mailboxes"] / seconds, 1),
        "peak_rss_mb": round(peak / 2**20, 1),
        "raw_fetch_seconds": round(raw_seconds, 2),
        "ratio_to_raw_fetch": round(raw_seconds / seconds, 2),
        "baseline_rss_mb": round(baseline / 2**20, 1),
        "requests_made": sync.requests_made,
        "raw_requests": raw_requests,
        "classification_matches_truth": matches,
    }


def _in_twenties(keys: list[str]) -> list[list[str]]:
    unique = list(dict.fromkeys(keys))
    return [unique[start : start + 20] for start in range(0, len(unique), 20)]


def _entra_ids(sim) -> dict[str, str]:
    """Dataverse user id -> directory object id, to rebuild the Graph keys (not timed)."""
    from django.conf import settings

    from portal.m365.dataverse import DataverseClientPool

    client = DataverseClientPool(settings.M365).client()
    return {
        row["systemuserid"]: row["azureactivedirectoryobjectid"]
        for row in client.iter_rows("systemusers", select=("systemuserid", "azureactivedirectoryobjectid"))
        if row.get("azureactivedirectoryobjectid")
    }


def raw_fetch(sim, graph_batches: list[list[str]]) -> tuple[float, int]:
    """The same requests as discovery, one after another, with nothing done with the answers."""
    from django.conf import settings

    from migration.services import discovery as d
    from portal.m365.config import M365Config
    from portal.m365.http import build_session
    from portal.m365.rows import EmailServerProfile, Organization
    from portal.m365.tokens import TokenProvider

    config: M365Config = settings.M365
    tokens = TokenProvider(config=config, registration=config.registrations[0])
    dataverse_token = tokens.token(scope=config.scope_for(config.dataverse_url))
    graph_token = tokens.token(scope=config.scope_for(config.graph_url))
    # A plain requests session, trusting the simulator's CA whatever REQUESTS_CA_BUNDLE says.
    session = build_session(config)
    api = f"{config.dataverse_url}/api/data/v9.2/"
    dataverse_headers = {
        "Authorization": f"Bearer {dataverse_token}",
        "Accept": "application/json",
        "OData-MaxVersion": "4.0",
        "OData-Version": "4.0",
        "Prefer": f"odata.maxpagesize={d.PAGE_SIZE}",
    }
    reads = [
        ("organizations", Organization.SELECT, None),
        ("emailserverprofiles", EmailServerProfile.SELECT, None),
        ("businessunits", ("businessunitid", "name"), None),
        ("teams", ("teamid", "name", "_businessunitid_value"), None),
        ("systemusers", d.USER_COLUMNS, None),
        ("queues", d.QUEUE_COLUMNS, None),
        ("tracelogs", ("tracelogid", "_regardingobjectid_value"), "level eq 3"),
        ("mailboxes", d.MAILBOX_COLUMNS, None),
    ]
    count = 0
    started = time.perf_counter()
    for entity_set, select, filter_ in reads:
        params = {"$select": ",".join(select)}
        if filter_:
            params["$filter"] = filter_
        url: str | None = api + entity_set
        while url:
            response = session.get(url, params=params, headers=dataverse_headers, timeout=120)
            response.raise_for_status()
            count += 1
            url, params = response.json().get("@odata.nextLink"), None
    graph_headers = {"Authorization": f"Bearer {graph_token}", "Accept": "application/json"}
    batch_url = f"{config.graph_url}/v1.0/$batch"
    for keys in graph_batches:
        body = {
            "requests": [
                {"id": str(number), "method": "GET", "url": f"/users/{key}/mailboxSettings"}
                for number, key in enumerate(keys, start=1)
            ]
        }
        response = session.post(batch_url, json=body, headers=graph_headers, timeout=120)
        response.raise_for_status()
        count += 1
    return time.perf_counter() - started, count


if __name__ == "__main__":
    sys.exit(main())
