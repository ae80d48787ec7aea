"""Discovery against a simulated tenant of 20,000 mailboxes, on a real RQ worker.

A full run must find every mailbox and classify it exactly as the simulator's seed built it; an
incremental run must read only what changed (the simulator's ledger shows every request), notice
owners that changed, mailboxes deleted behind the portal's back, and mailboxes that came back.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from urllib.parse import unquote

import pytest
import requests
from django.db.models import Count
from rq import SimpleWorker

from migration.models import (
    Classification,
    ExchangePresence,
    InventoryChange,
    InventoryMailbox,
    InventorySync,
    OrganizationSnapshot,
    OwnerType,
    ServerProfile,
    SyncKind,
    SyncStatus,
)
from migration.services import discovery
from migration.services.discovery import inventory_sync_request
from portal.audit.models import AuditEvent
from portal.m365.config import load_m365_config
from tests.simulator import run_simulator

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

SEED = "20000"


@pytest.fixture(scope="module")
def big_sim(tmp_path_factory):
    with run_simulator(tmp_path_factory.mktemp("m365sim-20000"), seed=SEED, timeout=300) as running:
        yield running


def wait_past_overlap(changed_at: dt.datetime) -> None:
    """The high-water mark never passes a run's start less MODIFIED_OVERLAP, so a run starting sooner
    after a change would (safely) read that change again next time. Tests that count reads wait."""
    wait = (changed_at + discovery.MODIFIED_OVERLAP + dt.timedelta(seconds=1) - dt.datetime.now(dt.UTC)).total_seconds()
    if wait > 0:
        time.sleep(wait)


@pytest.fixture
def tenant(big_sim, settings, redis_queue):
    """The portal pointed at the 20,000-mailbox tenant."""
    settings.M365 = load_m365_config(big_sim.portal_env())
    seeded = big_sim.control("GET", "rows/mailboxes?limit=1")["value"][0]["modifiedon"]
    wait_past_overlap(dt.datetime.fromisoformat(seeded))
    return big_sim


def reseed(sim) -> None:
    """Put the tenant back as seeded, for whatever runs next in this module."""
    try:
        sim.reset()
    except requests.ConnectionError:
        sim.reset()  # the simulator had closed the idle keep-alive connection; a new one is made


def run_discovery(queue, *, kind: str) -> InventorySync:
    sync = inventory_sync_request(actor=None, kind=kind)
    SimpleWorker([queue], connection=queue.connection).work(burst=True)
    sync.refresh_from_db()
    assert sync.status == SyncStatus.SUCCEEDED, sync.error
    return sync


def counts_by_classification() -> dict[str, int]:
    return dict(
        InventoryMailbox.objects.filter(removed_at__isnull=True)
        .values_list("classification")
        .annotate(n=Count("id"))
        .order_by()
    )


def api_calls(sim, since: int, *, surface: str) -> list[dict]:
    return [entry for entry in sim.ledger(since) if entry["surface"] == surface]


def query_of(entry: dict) -> str:
    return unquote(entry["query"])


def test_a_full_discovery_classifies_every_mailbox_as_the_seed_built_it(tenant, redis_queue):
    truth = tenant.control("GET", "truth")

    sync = run_discovery(redis_queue, kind=SyncKind.FULL)

    assert sync.kind == SyncKind.FULL
    assert sync.mailboxes_seen == truth["mailboxes"] == InventoryMailbox.objects.count()
    assert counts_by_classification() == {name: n for name, n in truth["by_classification"].items() if n}
    assert sync.mailboxes_changed == truth["mailboxes"]
    # Graph $batch requests of 20 mailboxes, plus the Dataverse pages.
    assert sync.requests_made > sync.presence_checked / 20 > 900
    assert sync.phase == "Finished" and sync.error == ""
    assert sync.high_water_mark is not None
    # The first sight of a mailbox is not a change.
    assert not InventoryChange.objects.exists()
    # Settings and profiles recorded; the Exchange Online profile found by the policy's name.
    organisation = OrganizationSnapshot.objects.get(pk=1)
    assert organisation.require_approval_user_email and organisation.taken_at
    assert ServerProfile.objects.get(is_exchange_online=True).name == "Microsoft Exchange Online"
    assert ServerProfile.objects.get(is_legacy=True).server_type == 1
    # Every mailbox with an address and an enabled owner was checked in Exchange Online.
    unchecked = InventoryMailbox.objects.filter(exchange_presence=ExchangePresence.UNKNOWN)
    assert not unchecked.exclude(owner_disabled=True).exclude(email_address="").exists()
    assert sync.presence_checked == InventoryMailbox.objects.exclude(exchange_presence=ExchangePresence.UNKNOWN).count()
    # Owners, business units and teams are filled in.
    queue_mailbox = InventoryMailbox.objects.filter(owner_type=OwnerType.QUEUE).first()
    assert queue_mailbox.owner_name and queue_mailbox.business_unit_name and queue_mailbox.team_name
    assert queue_mailbox.exchange_presence == ExchangePresence.EXCHANGE_ONLINE
    assert queue_mailbox.user_purpose == "shared"
    assert AuditEvent.objects.filter(action="inventory.sync_finished", object_id=str(sync.pk)).exists()


def test_an_incremental_run_reads_only_what_changed_and_notices_deletions(tenant, redis_queue):
    first = run_discovery(redis_queue, kind=SyncKind.FULL)
    inventory = InventoryMailbox.objects.filter(owner_type=OwnerType.USER)
    exchange_online = ServerProfile.objects.get(is_exchange_online=True).dataverse_id
    to_outlook = inventory.filter(classification=Classification.COMPLIANT_SSS).order_by("id").first()
    to_compliant = (
        inventory.filter(classification=Classification.EMAIL_ROUTER, email_approval=1, profile_id__isnull=True)
        .order_by("id")
        .first()
    )
    to_disable = inventory.filter(classification=Classification.COMPLIANT_SSS).order_by("-id").first()
    to_delete = inventory.filter(classification=Classification.OUTLOOK_CLIENT).order_by("id").first()
    came_back = inventory.filter(classification=Classification.FORWARD_MAILBOX).order_by("id").first()
    InventoryMailbox.objects.filter(pk=came_back.pk).update(removed_at=first.finished_at)
    alert = tenant.control("GET", "rows/tracelogs?limit=1")["value"][0]
    alerted = InventoryMailbox.objects.get(dataverse_id=alert["_regardingobjectid_value"])
    assert alerted.open_error_alerts == 1 and "alerts_present" in [b["code"] for b in alerted.blockers]
    try:
        since = tenant.last_seq()
        tenant.control("PATCH", f"state/mailboxes/{to_outlook.dataverse_id}", {"actdeliverymethod": 0})
        tenant.control(
            "PATCH", f"state/mailboxes/{to_compliant.dataverse_id}", {"_emailserverprofile_value": str(exchange_online)}
        )
        tenant.control("PATCH", f"state/systemusers/{to_disable.owner_dataverse_id}", {"isdisabled": True})
        tenant.control("DELETE", f"state/mailboxes/{to_delete.dataverse_id}")
        tenant.control("DELETE", f"state/tracelogs/{alert['tracelogid']}")  # the alert was dealt with
        wait_past_overlap(dt.datetime.now(dt.UTC))

        second = run_discovery(redis_queue, kind=SyncKind.INCREMENTAL)

        assert second.kind == SyncKind.INCREMENTAL
        # Only the two changed mailbox rows were read, and the one that came back.
        assert second.mailboxes_seen == 3
        assert second.mailboxes_removed == 1
        mailbox_reads = [
            query_of(entry)
            for entry in api_calls(tenant, since, surface="dataverse")
            if entry["method"] == "GET" and entry["path"].endswith("/mailboxes")
        ]
        changed_rows = [query for query in mailbox_reads if "modifiedon gt" in query]
        id_listing = [query for query in mailbox_reads if "$select=mailboxid&" in query + "&"]
        by_id = [query for query in mailbox_reads if "$filter=mailboxid eq" in query]
        assert len(changed_rows) == 1
        present = tenant.control("GET", "truth")["mailboxes"] - 1
        assert len(id_listing) == math.ceil(present / 5000)  # every id, 5,000 to a page
        assert len(by_id) == 1
        assert len(changed_rows) + len(id_listing) + len(by_id) == len(mailbox_reads)
        owner_reads = [
            query_of(entry)
            for entry in api_calls(tenant, since, surface="dataverse")
            if entry["path"].endswith(("/systemusers", "/queues"))
        ]
        assert owner_reads and all("modifiedon gt" in q or "userid eq" in q or "queueid eq" in q for q in owner_reads)
        graph_calls = api_calls(tenant, since, surface="graph")
        graph_batches = [entry for entry in graph_calls if entry["path"].endswith("$batch")]
        # The two changed mailboxes in one $batch, the one that came back in another; the disabled
        # owner's mailbox is not worth asking about.
        assert len(graph_batches) == 2

        def reloaded(mailbox):
            return InventoryMailbox.objects.get(pk=mailbox.pk)

        assert reloaded(to_outlook).classification == Classification.OUTLOOK_CLIENT
        assert reloaded(to_compliant).classification == Classification.COMPLIANT_SSS
        disabled = reloaded(to_disable)
        assert disabled.owner_disabled and disabled.classification == Classification.NO_EMAIL
        assert reloaded(to_delete).removed_at is not None
        assert reloaded(came_back).removed_at is None
        resolved = reloaded(alerted)
        assert resolved.open_error_alerts == 0
        assert "alerts_present" not in [b["code"] for b in resolved.blockers]

        history = {change.mailbox_id: change.changes for change in InventoryChange.objects.filter(sync=second)}
        assert history[to_outlook.pk]["classification"] == ["compliant_sss", "outlook_client"]
        assert history[to_outlook.pk]["act_delivery"] == [1, 0]
        assert history[to_compliant.pk]["classification"] == ["email_router", "compliant_sss"]
        assert history[to_compliant.pk]["profile_id"] == [None, str(exchange_online)]
        assert history[to_disable.pk]["classification"] == ["compliant_sss", "no_email"]
        assert history[to_delete.pk] == {"removed": [False, True]}
        assert history[came_back.pk] == {"removed": [True, False]}
        assert len(history) == 5
        assert second.high_water_mark >= first.high_water_mark

        # Nothing changed since: a third run reads no mailbox rows and changes nothing.
        third = run_discovery(redis_queue, kind=SyncKind.INCREMENTAL)
        assert (third.mailboxes_seen, third.mailboxes_changed, third.mailboxes_removed) == (0, 0, 0)
    finally:
        reseed(tenant)
