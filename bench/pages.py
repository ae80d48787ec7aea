"""Benchmark the main list and dashboard pages at 100,000 inventory mailboxes under concurrent load.

    .venv/bin/python bench/pages.py [--mailboxes 100000] [--mailbox-requests 3000]
        [--clients 20] [--requests 400] [--warmup 40] [--workers 5] [--draw-every-time]

Creates a throwaway PostgreSQL database on the server named by ``DATABASE_URL``
(default ``postgres://postgres@127.0.0.1:5432/postgres``), migrates it and loads
the inventory ``bench/inventory_list.py`` uses, plus what a portal a while into
its life holds in proportion: teams with business owners and members, mailbox
requests in every status with their approval stages, decisions and provisioning
runs, the managed mailboxes health monitoring derives from them and from the
inventory, alerts on some of those, migration waves with their mailboxes, and a
hash-chained audit trail. It then serves the portal with gunicorn and production
settings and, from a second process on loopback, drives each page with
``--clients`` closed-loop clients (each sends its next request as soon as the
last one answered, no think time): first ``--warmup`` unmeasured requests, then
``--requests`` measured ones. Each page is requested as the persona who uses it.
The warm-up leaves each page's rows kept as fragments (``PAGE_FRAGMENT_SECONDS``), as a page
people keep opening has them; ``--draw-every-time`` measures every request drawing them in full.

It prints one line per page and, as its last line, one JSON object::

    {"pages": {"inventory_list": {"p50_ms": …, "p95_ms": …, "p99_ms": …, "rps": …, "errors": 0}, …}}

An error is any answer other than a 200 with the page's own content. The database
and the run's cache keys are removed at the end, whatever happens.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import uuid
from datetime import timedelta
from urllib.parse import urlencode

from common import (
    BUSINESS_UNITS,
    FUNCTIONS,
    closed_loop,
    latency_stats,
    load_inventory,
    page_ok,
    print_page_figures,
    run_client_process,
    served_by_gunicorn,
    signed_in_cookie,
    throwaway_portal,
)

# Sync workers: a page is CPU work in Python plus waits on PostgreSQL on this same machine, so a
# few more processes than cores keep both cores busy while one waits; gunicorn's own rule of
# thumb, 2 x cores + 1, gives 5 on two cores. More only adds switching and memory; threads would
# share one interpreter lock per process for work that is mostly Python.
DEFAULT_WORKERS = 2 * (os.cpu_count() or 1) + 1

TEAMS = 48
OWNERS_PER_TEAM = 2
MEMBERS_PER_TEAM = 6
ADMINS = 4
WAVES = 30
WAVE_SIZE = 120
AUDIT_EVENTS_PER_REQUEST = 10

# Mailbox request statuses, roughly as a year of onboarding leaves them.
REQUEST_MIX = {
    "draft": 10,
    "submitted": 20,
    "returned": 4,
    "rejected": 5,
    "withdrawn": 3,
    "provisioning": 2,
    "active": 53,
    "needs_attention": 3,
}


def _users(rng: random.Random, lead_id: int) -> dict:
    """Teams named like the inventory's, with owners and members; admins, an auditor; the personas."""
    from django.contrib.auth.models import Group

    from portal.accounts.models import Team, User
    from portal.accounts.roles import ROLE_GROUP_NAMES, Role

    groups = {role: Group.objects.get(name=ROLE_GROUP_NAMES[role]) for role in Role}

    def person(username: str, first: str, last: str, *roles: Role) -> User:
        user = User(username=username, first_name=first, last_name=last, email=f"{username}@example.gov.uk")
        user.set_unusable_password()  # the benchmark signs people in through sessions it makes
        user.save()
        user.groups.set([groups[role] for role in roles])
        return user

    names = [f"{unit} / {function}" for unit in BUSINESS_UNITS for function in FUNCTIONS]
    teams, owners, members = [], [], []
    for index, name in enumerate(rng.sample(names, TEAMS)):
        team = Team.objects.create(name=name, business_unit=name.split(" / ")[0])
        team_owners = [
            person(f"owner{index}-{n}", f"Owner{n}", f"Team{index}", Role.APPROVER, Role.REQUESTER)
            for n in range(OWNERS_PER_TEAM)
        ]
        team_members = [
            person(f"member{index}-{n}", f"Member{n}", f"Team{index}", Role.REQUESTER) for n in range(MEMBERS_PER_TEAM)
        ]
        team.business_owners.set(team_owners)
        team.members.set(team_members)
        teams.append(team)
        owners.append(team_owners)
        members.append(team_members)
    admins = [person(f"admin{n}", "Admin", f"Number{n}", Role.PLATFORM_ADMIN) for n in range(ADMINS)]
    auditor = person("auditor", "Aisha", "Khan", Role.AUDITOR)
    return {
        "teams": teams,
        "owners": owners,
        "members": members,
        "admins": admins,
        "auditor": auditor,
        "lead": User.objects.get(pk=lead_id),
    }


