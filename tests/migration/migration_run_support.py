"""Helpers for the migration-run tests: legacy mailboxes from the simulated tenant, running waves, a real worker."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from rq import SimpleWorker

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
from portal.policy.models import PolicySettings
from portal.policy.services import policy_get
from tests.migration.factories import InventoryMailboxFactory, WaveFactory, WaveMailboxFactory

FINISHED = (
    WaveMailboxState.MIGRATED,
    WaveMailboxState.NEEDS_ATTENTION,
    WaveMailboxState.ROLLED_BACK,
    WaveMailboxState.ROLLBACK_CONFLICT,
    WaveMailboxState.CANCELLED,
)
EXCHANGE_ONLINE_PROFILE = "Microsoft Exchange Online"

_directory: dict[str, dict[str, dict[str, Any]]] = {}
_taken: set[str] = set()


def prepare(sim, *, test_enable_delay: float = 0.3, poll_seconds: int = 1, **sim_settings: Any) -> None:
    """Quick Test & Enable in the simulator and quick polling in the portal's policy."""
    sim.control("PUT", "settings", {"test_enable_delay_seconds": test_enable_delay, **sim_settings})
    policy_get()
    PolicySettings.objects.filter(pk=1).update(test_enable_poll_seconds=poll_seconds)


def _graph_users(sim) -> dict[str, dict[str, Any]]:
    users = _directory.get(sim.base_url)
    if users is None:
        rows = sim.control("GET", "rows/graph_users")["value"]
        users = {(row.get("mail") or "").casefold(): row for row in rows if row.get("mail")}
        _directory[sim.base_url] = users
    return users


def profile_ids(sim) -> dict[str, str]:
    return {row["name"]: row["emailserverprofileid"] for row in sim.control("GET", "rows/emailserverprofiles")["value"]}


def _in_exchange_online(sim, address: str | None) -> bool:
    user = _graph_users(sim).get((address or "").casefold())
    return bool(user) and user.get("mailbox_location") == "exchange_online"


