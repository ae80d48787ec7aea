"""Benchmark the inventory pages at 100,000 mailboxes.

    .venv/bin/python bench/inventory_list.py [--mailboxes 100000] [--requests 60] [--concurrency 4]

Creates a throwaway PostgreSQL database on the server named by ``DATABASE_URL``
(default ``postgres://postgres@127.0.0.1:5432/postgres``), migrates it, loads a
realistic mix of inventory mailboxes (classified by the portal's own rules),
legacy sources, annotations and history, then serves the portal with gunicorn
and production settings, signed in as a migration lead through a session it
creates. A second process on loopback measures each page: first sequentially,
then with several requests at once. It prints one line per page and, as its
last line, one JSON object::

    {"pages": {"list_first": {"p50_ms": …, "p95_ms": …, "p99_ms": …, "rps": …, "errors": 0}, …}}

Pages ending in ``_concurrent`` are the same URL under concurrent load. The
database is dropped at the end, whatever happens.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from html import unescape
from urllib.parse import urlencode

from common import (
    http_get,
    latency_stats,
    load_inventory,
    page_ok,
    print_page_figures,
    run_client_process,
    served_by_gunicorn,
    signed_in_cookie,
    throwaway_portal,
)


def deep_cursor(position: int) -> str:
    from migration.models import InventoryMailbox
    from migration.selectors.inventory import cursor_encode

    row = InventoryMailbox.objects.filter(removed_at__isnull=True).order_by("name", "id")[position]
    return cursor_encode((row.name, row.pk))


# --- the load generator (runs in its own process) --------------------------------------------


def run_client(spec: dict) -> dict:
    host, port, cookie = spec["host"], spec["port"], spec["cookie"]
    results: dict[str, dict] = {}

    for name, (path, marker) in spec["pages"].items():

        def one(_=None, path=path, marker=marker) -> tuple[bool, float]:
            return page_ok(host, port, path, cookie, marker)

        for _ in range(spec["warmup"]):
            one()
        started = time.perf_counter()
        outcomes = [one() for _ in range(spec["requests"])]
        results[name] = latency_stats(outcomes, time.perf_counter() - started)

        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=spec["concurrency"]) as pool:
            outcomes = list(pool.map(one, range(spec["requests"])))
        results[f"{name}_concurrent"] = latency_stats(outcomes, time.perf_counter() - started)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mailboxes", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=60, help="requests per page, sequential and concurrent")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--workers", type=int, default=3, help="gunicorn worker processes")
    parser.add_argument(
        "--warmup", type=int, default=10, help="unmeasured requests per page first, so every worker is warm"
    )
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.client:
        print(json.dumps(run_client(json.load(sys.stdin))))
        return 0

    with throwaway_portal("inventory_bench") as portal:
        started = time.perf_counter()
        probe = load_inventory(args.mailboxes)
        print(f"loaded {args.mailboxes:,} mailboxes in {time.perf_counter() - started:.1f} s", flush=True)
        cookie = signed_in_cookie(probe["lead_id"])
        deep = deep_cursor(int(args.mailboxes * 0.9))

        with served_by_gunicorn(portal, workers=args.workers) as port:
            # The deep page is reached the way a person reaches it: through a page's "Next" link.
            status, _, body = http_get("127.0.0.1", port, f"/migration/inventory/?after={deep}", cookie)
            next_link = re.search(rb'href="([^"]+)" rel="next"', body)
            if status != 200 or not next_link:
                raise RuntimeError(f"the deep page did not offer a next link (status {status})")
            deep_path = unescape(next_link.group(1).decode())
            team = probe["team"] or ""
            table = 'class="govuk-table portal-inventory-table"'
            pages = {
                "summary": ("/migration/", "Mailboxes by classification"),
                "list_first": ("/migration/inventory/", table),
                "list_filtered": (
                    "/migration/inventory/?"
                    + urlencode({"classification": "email_router", "readiness": "blocked", "team": team}),
                    table,
                ),
                "list_search": ("/migration/inventory/?q=okafor", table),
                "list_deep": (deep_path, table),
                "mailbox": (f"/migration/inventory/{probe['mailbox_id']}/", "History"),
            }
            results = run_client_process(
                __file__,
                {
                    "host": "127.0.0.1",
                    "port": port,
                    "cookie": cookie,
                    "pages": pages,
                    "requests": args.requests,
                    "concurrency": args.concurrency,
                    "warmup": args.warmup,
                },
            )

    print(
        f"{args.mailboxes:,} mailboxes, gunicorn with {args.workers} workers, {args.requests} requests per page, "
        f"concurrent runs with {args.concurrency} at once, {os.cpu_count()} CPUs"
    )
    return print_page_figures(results, width=26)


if __name__ == "__main__":
    sys.exit(main())
