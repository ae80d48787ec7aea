"""Requesting, claiming and failing discovery runs; reclassifying stored mailboxes; Graph and Dataverse failures."""

from __future__ import annotations

import datetime as dt
import time
import uuid

import pytest
from django.utils import timezone
from rq import SimpleWorker

from migration.models import (
    Classification,
    ExchangePresence,
    ImportStatus,
    InventoryChange,
    InventoryMailbox,
    InventorySync,
    LegacyMailboxLink,
    LegacySource,
    LegacySourceKind,
    OwnerType,
    Readiness,
    RouterImport,
    ServerProfile,
    SyncKind,
    SyncStatus,
)
from migration.services import discovery
from migration.services.discovery import (
    DiscoveryError,
    inventory_reclassify,
    inventory_sync_request,
    inventory_sync_run,
)
from portal.audit.models import AuditEvent
from portal.exceptions import ConfigurationError
from portal.m365.config import M365Config


def run_worker(queue) -> None:
    SimpleWorker([queue], connection=queue.connection).work(burst=True)


def a_sync(**fields) -> InventorySync:
    fields.setdefault("kind", SyncKind.FULL)
    fields.setdefault("status", SyncStatus.QUEUED)
    fields.setdefault("requested_at", timezone.now())
    return InventorySync.objects.create(**fields)


# --- one run at a time ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_request_queues_a_run_and_records_who_asked(m365_settings, migration_lead, redis_queue):
    sync = inventory_sync_request(actor=migration_lead, kind=SyncKind.FULL)

    assert (sync.status, sync.kind, sync.requested_by) == (SyncStatus.QUEUED, SyncKind.FULL, migration_lead)
    event = AuditEvent.objects.get(action="inventory.sync_requested")
    assert (event.actor_id, event.object_id) == (migration_lead.pk, str(sync.pk))


@pytest.mark.django_db
def test_a_second_request_while_one_is_queued_or_running_returns_that_one(
    m365_settings, migration_lead, platform_admin, redis_queue
):
    first = inventory_sync_request(actor=migration_lead, kind=SyncKind.FULL)
    assert inventory_sync_request(actor=platform_admin, kind=SyncKind.INCREMENTAL).pk == first.pk
    InventorySync.objects.filter(pk=first.pk).update(status=SyncStatus.RUNNING, started_at=timezone.now())
    assert inventory_sync_request(actor=platform_admin, kind=SyncKind.FULL).pk == first.pk

    assert InventorySync.objects.count() == 1
    assert AuditEvent.objects.filter(action="inventory.sync_requested").count() == 3


@pytest.mark.django_db
def test_an_incremental_request_without_an_earlier_run_is_a_full_run(m365_settings, redis_queue):
    assert inventory_sync_request(actor=None, kind=SyncKind.INCREMENTAL).kind == SyncKind.FULL


@pytest.mark.django_db
def test_an_incremental_request_continues_from_the_last_successful_run(m365_settings, redis_queue):
    a_sync(status=SyncStatus.SUCCEEDED, finished_at=timezone.now(), high_water_mark=timezone.now())
    assert inventory_sync_request(actor=None, kind=SyncKind.INCREMENTAL).kind == SyncKind.INCREMENTAL


@pytest.mark.django_db
def test_a_run_abandoned_by_its_worker_does_not_block_new_ones(m365_settings, redis_queue):
    long_ago = timezone.now() - dt.timedelta(seconds=discovery.SYNC_JOB_TIMEOUT + 60)
    stuck = a_sync(status=SyncStatus.RUNNING, requested_at=long_ago, started_at=long_ago)

    fresh = inventory_sync_request(actor=None, kind=SyncKind.FULL)

    assert fresh.pk != stuck.pk
    stuck.refresh_from_db()
    assert stuck.status == SyncStatus.FAILED and "stopped without finishing" in stuck.error
    assert AuditEvent.objects.filter(action="inventory.sync_abandoned", object_id=str(stuck.pk)).exists()


