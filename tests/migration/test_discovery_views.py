"""The discovery page: who may see it, "Sync now", and a running run's self-refreshing progress."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse
from django.utils import timezone

from migration.jobs import inventory_sync_job
from migration.models import InventorySync, OrganizationSnapshot, SyncKind, SyncStatus
from portal.audit.models import AuditEvent
from portal.m365.config import M365Config

pytestmark = pytest.mark.django_db

PAGE = reverse("migration:discovery")
SYNC = reverse("migration:discovery_sync")
INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.I)
META_REFRESH = '<meta http-equiv="refresh" content="5">'


@pytest.fixture
def lead_client(migration_lead, client_for):
    return client_for(migration_lead)


def queued_jobs(queue) -> list[str]:
    return [job.func_name for job in queue.get_jobs()]


# --- access -----------------------------------------------------------------------------------------------


def test_the_migration_lead_sees_the_page(lead_client):
    response = lead_client.get(PAGE)
    assert response.status_code == 200
    html = response.content.decode()
    assert '<h1 class="govuk-heading-l">Discovery</h1>' in html
    assert "Discovery has not run yet" in html
    assert "Sync now" in html and f'action="{SYNC}"' in html
    assert META_REFRESH not in html


@pytest.mark.parametrize("persona", ["requester", "outsider", "approver", "auditor"])
def test_others_are_refused(persona, request, client_for):
    client = client_for(request.getfixturevalue(persona))
    assert client.get(PAGE).status_code == 403
    assert client.post(SYNC, {"kind": SyncKind.FULL}).status_code == 403
    assert not InventorySync.objects.exists()


def test_signed_out_people_are_sent_to_sign_in(client):
    response = client.get(PAGE)
    assert response.status_code == 302
    assert reverse("accounts:sign_in") in response["Location"]


def test_sync_now_only_answers_post(lead_client):
    assert lead_client.get(SYNC).status_code == 405


# --- sync now -----------------------------------------------------------------------------------------------


def test_sync_now_queues_a_run_and_audits_the_request(
    lead_client, migration_lead, m365_settings, redis_queue, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = lead_client.post(SYNC, {"kind": SyncKind.FULL}, follow=True)

    assert response.redirect_chain == [(PAGE, 302)]
    sync = InventorySync.objects.get()
    assert (sync.kind, sync.status, sync.requested_by) == (SyncKind.FULL, SyncStatus.QUEUED, migration_lead)
    assert queued_jobs(redis_queue) == [f"{inventory_sync_job.__module__}.{inventory_sync_job.__name__}"]
    event = AuditEvent.objects.get(action="inventory.sync_requested")
    assert event.actor_id == migration_lead.pk
    html = response.content.decode()
    assert "Discovery has started" in html
    assert "Discovery is waiting for a background worker." in html
    assert META_REFRESH in html


def test_the_first_incremental_request_says_it_reads_everything(lead_client, m365_settings, redis_queue):
    response = lead_client.post(SYNC, {"kind": SyncKind.INCREMENTAL}, follow=True)
    assert "because there is no earlier run to continue from" in response.content.decode()
    assert InventorySync.objects.get().kind == SyncKind.FULL


def test_sync_now_while_a_run_is_in_progress_shows_that_run(lead_client, m365_settings, redis_queue):
    running = InventorySync.objects.create(
        kind=SyncKind.FULL,
        status=SyncStatus.RUNNING,
        requested_at=timezone.now(),
        started_at=timezone.now(),
        phase="Reading mailboxes and checking Exchange Online",
        mailboxes_seen=12000,
        presence_checked=11000,
        requests_made=560,
    )

    response = lead_client.post(SYNC, {"kind": SyncKind.INCREMENTAL}, follow=True)

    assert InventorySync.objects.get().pk == running.pk
    html = response.content.decode()
    assert "Discovery is already running" in html
    assert "Full discovery is running: reading mailboxes and checking exchange online." in html
    assert "12,000 mailboxes read, 11,000 checked in Exchange Online" in html
    assert "560 requests to Microsoft 365" in html
    assert META_REFRESH in html
    assert "Sync now" not in html  # no second run to ask for


def test_a_choice_is_required(lead_client, m365_settings):
    response = lead_client.post(SYNC, {})
    assert response.status_code == 400
    assert "Select what discovery should read" in response.content.decode()
    assert not InventorySync.objects.exists()


def test_without_microsoft_365_the_page_says_so(lead_client, settings):
    settings.M365 = M365Config(enabled=False)
    response = lead_client.post(SYNC, {"kind": SyncKind.FULL})
    assert response.status_code == 400
    assert "not connected to Microsoft 365" in response.content.decode()


# --- the list of runs -------------------------------------------------------------------------------------


def test_finished_runs_are_listed_with_counts_timings_and_problems(lead_client, migration_lead):
    started = timezone.now() - timezone.timedelta(minutes=3, seconds=20)
    InventorySync.objects.create(
        kind=SyncKind.FULL,
        status=SyncStatus.SUCCEEDED,
        requested_by=migration_lead,
        requested_at=started,
        started_at=started,
        finished_at=timezone.now(),
        mailboxes_seen=20002,
        mailboxes_changed=20002,
        presence_checked=18610,
        requests_made=951,
        error="Exchange Online hosting could not be checked for 20 mailboxes; the next run checks them again.",
    )
    InventorySync.objects.create(
        kind=SyncKind.INCREMENTAL,
        status=SyncStatus.FAILED,
        requested_at=timezone.now(),
        started_at=timezone.now(),
        finished_at=timezone.now(),
        error="Microsoft 365 refused or failed a request: dataverse 503",
    )
    OrganizationSnapshot.objects.create(
        pk=1, name="Department for Example Services", email_connection_channel=0, taken_at=timezone.now()
    )

    html = lead_client.get(PAGE).content.decode()

    assert "20,002" in html and "18,610" in html and "951" in html
    assert "3 min 20 s" in html
    assert "could not be checked for 20 mailboxes" in html
    assert "dataverse 503" in html
    assert "Nightly schedule" in html  # the failed run had no person behind it
    assert "Department for Example Services" in html and "Server-side synchronisation" in html
    assert META_REFRESH not in html


def test_the_page_uses_no_inline_script(lead_client):
    InventorySync.objects.create(kind=SyncKind.FULL, status=SyncStatus.RUNNING, requested_at=timezone.now())
    html = lead_client.get(PAGE).content.decode()
    assert META_REFRESH in html
    assert not INLINE_SCRIPT.search(html)


def test_the_page_reads_a_fixed_number_of_queries_however_many_runs(lead_client, django_assert_num_queries):
    for _ in range(15):
        InventorySync.objects.create(kind=SyncKind.FULL, status=SyncStatus.SUCCEEDED, requested_at=timezone.now())
    with django_assert_num_queries(7):  # session, user, permissions, runs, last success, organisation, messages
        lead_client.get(PAGE)