def _stage(request, order: int, status: str, at, **fields):
    from onboarding.models import ApproverKind, RequestStage

    kind = ApproverKind.TEAM_OWNER if order == 1 else ApproverKind.ROLE
    return RequestStage(
        request=request,
        order=order,
        name="Business owner" if order == 1 else "Platform admin",
        approver_kind=kind,
        role="" if order == 1 else "platform_admin",
        sla_hours=48 if order == 1 else 24,
        status=status,
        waiting_since=at if status != "pending" else None,
        due_at=at + timedelta(hours=48 if order == 1 else 24) if status != "pending" else None,
        **fields,
    )


def load_activity(count: int, *, lead_id: int, seed: int = 20261) -> dict:
    """Requests, stages, decisions, provisioning, managed mailboxes, alerts, waves and audit events."""
    from django.db import connection, transaction
    from django.utils import timezone

    from governance.models import AlertStatus, HealthSync, MailboxAlert, ManagedMailbox
    from governance.services.managed import managed_mailboxes_refresh
    from migration.models import InventoryMailbox, MigrationProgressDay, Wave, WaveMailbox
    from onboarding.models import (
        Decision,
        MailboxRequest,
        ProvisioningRun,
        ProvisioningStep,
        RequestStage,
    )
    from onboarding.services.provisioning import step_specs
    from portal.audit.chain import GENESIS_HASH, event_hash, to_canonical_json
    from portal.audit.models import AuditChainHead, AuditEvent

    rng = random.Random(seed)  # noqa: S311 - repeatable test data, not secrets
    now = timezone.now()
    people = _users(rng, lead_id)
    teams, owners, members, admins = people["teams"], people["owners"], people["members"], people["admins"]
    statuses = rng.choices(list(REQUEST_MIX), weights=list(REQUEST_MIX.values()), k=count)

    requests = []
    for index, status in enumerate(statuses):
        at = now - timedelta(days=rng.randint(0, 365), minutes=rng.randint(0, 1440))
        t = rng.randrange(TEAMS)
        kind = "queue" if rng.random() < 0.4 else "shared"
        submitted = status != "draft"
        decided = status in ("rejected", "provisioning", "active", "needs_attention")
        requests.append(
            MailboxRequest(
                reference=f"MBX-{index + 1:06d}",
                kind=kind,
                status=status,
                requester=rng.choice(members[t] + owners[t]),
                team=teams[t],
                display_name=f"{teams[t].name.split(' / ')[1]} {kind} {index}",
                local_part=f"bench-{kind}-{index}",
                domain="example.gov.uk",
                owner=owners[t][0],
                backup_owner=owners[t][1],
                justification="The team answers these from Dynamics 365.",
                queue_visibility=0 if kind == "queue" else None,
                tracking_rule=3 if kind == "queue" else None,
                expected_daily_volume=rng.randint(5, 400),
                typical_attachment_kb=rng.randint(50, 2000),
                retention_months=rng.choice((12, 24, 36, 72)),
                data_classification="official",
                created_at=at,
                updated_at=at + timedelta(days=2),
                submitted_at=at + timedelta(hours=1) if submitted else None,
                decided_at=at + timedelta(days=2) if decided else None,
                activated_at=at + timedelta(days=2, hours=1) if status == "active" else None,
                dataverse_mailbox_id=str(uuid.uuid4()) if status in ("active", "needs_attention") else "",
                dataverse_queue_id=str(uuid.uuid4()) if status in ("active", "needs_attention") else "",
            )
        )
    with transaction.atomic():
        MailboxRequest.objects.bulk_create(requests, batch_size=2000)

        stages, decisions = [], []

        def decide(request, stage, outcome: str, by, when) -> None:
            stage.decided_by, stage.decided_at = by, when
            decisions.append((request, stage, outcome, by, when))

        for request, t in ((r, teams.index(r.team)) for r in requests):
            if request.status == "draft":
                continue
            start = request.submitted_at
            first_owner = rng.choice([o for o in owners[t] if o.pk != request.requester_id] or owners[t])
            admin = rng.choice(admins)
            later = start + timedelta(hours=rng.randint(1, 40))
            if request.status == "submitted" and rng.random() < 0.5:
                stages += [_stage(request, 1, "waiting", start), _stage(request, 2, "pending", start)]
            elif request.status == "submitted":
                one = _stage(request, 1, "approved", start)
                decide(request, one, "approve", first_owner, later)
                stages += [one, _stage(request, 2, "waiting", later)]
            elif request.status in ("returned", "withdrawn"):
                one = _stage(request, 1, "returned" if request.status == "returned" else "cancelled", start)
                if request.status == "returned":
                    decide(request, one, "return", first_owner, later)
                stages += [one, _stage(request, 2, "pending" if request.status == "returned" else "cancelled", start)]
            elif request.status == "rejected":
                one = _stage(request, 1, "rejected", start)
                decide(request, one, "reject", first_owner, later)
                stages += [one, _stage(request, 2, "cancelled", start)]
            else:
                one = _stage(request, 1, "approved", start)
                decide(request, one, "approve", first_owner, later)
                stages.append(one)
                two = _stage(request, 2, "approved", later)
                decide(request, two, "approve", admin, later + timedelta(hours=rng.randint(1, 20)))
                stages.append(two)
        RequestStage.objects.bulk_create(stages, batch_size=2000)
        Decision.objects.bulk_create(
            [
                Decision(request=request, stage=stage, decided_by=by, outcome=outcome, decided_at=when)
                for request, stage, outcome, by, when in decisions
            ],
            batch_size=2000,
        )

        runs = [
            ProvisioningRun(
                request=request,
                status={"provisioning": "running", "active": "succeeded", "needs_attention": "needs_attention"}[
                    request.status
                ],
                attempts=1,
                created_at=request.decided_at,
                started_at=request.decided_at,
                finished_at=request.activated_at,
            )
            for request in requests
            if request.status in ("provisioning", "active", "needs_attention")
        ]
        ProvisioningRun.objects.bulk_create(runs, batch_size=2000)
        steps = []
        for run in runs:
            specs = step_specs(run.request.kind)
            for order, spec in enumerate(specs, start=1):
                done = run.status == "succeeded" or order < len(specs) // 2
                failed = run.status == "needs_attention" and order == len(specs) // 2
                steps.append(
                    ProvisioningStep(
                        run=run,
                        order=order,
                        name=spec.name,
                        status="succeeded" if done else ("failed" if failed else "pending"),
                        idempotency_key=f"{run.request.reference}:{spec.name}",
                        attempts=1 if done or failed else 0,
                        started_at=run.started_at if done or failed else None,
                        finished_at=run.started_at if done or failed else None,
                        error="Exchange Online answered 503 three times." if failed else "",
                    )
                )
        ProvisioningStep.objects.bulk_create(steps, batch_size=2000)

    # Which mailboxes health monitoring looks after, exactly as the health sync works it out.
    started = time.perf_counter()
    managed_mailboxes_refresh()
    managed = list(ManagedMailbox.objects.filter(is_active=True).values_list("id", flat=True))
    print(f"  {len(managed):,} managed mailboxes in {time.perf_counter() - started:.1f} s", flush=True)
    HealthSync.objects.create(
        status="succeeded", requested_at=now - timedelta(minutes=20), started_at=now, finished_at=now
    )
    codes = [("MailboxIncomingFailure", 3), ("MailboxOutgoingFailure", 3), ("MailboxTestEnablePending", 2)]
    alerts = []
    for mailbox_id in rng.sample(managed, max(1, len(managed) // 16)):
        for code, level in rng.sample(codes, rng.randint(1, 2)):
            seen = now - timedelta(hours=rng.randint(1, 2000))
            status = rng.choices(list(AlertStatus.values), weights=(60, 15, 25))[0]
            alerts.append(
                MailboxAlert(
                    key=f"{uuid.uuid4()}",
                    source="dataverse",
                    mailbox_id=mailbox_id,
                    level=level,
                    code=code,
                    text=f"{code}: the mailbox could not be reached. Check the server profile.",
                    first_seen_at=seen - timedelta(days=rng.randint(0, 30)),
                    last_seen_at=seen,
                    occurrences=rng.randint(1, 40),
                    urgent=level == 3 and rng.random() < 0.1,
                    status=status,
                    assigned_to=rng.choice(admins) if rng.random() < 0.3 else None,
                    resolved_at=seen if status == "resolved" else None,
                    updated_at=seen,
                )
            )
    MailboxAlert.objects.bulk_create(alerts, batch_size=2000)

    # Waves of mailboxes still on a legacy method, the older ones finished.
    candidates = list(
        InventoryMailbox.objects.filter(removed_at__isnull=True, readiness__in=["ready", "blocked"])
        .order_by("?")
        .values_list("id", "owner_type")[: WAVES * WAVE_SIZE]
    )
    lead = people["lead"]
    entries = []
    for number in range(WAVES):
        created = now - timedelta(days=3 * (WAVES - number))
        finished = number < WAVES - 5
        wave = Wave.objects.create(
            name=f"Wave {number + 1}: {teams[number % TEAMS].name}",
            status="completed" if finished else rng.choice(("draft", "approved", "running")),
            created_by=lead,
            created_at=created,
            built_from={"filters": {"team": teams[number % TEAMS].name}},
        )
        chunk = candidates[number * WAVE_SIZE : (number + 1) * WAVE_SIZE]
        for position, (mailbox_id, owner_type) in enumerate(chunk):
            state = (
                rng.choices(("migrated", "needs_attention", "rolled_back"), weights=(92, 5, 3))[0]
                if finished
                else "pending"
            )
            entries.append(
                WaveMailbox(
                    wave=wave,
                    mailbox_id=mailbox_id,
                    position=position,
                    is_queue=owner_type == "queue",
                    state=state,
                    active=state == "pending",
                )
            )
    WaveMailbox.objects.bulk_create(entries, batch_size=2000)
    MigrationProgressDay.objects.bulk_create(
        [
            MigrationProgressDay(
                day=(now - timedelta(days=day)).date(),
                legacy=40_000 + 30 * day,
                compliant=45_000,
                migrated=max(0, 3_000 - 30 * day),
                needs_attention=150,
                recorded_at=now,
            )
            for day in range(90)
        ]
    )

    # The audit trail, hash-chained exactly as audit_record writes it, in time order.
    actions = [
        ("mailbox_request.created", "mailbox_request"),
        ("mailbox_request.submitted", "mailbox_request"),
        ("approval.decided", "request_stage"),
        ("provisioning.step_succeeded", "provisioning_step"),
        ("alert.acknowledged", "alert"),
        ("inventory.exported", "inventory"),
        ("wave.approved", "wave"),
    ]
    everyone = [lead, people["auditor"], *admins, *(p for team in owners for p in team)]
    total_events = count * AUDIT_EVENTS_PER_REQUEST
    start = now - timedelta(days=365)
    step = timedelta(days=365) / total_events
    prev = GENESIS_HASH
    with (
        connection.cursor() as cursor,
        cursor.cursor.copy(
            f"COPY {AuditEvent._meta.db_table} (seq, created_at, actor_id, actor_name, action, object_type, "
            "object_id, before_json, after_json, outcome, reason, correlation_id, prev_hash, hash) FROM STDIN"
        ) as copy,
    ):
        for seq in range(1, total_events + 1):
            actor = rng.choice(everyone)
            action, object_type = rng.choice(actions)
            fields = {
                "seq": seq,
                "created_at": start + step * seq,
                "actor_id": actor.pk,
                "actor_name": f"{actor.get_full_name()} ({actor.username})",
                "action": action,
                "object_type": object_type,
                "object_id": str(rng.randint(1, count)),
                "before_json": to_canonical_json({"status": "waiting"}),
                "after_json": to_canonical_json({"status": "approved"}),
                "outcome": "success",
                "reason": "",
                "correlation_id": uuid.uuid4().hex,
                "prev_hash": prev,
            }
            prev = event_hash(**fields)
            copy.write_row((*fields.values(), prev))
    AuditChainHead.objects.update_or_create(pk=1, defaults={"seq": total_events, "hash": prev})
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")

    requester = members[0][0]
    return {
        "requester_id": requester.pk,
        "admin_id": admins[0].pk,
        "auditor_id": people["auditor"].pk,
        "counts": {
            "mailbox_requests": count,
            "request_stages": len(stages),
            "decisions": len(decisions),
            "provisioning_steps": len(steps),
            "managed_mailboxes": len(managed),
            "alerts": len(alerts),
            "wave_mailboxes": len(entries),
            "audit_events": total_events,
        },
    }


# --- the load generator (runs in its own process) --------------------------------------------


def run_client(spec: dict) -> dict:
    host, port = spec["host"], spec["port"]
    results: dict[str, dict] = {}
    for name, page in spec["pages"].items():
        cookie = spec["cookies"][page["as"]]

        def one(path=page["path"], marker=page["marker"], cookie=cookie) -> tuple[bool, float]:
            return page_ok(host, port, path, cookie, marker)

        closed_loop(one, clients=spec["clients"], requests=spec["warmup"])
        outcomes, wall = closed_loop(one, clients=spec["clients"], requests=spec["requests"])
        results[name] = latency_stats(outcomes, wall)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mailboxes", type=int, default=100_000, help="inventory mailboxes")
    parser.add_argument("--mailbox-requests", type=int, default=3_000, help="onboarding requests")
    parser.add_argument("--clients", type=int, default=20, help="requests in flight at once")
    parser.add_argument("--requests", type=int, default=400, help="measured requests per page")
    parser.add_argument("--warmup", type=int, default=40, help="unmeasured requests per page first")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help="gunicorn sync worker processes")
    parser.add_argument("--only", help="comma-separated page names to measure (default: all)")
    parser.add_argument(
        "--draw-every-time",
        action="store_true",
        help="serve with PAGE_FRAGMENT_SECONDS=0: every request draws its rows in full, as the first one does",
    )
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.client:
        print(json.dumps(run_client(json.load(sys.stdin))))
        return 0

    with throwaway_portal("pages_bench") as portal:
        started = time.perf_counter()
        probe = load_inventory(args.mailboxes)
        print(f"loaded {args.mailboxes:,} mailboxes in {time.perf_counter() - started:.1f} s", flush=True)
        started = time.perf_counter()
        activity = load_activity(args.mailbox_requests, lead_id=probe["lead_id"])
        loaded = ", ".join(f"{value:,} {name.replace('_', ' ')}" for name, value in activity["counts"].items())
        print(f"loaded {loaded} in {time.perf_counter() - started:.1f} s", flush=True)
        cookies = {
            "lead": signed_in_cookie(probe["lead_id"]),
            "requester": signed_in_cookie(activity["requester_id"]),
            "admin": signed_in_cookie(activity["admin_id"]),
            "auditor": signed_in_cookie(activity["auditor_id"]),
        }
        table = 'class="govuk-table portal-inventory-table"'
        pages = {
            "inventory_list": {"as": "lead", "path": "/migration/inventory/", "marker": table},
            "inventory_filtered": {
                "as": "lead",
                "path": "/migration/inventory/?"
                + urlencode({"classification": "email_router", "readiness": "blocked", "sort": "team"}),
                "marker": table,
            },
            "inventory_search": {"as": "lead", "path": "/migration/inventory/?q=okafor", "marker": table},
            "migration_dashboard": {"as": "lead", "path": "/migration/", "marker": "Mailboxes by classification"},
            "waves": {"as": "lead", "path": "/migration/waves/", "marker": "Wave 30"},
            "requests_dashboard": {"as": "requester", "path": "/requests/", "marker": "MBX-"},
            "approvals_dashboard": {"as": "admin", "path": "/approvals/", "marker": "MBX-"},
            "health_alerts": {"as": "admin", "path": "/health/", "marker": "Mailbox"},
            "mailbox_health": {"as": "admin", "path": "/health/mailboxes/", "marker": "@example.gov.uk"},
            "audit_events": {"as": "auditor", "path": "/audit/", "marker": "approval.decided"},
        }
        if args.only:
            chosen = args.only.split(",")
            unknown = set(chosen) - set(pages)
            if unknown:
                parser.error(f"unknown pages: {', '.join(sorted(unknown))}; choose from {', '.join(pages)}")
            pages = {name: page for name, page in pages.items() if name in chosen}

        if args.draw_every_time:
            portal.env["PAGE_FRAGMENT_SECONDS"] = "0"
        with served_by_gunicorn(portal, workers=args.workers) as port:
            results = run_client_process(
                __file__,
                {
                    "host": "127.0.0.1",
                    "port": port,
                    "cookies": cookies,
                    "pages": pages,
                    "clients": args.clients,
                    "requests": args.requests,
                    "warmup": args.warmup,
                },
            )

    print(
        f"{args.mailboxes:,} mailboxes, {args.mailbox_requests:,} mailbox requests; gunicorn with {args.workers} "
        f"sync workers; {args.clients} closed-loop clients, {args.requests} measured requests per page after "
        f"{args.warmup} unmeasured; "
        f"{'rows drawn on every request' if args.draw_every_time else 'drawn rows kept for the next request'}; "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the end"
    )
    return print_page_figures(results, width=22)


if __name__ == "__main__":
    sys.exit(main())