@pytest.mark.django_db
def test_a_duplicate_job_for_a_run_already_taken_does_nothing(m365_settings):
    sync = a_sync(status=SyncStatus.RUNNING, started_at=timezone.now())
    assert inventory_sync_run(sync_id=sync.pk) is None
    sync.refresh_from_db()
    assert sync.status == SyncStatus.RUNNING


@pytest.mark.django_db
def test_a_run_is_not_started_while_another_is_running(m365_settings):
    a_sync(status=SyncStatus.RUNNING, started_at=timezone.now())
    queued = a_sync()

    assert inventory_sync_run(sync_id=queued.pk) is None

    queued.refresh_from_db()
    assert queued.status == SyncStatus.FAILED
    assert queued.error == "Another discovery run was already running."


@pytest.mark.django_db
def test_a_request_fails_clearly_when_the_queue_is_down(m365_settings, monkeypatch, django_capture_on_commit_callbacks):
    def unavailable(*args, **kwargs):
        raise ConnectionError("Redis is down")

    monkeypatch.setattr("portal.queue.django_rq.get_queue", unavailable)
    with django_capture_on_commit_callbacks(execute=True):
        sync = inventory_sync_request(actor=None, kind=SyncKind.FULL)

    sync.refresh_from_db()
    assert sync.status == SyncStatus.FAILED
    assert "queue is unavailable" in sync.error


@pytest.mark.django_db
def test_requests_are_refused_without_microsoft_365_or_with_an_unknown_kind(settings, migration_lead):
    settings.M365 = M365Config(enabled=False)
    with pytest.raises(ConfigurationError, match="not connected to Microsoft 365"):
        inventory_sync_request(actor=migration_lead, kind=SyncKind.FULL)
    with pytest.raises(DiscoveryError, match="full or an incremental"):
        inventory_sync_request(actor=migration_lead, kind="everything")
    assert not InventorySync.objects.exists()


# --- failures while running --------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_run_dataverse_keeps_failing_is_marked_failed_with_the_reason(m365_settings, fresh_sim, redis_queue):
    fresh_sim.control(
        "PUT", "faults", {"rate_5xx": 1.0, "surfaces": ["dataverse"], "operations": ["GET organizations"]}
    )
    sync = inventory_sync_request(actor=None, kind=SyncKind.FULL)

    run_worker(redis_queue)

    sync.refresh_from_db()
    assert sync.status == SyncStatus.FAILED
    assert sync.error.startswith("Microsoft 365 refused or failed a request: dataverse 5")
    assert sync.finished_at is not None
    assert AuditEvent.objects.filter(action="inventory.sync_failed", object_id=str(sync.pk)).exists()
    assert redis_queue.failed_job_registry.count == 1  # the job re-raised


@pytest.mark.django_db(transaction=True)
def test_graph_failures_leave_mailboxes_unchecked_and_the_next_run_checks_them(
    m365_settings, fresh_sim, redis_queue, monkeypatch
):
    # An incremental run right after the seed would (safely) read the seed's rows again.
    seeded = dt.datetime.fromisoformat(fresh_sim.control("GET", "rows/mailboxes?limit=1")["value"][0]["modifiedon"])
    wait = seeded + discovery.MODIFIED_OVERLAP + dt.timedelta(seconds=1) - dt.datetime.now(dt.UTC)
    time.sleep(max(0.0, wait.total_seconds()))
    # One Graph worker, so the four failures the client retries through all hit the first $batch.
    monkeypatch.setattr(discovery, "GRAPH_WORKERS", 1)
    fresh_sim.control("PUT", "faults", {"rate_5xx": 1.0, "surfaces": ["graph"], "max_faults": 4})
    first = inventory_sync_request(actor=None, kind=SyncKind.FULL)
    run_worker(redis_queue)
    first.refresh_from_db()

    assert first.status == SyncStatus.SUCCEEDED
    assert "could not be checked for 20 mailboxes" in first.error
    unchecked = InventoryMailbox.objects.filter(
        exchange_presence=ExchangePresence.UNKNOWN, owner_disabled=False
    ).exclude(email_address="")
    assert unchecked.count() == 20
    assert all(
        "presence_unknown" in [b["code"] for b in row.blockers] for row in unchecked if row.readiness != "compliant"
    )

    fresh_sim.control("DELETE", "faults")
    second = inventory_sync_request(actor=None, kind=SyncKind.INCREMENTAL)
    run_worker(redis_queue)
    second.refresh_from_db()

    assert second.status == SyncStatus.SUCCEEDED and second.error == ""
    assert second.presence_checked == 20
    assert not unchecked.all().exists()  # a fresh query, not the rows read above


