"""Helpers for the provisioning tests: requests ready to provision, a real RQ worker, the simulator's view."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from django.db import transaction
from rq import SimpleWorker

from onboarding.models import MailboxKind, MailboxRequest, ProvisioningRun, RequestStatus, RunStatus
from onboarding.services.provisioning import provisioning_start
from portal.policy.models import PolicySettings
from portal.policy.services import policy_get
from tests.onboarding.factories import MailboxRequestFactory, RequestMemberFactory

FINISHED = (RunStatus.SUCCEEDED, RunStatus.NEEDS_ATTENTION)
_members_cache: dict[str, list[dict[str, Any]]] = {}


def prepare(sim, *, test_enable_delay: float = 0.5, poll_seconds: int = 1, **sim_settings: Any) -> None:
    """Quick Test & Enable in the simulator and quick polling in the portal's policy."""
    sim.control("PUT", "settings", {"test_enable_delay_seconds": test_enable_delay, **sim_settings})
    policy_get()
    PolicySettings.objects.filter(pk=1).update(test_enable_poll_seconds=poll_seconds)


def directory_people(sim, count: int = 2) -> list[str]:
    """Addresses of people who have mailboxes in Exchange Online in the simulated directory."""
    people = _members_cache.get(sim.base_url)
    if people is None:
        rows = sim.control("GET", "rows/graph_users")["value"]
        people = [
            row
            for row in rows
            if row.get("userPurpose") == "user"
            and row.get("mailbox_location") == "exchange_online"
            and row.get("accountEnabled")
        ]
        _members_cache[sim.base_url] = people
    return [row["mail"] for row in people[:count]]


def provisioning_request(
    *, kind: str = MailboxKind.QUEUE, members: Iterable[dict[str, Any]] = (), **fields: Any
) -> MailboxRequest:
    """A request whose approval has just finished: PROVISIONING, with members who exist in the directory."""
    fields.setdefault("local_part", f"prov-{uuid.uuid4().hex[:10]}")
    if kind == MailboxKind.SHARED:
        fields.setdefault("queue_visibility", None)
        fields.setdefault("tracking_rule", None)
    request = MailboxRequestFactory(kind=kind, status=RequestStatus.PROVISIONING, **fields)
    for member in members:
        RequestMemberFactory(request=request, **member)
    return request


def standard_members(sim) -> list[dict[str, Any]]:
    first, second = directory_people(sim, 2)
    return [
        {"email": first, "full_access": True, "automapping": True, "send_as": True, "send_on_behalf": False},
        {"email": second, "full_access": True, "automapping": False, "send_as": False, "send_on_behalf": True},
    ]


def start(request: MailboxRequest, actor) -> ProvisioningRun:
    """What the final approval does: inside its transaction, with the request locked."""
    with transaction.atomic():
        locked = MailboxRequest.objects.select_for_update().get(pk=request.pk)
        return provisioning_start(request=locked, actor=actor)


def run_worker(queue) -> None:
    SimpleWorker([queue], connection=queue.connection).work(burst=True, with_scheduler=True)


def work_until(queue, done: Callable[[], bool], *, timeout: float = 60, pause: float = 0.2) -> None:
    """Run a real RQ worker (with its scheduler) in bursts until ``done()``; scheduled jobs come due meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        run_worker(queue)
        if done():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not done after {timeout} seconds")
        time.sleep(pause)


def run_finished(run_id: int) -> Callable[[], bool]:
    return lambda: ProvisioningRun.objects.get(pk=run_id).status in FINISHED


def operations(sim, since: int, *names: str) -> list[dict[str, Any]]:
    """Ledger entries since ``since`` for the named operations ("New-Mailbox", "POST queues")."""
    wanted = {name.lower() for name in names}
    return [entry for entry in sim.ledger(since) if entry.get("operation", "").lower() in wanted]


def applied(sim, since: int, name: str) -> int:
    return sum(1 for entry in operations(sim, since, name) if entry["applied"])


WRITE_OPERATIONS = (
    "New-Mailbox",
    "Add-MailboxPermission",
    "Add-RecipientPermission",
    "Set-Mailbox",
    "POST queues",
    "PATCH queues",
    "PATCH mailboxes",
)


def exchange_online_profile_id(sim) -> str:
    profiles = sim.control("GET", "rows/emailserverprofiles")["value"]
    return next(row["emailserverprofileid"] for row in profiles if row["name"] == "Microsoft Exchange Online")


def graph_user_id(sim, address: str) -> str:
    users = sim.control("GET", "rows/graph_users")["value"]
    return next(row["id"] for row in users if (row.get("mail") or "").lower() == address.lower())