def find_mailboxes(sim, *, owner: str, count: int, where: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    """``count`` simulated mailboxes of queues or users (``owner``) matching ``where``, none used before."""
    rows = sim.control("GET", "rows/mailboxes")["value"]
    users = {row["systemuserid"]: row for row in sim.control("GET", "rows/systemusers")["value"]}
    found = []
    for row in rows:
        if row["mailboxid"] in _taken or row.get("regardingobjecttypecode") != owner:
            continue
        if owner == "systemuser" and users.get(row.get("_regardingobjectid_value"), {}).get("isdisabled"):
            continue
        if not where(row):
            continue
        found.append(row)
        _taken.add(row["mailboxid"])
        if len(found) == count:
            return found
    raise AssertionError(f"the simulated tenant has too few {owner} mailboxes left for this test")


def legacy(
    sim, *, owner: str = "systemuser", count: int = 1, needs_approval: bool = False, approved: bool = False
) -> list[dict[str, Any]]:
    """Mailboxes still on the Outlook client or the Email Router, in Exchange Online: ready to migrate."""
    exo = profile_ids(sim)[EXCHANGE_ONLINE_PROFILE]

    def ready(row: dict[str, Any]) -> bool:
        on_outlook = 1 in (row.get("incomingemaildeliverymethod"), row.get("outgoingemaildeliverymethod"))
        on_router = row.get("incomingemaildeliverymethod") == 2 and row.get("_emailserverprofile_value") != exo
        approval = row.get("emailrouteraccessapproval")
        approval_ok = not (needs_approval and approval == 1) and not (approved and approval != 1)
        return (
            (on_outlook or on_router)
            and approval_ok
            and not row.get("isforwardmailbox")
            and _in_exchange_online(sim, row.get("emailaddress"))
        )

    return find_mailboxes(sim, owner=owner, count=count, where=ready)


def not_in_exchange_online(sim, *, count: int = 1) -> list[dict[str, Any]]:
    """User mailboxes whose address is still hosted on-premises: their Test & Enable fails."""
    return find_mailboxes(
        sim,
        owner="systemuser",
        count=count,
        where=lambda row: (
            not _in_exchange_online(sim, row.get("emailaddress")) and row.get("incomingemaildeliverymethod") == 2
        ),
    )


def inventory_for(row: dict[str, Any]) -> InventoryMailbox:
    is_queue = row.get("regardingobjecttypecode") == "queue"
    legacy_outlook = 1 in (row.get("incomingemaildeliverymethod"), row.get("outgoingemaildeliverymethod"))
    return InventoryMailboxFactory(
        dataverse_id=uuid.UUID(row["mailboxid"]),
        name=row.get("name") or "",
        email_address=row.get("emailaddress") or "",
        owner_type=OwnerType.QUEUE if is_queue else OwnerType.USER,
        owner_dataverse_id=uuid.UUID(row["_regardingobjectid_value"]),
        profile_id=uuid.UUID(row["_emailserverprofile_value"]) if row.get("_emailserverprofile_value") else None,
        profile_name="",
        incoming_delivery=row.get("incomingemaildeliverymethod"),
        outgoing_delivery=row.get("outgoingemaildeliverymethod"),
        act_delivery=row.get("actdeliverymethod"),
        email_approval=row.get("emailrouteraccessapproval"),
        incoming_status=row.get("incomingemailstatus"),
        outgoing_status=row.get("outgoingemailstatus"),
        act_status=row.get("actstatus"),
        user_purpose="shared" if is_queue else "user",
        classification=Classification.OUTLOOK_CLIENT if legacy_outlook else Classification.EMAIL_ROUTER,
        readiness=Readiness.READY,
    )


def running_wave(rows: Iterable[dict[str, Any]], *, creator, status: str = WaveStatus.RUNNING, **fields: Any) -> Wave:
    """A wave as the waves service leaves it once started: its mailboxes in order, queues first."""
    wave = WaveFactory(created_by=creator, status=status, **fields)
    mailboxes = sorted((inventory_for(row) for row in rows), key=lambda m: (m.owner_type != OwnerType.QUEUE, m.pk))
    for position, mailbox in enumerate(mailboxes, start=1):
        WaveMailboxFactory(wave=wave, mailbox=mailbox, position=position, is_queue=mailbox.owner_type == "queue")
    return wave


def run_worker(queue) -> None:
    SimpleWorker([queue], connection=queue.connection).work(burst=True, with_scheduler=True)


def work_until(queue, done: Callable[[], bool], *, timeout: float = 90, pause: float = 0.2) -> None:
    """Run a real RQ worker (with its scheduler) in bursts until ``done()``; scheduled jobs come due meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        run_worker(queue)
        if done():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not done after {timeout} seconds")
        time.sleep(pause)


def wave_finished(wave: Wave) -> Callable[[], bool]:
    return lambda: not WaveMailbox.objects.filter(wave=wave).exclude(state__in=FINISHED).exists()


def entries_finished(*entries: WaveMailbox) -> Callable[[], bool]:
    ids = [entry.pk for entry in entries]
    return lambda: not WaveMailbox.objects.filter(pk__in=ids).exclude(state__in=FINISHED).exists()


def writes(sim, since: int, *, row_ids: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Changes the simulator applied since ``since`` (to these rows, when given)."""
    wanted = [row_id.lower() for row_id in row_ids]
    return [
        entry
        for entry in sim.ledger(since)
        if entry.get("applied")
        and entry["method"] in ("PATCH", "POST", "DELETE")
        and (not wanted or any(row_id in entry["path"].lower() for row_id in wanted))
    ]


def applied_per_change(sim, since: int) -> Counter:
    """How often each (row, body-less operation) was applied: the same change applied twice shows as >1 per step."""
    return Counter((entry["path"], entry["operation"]) for entry in writes(sim, since))


# --- real worker processes --------------------------------------------------------------------------

SCHEDULER_LOCK = "rq:scheduler-lock:default"


def database_url() -> str:
    """The test database (not the configured one): worker processes must see what the test writes."""
    from urllib.parse import quote

    from django.db import connection

    db = connection.settings_dict
    password = f":{quote(db['PASSWORD'], safe='')}" if db.get("PASSWORD") else ""
    port = f":{db['PORT']}" if db.get("PORT") else ""
    return f"postgres://{quote(db['USER'] or '', safe='')}{password}@{db['HOST'] or '127.0.0.1'}{port}/{db['NAME']}"


def start_worker(sim, log_path, **env: str):
    """An ``rqworker --with-scheduler`` process in its own process group, pointed at the simulator."""
    import os
    import subprocess
    import sys

    from tests.servers import ROOT, clean_env

    variables = clean_env(
        **sim.portal_env(),
        DJANGO_SETTINGS_MODULE="portal.settings.test",
        DATABASE_URL=database_url(),
        REDIS_URL=os.environ["REDIS_URL"],
        **env,
    )
    with open(log_path, "a") as log:
        return subprocess.Popen(
            [sys.executable, "manage.py", "rqworker", "--with-scheduler", "default"],
            cwd=ROOT,
            env=variables,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop_worker(process, sig: int) -> None:
    import os
    import signal
    import subprocess

    if process.poll() is None:
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=20)


def wait_for(condition: Callable[[], bool], *, timeout: float, what: str, logs: Iterable = ()) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {path.name}\n{path.read_text()[-3000:]}" for path in logs if path.exists())
            raise AssertionError(f"timed out waiting until {what}\n{tails}")
        time.sleep(0.2)


def check_agreement(sim, wave: Wave, *, exchange_online_profile: str) -> Counter:
    """Every mailbox finished, none half-done, and the portal's records agree with the simulator's state."""
    states: Counter = Counter()
    entries = WaveMailbox.objects.filter(wave=wave).select_related("mailbox")
    for entry in entries:
        states[entry.state] += 1
        assert entry.state in (WaveMailboxState.MIGRATED, WaveMailboxState.NEEDS_ATTENTION), (entry.pk, entry.state)
        assert not entry.lease_owner
        row = sim.row("mailboxes", str(entry.mailbox.dataverse_id))
        if entry.state == WaveMailboxState.MIGRATED:
            assert not entry.steps.exclude(status__in=["succeeded", "skipped"]).exists()
            assert row["_emailserverprofile_value"] == exchange_online_profile
            assert (row["incomingemaildeliverymethod"], row["outgoingemaildeliverymethod"]) == (2, 2)
            assert (row["incomingemailstatus"], row["outgoingemailstatus"]) == (1, 1)
            assert row["testemailconfigurationscheduled"] is False
            inventory = entry.mailbox
            assert str(inventory.profile_id) == exchange_online_profile
            assert (inventory.incoming_delivery, inventory.outgoing_delivery) == (2, 2)
            assert (inventory.act_delivery, inventory.email_approval) == (
                row["actdeliverymethod"],
                row["emailrouteraccessapproval"],
            )
            assert entry.snapshot_etags["after"]["mailbox"]["etag"] == f'W/"{row["versionnumber"]}"'
        else:
            assert entry.last_error.strip(), f"mailbox {entry.pk} needs attention without a reason"
            assert entry.steps.filter(status="failed").count() == 1
    return states


def changes_applied_twice(sim, since: int, wave: Wave) -> list[tuple[str, int]]:
    """Rows the migration changed more often than it had changes to make (each change is one PATCH)."""
    applied = Counter(
        entry["path"].rsplit("/", 1)[-1].lower()
        for entry in sim.ledger(since)
        if entry.get("applied") and entry["method"] == "PATCH"
    )
    twice = []
    for entry in WaveMailbox.objects.filter(wave=wave).select_related("mailbox"):
        snapshot = entry.snapshot or {}
        key = f"mailboxes({entry.mailbox.dataverse_id})"
        # Binding the profile with the delivery settings is one change, scheduling Test & Enable another,
        # and approving the address (on the owner, which Dataverse carries over to the mailbox) a third.
        if applied[key] > 2:
            twice.append((key, applied[key]))
        owner = snapshot.get("owner") or {}
        if owner:
            owner_key = f"{owner['entity_set']}({owner['id']})"
            if applied[owner_key] > 1:
                twice.append((owner_key, applied[owner_key]))
    return twice