# --- reclassification ----------------------------------------------------------------------------------


def stored_mailbox(**fields) -> InventoryMailbox:
    now = timezone.now()
    values = {
        "dataverse_id": uuid.uuid4(),
        "name": "Casework",
        "email_address": "casework@example.gov.uk",
        "owner_type": OwnerType.QUEUE,
        "incoming_delivery": 2,
        "outgoing_delivery": 2,
        "act_delivery": 2,
        "email_approval": 1,
        "exchange_presence": ExchangePresence.EXCHANGE_ONLINE,
        "classification": Classification.SSS_WRONG_PROFILE,
        "readiness": Readiness.READY,
        "first_seen_at": now,
        "last_seen_at": now,
        **fields,
    }
    return InventoryMailbox.objects.create(**values)


@pytest.mark.django_db
def test_reclassifying_after_a_router_import_makes_a_listed_mailbox_an_email_router_one(platform_admin):
    hybrid = ServerProfile.objects.create(
        dataverse_id=uuid.uuid4(), name="Exchange 2016 (hybrid)", server_type=2, taken_at=timezone.now()
    )
    listed = stored_mailbox(profile_id=hybrid.dataverse_id, profile_name=hybrid.name)
    untouched = stored_mailbox(profile_id=hybrid.dataverse_id, email_address="other@example.gov.uk")
    inventory_reclassify(mailbox_ids=[listed.pk, untouched.pk])  # as discovery left them
    source = LegacySource.objects.create(
        kind=LegacySourceKind.EMAIL_ROUTER, name="ROUTER01", created_at=timezone.now(), created_by=platform_admin
    )
    router_import = RouterImport.objects.create(
        source=source,
        status=ImportStatus.SUCCEEDED,
        file_name="Microsoft.Crm.Tools.EmailAgent.xml",
        file_size=1,
        file_sha256="0" * 64,
        content=b"<Configuration/>",
        uploaded_by=platform_admin,
        uploaded_at=timezone.now(),
    )
    LegacyMailboxLink.objects.create(
        source=source, router_import=router_import, mailbox=listed, email_address=listed.email_address
    )

    assert inventory_reclassify(mailbox_ids=[listed.pk, untouched.pk]) == 1

    listed.refresh_from_db()
    assert listed.classification == Classification.EMAIL_ROUTER
    assert "imported Email Router configuration" in listed.explanation
    change = InventoryChange.objects.get(mailbox=listed)
    assert change.sync is None
    assert change.changes == {"classification": ["sss_wrong_profile", "email_router"]}
    untouched.refresh_from_db()
    assert untouched.classification == Classification.SSS_WRONG_PROFILE
    # Nothing left to change.
    assert inventory_reclassify(mailbox_ids=[listed.pk, untouched.pk]) == 0


@pytest.mark.django_db
def test_reclassifying_uses_the_organisations_approval_switches_from_the_last_discovery():
    from migration.models import OrganizationSnapshot

    OrganizationSnapshot.objects.create(
        pk=1, require_approval_user_email=False, require_approval_queue_email=True, taken_at=timezone.now()
    )
    user = stored_mailbox(owner_type=OwnerType.USER, incoming_delivery=1, email_approval=0, readiness=Readiness.BLOCKED)
    queue = stored_mailbox(owner_type=OwnerType.QUEUE, incoming_delivery=3, email_approval=0)

    inventory_reclassify(mailbox_ids=[user.pk, queue.pk])

    user.refresh_from_db()
    queue.refresh_from_db()
    assert (user.classification, user.readiness, user.blockers) == (Classification.OUTLOOK_CLIENT, Readiness.READY, [])
    assert queue.classification == Classification.FORWARD_MAILBOX
    assert [blocker["code"] for blocker in queue.blockers] == ["address_not_approved"]
