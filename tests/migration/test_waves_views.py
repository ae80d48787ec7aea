"""The wave pages: who may see and do what, building a wave step by step, approving, starting, live
progress, pre-flight results and export, rollback and retry buttons, query counts and bad input."""

from __future__ import annotations

import csv
import io
import re

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from django.utils import timezone

from migration.models import (
    Classification,
    OwnerType,
    PreflightStatus,
    Readiness,
    Wave,
    WaveMailbox,
    WaveMailboxState,
    WaveStatus,
)
from portal.audit.models import AuditEvent
from tests.migration.factories import (
    InventoryMailboxFactory,
    PreflightResultFactory,
    PreflightRunFactory,
    WaveFactory,
    WaveMailboxFactory,
    inventory_mailboxes,
)

pytestmark = pytest.mark.django_db


def legacy(**fields):
    fields.setdefault("classification", Classification.EMAIL_ROUTER)
    fields.setdefault("readiness", Readiness.READY)
    return InventoryMailboxFactory(**fields)


def page_url(wave) -> str:
    return reverse("migration:wave", args=[wave.pk])


def action_url(wave, action: str) -> str:
    return reverse("migration:wave_action", args=[wave.pk, action])


def error_summary(response) -> str:
    html = response.content.decode()
    start = html.index('class="govuk-error-summary"')
    return html[start : html.index("</ul>", start)]


@pytest.fixture
def lead_client(client_for, migration_lead):
    return client_for(migration_lead)


@pytest.fixture
def admin_client(client_for, platform_admin):
    return client_for(platform_admin)


@pytest.fixture
def wave(migration_lead):
    wave = WaveFactory(created_by=migration_lead, name="Finance queues")
    WaveMailboxFactory(wave=wave, mailbox=legacy(name="Finance enquiries", owner_type=OwnerType.QUEUE))
    return wave


# --- who may see and do what ---------------------------------------------------------------------------


def test_leads_and_platform_admins_see_waves_and_nobody_else(
    client, client_for, wave, migration_lead, platform_admin, requester, approver, auditor, outsider
):
    preflight = PreflightRunFactory(wave=wave)
    urls = [
        reverse("migration:waves"),
        page_url(wave),
        reverse("migration:wave_progress", args=[wave.pk]),
        reverse("migration:wave_preflight", args=[wave.pk, preflight.pk]),
        reverse("migration:wave_preflight_export", args=[wave.pk, preflight.pk]),
    ]
    for url in urls:
        assert client_for(migration_lead).get(url).status_code == 200, url
        assert client_for(platform_admin).get(url).status_code == 200, url
        for person in (requester, approver, auditor, outsider):
            assert client_for(person).get(url).status_code == 403, url
        response = client.get(url)
        assert response.status_code == 302 and "sign-in" in response.url


def test_only_migration_leads_create_and_run_waves(client, client_for, wave, platform_admin, auditor):
    for person in (platform_admin, auditor):
        person_client = client_for(person)
        assert person_client.get(reverse("migration:wave_new")).status_code == 403
        for action in ("preflight", "submit", "start", "pause", "resume", "cancel", "retry", "rollback"):
            assert person_client.post(action_url(wave, action)).status_code == 403
    assert client.post(action_url(wave, "start")).status_code == 302
    wave.refresh_from_db()
    assert wave.status == WaveStatus.DRAFT


def test_only_platform_admins_record_a_decision(lead_client, wave):
    response = lead_client.post(reverse("migration:wave_decide", args=[wave.pk]), {"decision": "approve"})
    assert response.status_code == 403


def test_the_list_shows_each_wave_with_its_status(lead_client, wave):
    response = lead_client.get(reverse("migration:waves"))
    assert "Finance queues" in response.content.decode() and "Draft" in response.content.decode()
    assert reverse("migration:wave_new") in response.content.decode()


# --- building a wave step by step ----------------------------------------------------------------------


def test_a_wave_is_built_from_inventory_filters(lead_client, migration_lead):
    legacy(team_name="Finance", name="Payroll")
    legacy(team_name="Legal")

    response = lead_client.post(
        reverse("migration:wave_new"), {"name": "Finance", "description": "Month one", "source": "filters"}
    )
    assert response.url == reverse("migration:wave_new_filters")
    response = lead_client.get(reverse("migration:wave_new_filters"), {"team": "Finance"})
    assert "1 mailbox matches" in response.content.decode()
    response = lead_client.post(reverse("migration:wave_new_filters"), {"query": "team=Finance"})
    assert response.url == reverse("migration:wave_new_check")
    check = lead_client.get(response.url).content.decode()
    assert "Finance" in check and "Team: Finance" in check

    response = lead_client.post(reverse("migration:wave_new_check"), follow=True)

    wave = Wave.objects.get(name="Finance")
    assert response.redirect_chain[-1][0] == page_url(wave)
    assert [entry.mailbox.name for entry in wave.mailboxes.all()] == ["Payroll"]
    assert wave.created_by == migration_lead and wave.description == "Month one"
    assert "Wave created with 1 mailbox" in response.content.decode()


def test_the_inventory_filters_can_be_carried_into_a_new_wave(lead_client):
    legacy(team_name="Finance")
    lead_client.get(reverse("migration:wave_new"), {"team": "Finance", "sort": "name"})
    lead_client.post(reverse("migration:wave_new"), {"name": "From list", "source": "filters"})
    response = lead_client.get(reverse("migration:wave_new_filters"))
    assert "1 mailbox matches" in response.content.decode()


def test_a_wave_is_built_from_a_csv_file(lead_client):
    legacy(email_address="payroll@example.gov.uk")
    lead_client.post(reverse("migration:wave_new"), {"name": "From a file", "source": "csv"})

    response = lead_client.post(
        reverse("migration:wave_new_upload"),
        {"csv_file": SimpleUploadedFile("wave.csv", b"Email address\npayroll@example.gov.uk\n", "text/csv")},
    )
    assert response.url == reverse("migration:wave_new_check")
    assert "wave.csv" in lead_client.get(response.url).content.decode()
    lead_client.post(reverse("migration:wave_new_check"))

    assert Wave.objects.get(name="From a file").mailboxes.get().mailbox.email_address == "payroll@example.gov.uk"


def test_a_csv_with_problems_lists_them_and_creates_nothing(lead_client):
    lead_client.post(reverse("migration:wave_new"), {"name": "Bad file", "source": "csv"})
    response = lead_client.post(
        reverse("migration:wave_new_upload"),
        {"csv_file": SimpleUploadedFile("wave.csv", b"nobody@example.gov.uk\nnot-an-address\n", "text/csv")},
    )
    assert response.status_code == 200
    summary = error_summary(response)
    assert "Row 1: there is no mailbox with the address" in summary
    assert "Row 2: &#x27;not-an-address&#x27; is not an email address" in summary
    assert not Wave.objects.exists()


@pytest.mark.parametrize(
    ("upload", "message"),
    [
        (SimpleUploadedFile("wave.xlsx", b"PK\x03\x04", "application/zip"), "must be a CSV file"),
        (SimpleUploadedFile("wave.csv", b"", "text/csv"), "The selected file is empty"),
        (SimpleUploadedFile("wave.csv", "\ufeffa@b.c".encode("utf-16"), "text/csv"), "no mailbox"),
    ],
)
def test_unusable_uploads_get_an_error_summary(lead_client, upload, message):
    lead_client.post(reverse("migration:wave_new"), {"name": "Bad", "source": "csv"})
    response = lead_client.post(reverse("migration:wave_new_upload"), {"csv_file": upload})
    assert response.status_code == 200
    assert message in error_summary(response)


def test_the_questions_must_be_answered(lead_client):
    response = lead_client.post(reverse("migration:wave_new"), {"name": "", "source": ""})
    summary = error_summary(response)
    assert "Enter the name of the wave" in summary and "Select how you want to choose the mailboxes" in summary
    # Skipping ahead goes back to the first question.
    assert lead_client.get(reverse("migration:wave_new_check")).url == reverse("migration:wave_new")
    assert lead_client.get(reverse("migration:wave_new_upload")).url == reverse("migration:wave_new")


def test_filters_that_no_longer_fit_are_not_silently_dropped(lead_client):
    legacy(team_name="Finance")
    lead_client.post(reverse("migration:wave_new"), {"name": "Narrow", "source": "filters"})
    session = lead_client.session
    session["wave_new"] = {**session["wave_new"], "filters_query": "team=Finance&legacy_source=999"}
    session.save()

    response = lead_client.post(reverse("migration:wave_new_check"))

    assert response.url == reverse("migration:wave_new_filters")
    assert not Wave.objects.exists()


def test_a_wave_with_nothing_to_migrate_is_explained_on_the_check_page(lead_client):
    InventoryMailboxFactory(team_name="Done")  # compliant
    lead_client.post(reverse("migration:wave_new"), {"name": "Nothing", "source": "filters"})
    lead_client.post(reverse("migration:wave_new_filters"), {"query": "team=Done"})
    response = lead_client.post(reverse("migration:wave_new_check"))
    assert response.status_code == 400
    assert "None of the chosen mailboxes can be migrated" in error_summary(response)


# --- the wave page and its buttons -----------------------------------------------------------------------


def test_the_creator_sees_a_preflight_button_and_submits_after_it_finished(lead_client, wave):
    html = lead_client.get(page_url(wave)).content.decode()
    assert "Run the pre-flight" in html and "Submit for approval" not in html
    PreflightRunFactory(wave=wave, summary={"ready": 1, "blocked": 0, "already_compliant": 0, "gone": 0})

    html = lead_client.get(page_url(wave)).content.decode()
    assert "Submit for approval" in html and "1 would migrate" in html

    lead_client.post(action_url(wave, "submit"))
    wave.refresh_from_db()
    assert wave.status == WaveStatus.AWAITING_APPROVAL


def test_a_platform_admin_other_than_the_creator_approves_on_the_page(admin_client, lead_client, wave, platform_admin):
    preflight = PreflightRunFactory(wave=wave)
    wave.status = WaveStatus.AWAITING_APPROVAL
    wave.save()
    assert "Do you approve this wave?" not in lead_client.get(page_url(wave)).content.decode()
    html = admin_client.get(page_url(wave)).content.decode()
    assert "Do you approve this wave?" in html
    assert re.search(rf'<input type="hidden" name="preflight" value="{preflight.pk}"', html)

    response = admin_client.post(
        reverse("migration:wave_decide", args=[wave.pk]),
        {"preflight": preflight.pk, "decision": "approve", "note": "Fine"},
    )

    assert response.status_code == 302
    wave.refresh_from_db()
    assert (wave.status, wave.approved_by, wave.approved_preflight) == (WaveStatus.APPROVED, platform_admin, preflight)
    assert "Start the wave" in lead_client.get(page_url(wave)).content.decode()


def test_the_creator_is_told_another_admin_must_approve(client_for, wave):
    from portal.accounts.roles import Role
    from tests.factories import UserFactory

    both = UserFactory(username="both", roles=[Role.PLATFORM_ADMIN, Role.MIGRATION_LEAD])
    mine = WaveFactory(created_by=both, status=WaveStatus.AWAITING_APPROVAL)
    preflight = PreflightRunFactory(wave=mine)
    both_client = client_for(both)

    assert "another platform admin must approve it" in both_client.get(page_url(mine)).content.decode()
    both_client.post(
        reverse("migration:wave_decide", args=[mine.pk]), {"preflight": preflight.pk, "decision": "approve"}
    )
    mine.refresh_from_db()
    assert mine.status == WaveStatus.AWAITING_APPROVAL


def test_returning_a_wave_needs_a_reason(admin_client, wave):
    preflight = PreflightRunFactory(wave=wave)
    wave.status = WaveStatus.AWAITING_APPROVAL
    wave.save()

    response = admin_client.post(
        reverse("migration:wave_decide", args=[wave.pk]), {"preflight": preflight.pk, "decision": "reject"}
    )

    assert response.status_code == 400
    assert "Enter why the wave is being returned" in error_summary(response)
    wave.refresh_from_db()
    assert wave.status == WaveStatus.AWAITING_APPROVAL


def test_starting_from_the_page_queues_the_dispatch(
    lead_client, wave, platform_admin, redis_queue, django_capture_on_commit_callbacks
):
    Wave.objects.filter(pk=wave.pk).update(status=WaveStatus.APPROVED, approved_by=platform_admin)

    with django_capture_on_commit_callbacks(execute=True):
        response = lead_client.post(action_url(wave, "start"), follow=True)

    assert "The wave has started" in response.content.decode()
    assert [(job.func_name, job.args) for job in redis_queue.get_jobs()] == [
        ("migration.jobs.wave_dispatch_job", (wave.pk,))
    ]
    html = response.content.decode()
    assert "Pause" in html and "Start the wave" not in html
    assert 'http-equiv="refresh"' in html and "wave-progress.js" in html


def test_a_refused_transition_is_a_message_not_an_error(lead_client, wave):
    response = lead_client.post(action_url(wave, "start"), follow=True)
    assert response.status_code == 200
    assert "The wave is draft, so you cannot start it." in response.content.decode()


def test_cancelling_from_the_page(lead_client, wave):
    response = lead_client.post(action_url(wave, "cancel"), {"reason": "Not now"}, follow=True)
    wave.refresh_from_db()
    assert wave.status == WaveStatus.CANCELLED
    assert wave.mailboxes.get().state == WaveMailboxState.CANCELLED
    assert "The wave is cancelled" in response.content.decode()
    assert AuditEvent.objects.get(action="wave.cancelled").reason == "Not now"


def test_a_migrated_mailbox_is_rolled_back_from_the_page(lead_client, wave, redis_queue):
    Wave.objects.filter(pk=wave.pk).update(status=WaveStatus.COMPLETED)
    entry = wave.mailboxes.get()
    WaveMailbox.objects.filter(pk=entry.pk).update(
        state=WaveMailboxState.MIGRATED, active=False, snapshot={"mailbox": {"incomingemaildeliverymethod": 1}}
    )
    assert "Roll back" in lead_client.get(page_url(wave)).content.decode()

    response = lead_client.post(reverse("migration:wave_mailbox_rollback", args=[wave.pk, entry.pk]), follow=True)

    entry.refresh_from_db()
    assert entry.state == WaveMailboxState.ROLLING_BACK
    assert "will be rolled back" in response.content.decode()


def test_retry_failed_only_runs_just_the_mailboxes_needing_attention(lead_client, wave, redis_queue):
    Wave.objects.filter(pk=wave.pk).update(status=WaveStatus.PAUSED)
    failed = wave.mailboxes.get()
    WaveMailbox.objects.filter(pk=failed.pk).update(state=WaveMailboxState.NEEDS_ATTENTION, active=False)
    migrated = WaveMailboxFactory(wave=wave, state=WaveMailboxState.MIGRATED, active=False)
    assert "Retry failed only" in lead_client.get(page_url(wave)).content.decode()

    lead_client.post(action_url(wave, "retry"))

    failed.refresh_from_db()
    migrated.refresh_from_db()
    assert failed.state != WaveMailboxState.NEEDS_ATTENTION
    assert migrated.state == WaveMailboxState.MIGRATED


def test_priorities_are_edited_on_a_draft_wave(lead_client, wave):
    second = WaveMailboxFactory(wave=wave, mailbox=legacy(name="Zed"), position=2)
    lead_client.post(reverse("migration:wave_mailbox_priority", args=[wave.pk, second.pk]), {"priority": "1"})
    second.refresh_from_db()
    assert (second.priority, second.position) == (1, 2)  # queues still go first
    response = lead_client.post(
        reverse("migration:wave_mailbox_priority", args=[wave.pk, second.pk]), {"priority": "lots"}, follow=True
    )
    assert "Priority must be a whole number" in response.content.decode()


# --- live progress ---------------------------------------------------------------------------------------


def test_progress_json_has_the_bar_counts_and_the_page_states(lead_client, migration_lead):
    wave = WaveFactory(created_by=migration_lead, status=WaveStatus.RUNNING)
    done = WaveMailboxFactory(wave=wave, state=WaveMailboxState.MIGRATED, position=1)
    failing = WaveMailboxFactory(wave=wave, state=WaveMailboxState.NEEDS_ATTENTION, position=2, last_error="401")
    WaveMailboxFactory(wave=wave, state=WaveMailboxState.RUNNING, position=3)
    WaveMailboxFactory(wave=wave, state=WaveMailboxState.PENDING, position=4)

    data = lead_client.get(reverse("migration:wave_progress", args=[wave.pk])).json()

    assert (data["total"], data["finished"], data["percent"], data["active"]) == (4, 2, 50, True)
    assert data["status"] == "running" and data["status_label"] == "Running"
    assert data["by_state"]["migrated"] == 1 and data["by_state"]["pending"] == 1
    entries = {entry["id"]: entry for entry in data["entries"]}
    assert entries[done.pk]["label"] == "Migrated" and "green" in entries[done.pk]["tag"]
    assert entries[failing.pk]["error"] == "401"


def test_the_page_shows_the_progress_bar_accessibly(lead_client, migration_lead):
    wave = WaveFactory(created_by=migration_lead, status=WaveStatus.RUNNING, started_at=timezone.now())
    WaveMailboxFactory(wave=wave, state=WaveMailboxState.MIGRATED)
    WaveMailboxFactory(wave=wave, state=WaveMailboxState.PENDING)
    html = lead_client.get(page_url(wave)).content.decode()
    assert 'role="progressbar"' in html and 'aria-valuenow="50"' in html and "portal-w-50" in html
    assert 'data-progress-url="/' in html and "Refresh now" in html


def test_a_finished_wave_does_not_refresh(lead_client, migration_lead):
    wave = WaveFactory(created_by=migration_lead, status=WaveStatus.COMPLETED)
    WaveMailboxFactory(wave=wave, state=WaveMailboxState.MIGRATED)
    html = lead_client.get(page_url(wave)).content.decode()
    assert 'http-equiv="refresh"' not in html and 'data-active="false"' in html


def test_the_schedule_shows_when_mailboxes_are_expected_to_start(lead_client, migration_lead):
    wave = WaveFactory(created_by=migration_lead, test_enable_cap=2)
    for position in range(1, 4):
        WaveMailboxFactory(wave=wave, position=position)
    html = lead_client.get(page_url(wave)).content.decode()
    assert "When the mailboxes are expected to start" in html
    assert "1 to 2" in html and "Window 2" in html


# --- pre-flight results ----------------------------------------------------------------------------------


def test_the_preflight_page_lists_changes_and_findings_with_fixes(lead_client, wave):
    run = PreflightRunFactory(wave=wave, summary={"ready": 0, "blocked": 1, "already_compliant": 0, "gone": 0})
    PreflightResultFactory(
        preflight=run,
        mailbox=wave.mailboxes.get().mailbox,
        verdict="blocked",
        changes=[
            {
                "field": "incomingemaildeliverymethod",
                "label": "Incoming email",
                "before": "Microsoft Dynamics 365 for Outlook (1)",
                "after": "Server-Side Synchronization or Email Router (2)",
            }
        ],
        findings=[
            {
                "code": "not_in_exchange_online",
                "message": "The mailbox is not in Exchange Online.",
                "fix": "Move the mailbox to Exchange Online, then run the pre-flight again.",
                "blocking": True,
            }
        ],
    )

    response = lead_client.get(reverse("migration:wave_preflight", args=[wave.pk, run.pk]))
    html = response.content.decode()
    assert (
        "Microsoft Dynamics 365 for Outlook (1)" in html and "Server-Side Synchronization or Email Router (2)" in html
    )
    assert "The mailbox is not in Exchange Online." in html
    assert "Move the mailbox to Exchange Online, then run the pre-flight again." in html
    filtered = lead_client.get(reverse("migration:wave_preflight", args=[wave.pk, run.pk]), {"verdict": "ready"})
    assert "The mailbox is not in Exchange Online." not in filtered.content.decode()


def test_the_preflight_export_is_a_safe_csv_and_audited(lead_client, wave, migration_lead):
    run = PreflightRunFactory(wave=wave)
    PreflightResultFactory(preflight=run, mailbox=legacy(name="=cmd|' /C calc'!A0"))

    response = lead_client.get(reverse("migration:wave_preflight_export", args=[wave.pk, run.pk]))

    assert response["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode().lstrip("\ufeff"))))
    assert rows[1][0] == "'=cmd|' /C calc'!A0"
    assert AuditEvent.objects.filter(action="wave.preflight_exported", actor_id=migration_lead.pk).exists()


def test_a_running_preflight_refreshes_its_page(lead_client, wave):
    run = PreflightRunFactory(wave=wave, status=PreflightStatus.RUNNING, finished_at=None, mailboxes_total=5)
    html = lead_client.get(reverse("migration:wave_preflight", args=[wave.pk, run.pk])).content.decode()
    assert 'http-equiv="refresh"' in html


# --- query counts and bad input --------------------------------------------------------------------------


def a_wave_of(size, lead):
    wave = WaveFactory(created_by=lead, status=WaveStatus.RUNNING, started_at=timezone.now())
    run = PreflightRunFactory(wave=wave)
    mailboxes = inventory_mailboxes(size, readiness=Readiness.READY)
    WaveMailbox.objects.bulk_create(
        [WaveMailbox(wave=wave, mailbox=mailbox, position=n) for n, mailbox in enumerate(mailboxes, start=1)]
    )
    for mailbox in mailboxes[:60]:
        PreflightResultFactory(preflight=run, mailbox=mailbox)
    return wave


def test_the_wave_page_costs_the_same_queries_at_10_and_200_mailboxes(
    lead_client, migration_lead, django_assert_max_num_queries
):
    small = a_wave_of(10, migration_lead)
    big = a_wave_of(200, migration_lead)
    with django_assert_max_num_queries(30) as few:
        assert lead_client.get(page_url(small)).status_code == 200
    with django_assert_max_num_queries(len(few.captured_queries)):
        assert lead_client.get(page_url(big)).status_code == 200
    with django_assert_max_num_queries(len(few.captured_queries)):
        assert lead_client.get(page_url(big), {"page": "3"}).status_code == 200
    with django_assert_max_num_queries(15) as progress:
        lead_client.get(reverse("migration:wave_progress", args=[small.pk]))
    with django_assert_max_num_queries(len(progress.captured_queries)):
        lead_client.get(reverse("migration:wave_progress", args=[big.pk]))


@pytest.mark.parametrize(
    "path",
    [
        "/migration/waves/999999/",
        "/migration/waves/999999/progress.json",
        "/migration/waves/999999/preflights/1/",
        "/migration/waves/999999/preflights/1/export.csv",
    ],
)
def test_missing_waves_are_not_found(lead_client, path):
    assert lead_client.get(path).status_code == 404


def test_bad_input_never_breaks_the_pages(lead_client, admin_client, wave):
    assert lead_client.get(page_url(wave), {"page": "x" * 5000}).status_code == 200
    assert lead_client.get(page_url(wave), {"page": "-1"}).status_code == 200
    assert lead_client.get(reverse("migration:wave_progress", args=[wave.pk]), {"page": "\x00"}).status_code == 200
    assert lead_client.post(action_url(wave, "explode")).status_code == 404
    assert lead_client.get(action_url(wave, "start")).status_code == 405
    wave.status = WaveStatus.AWAITING_APPROVAL
    wave.save()
    response = admin_client.post(
        reverse("migration:wave_decide", args=[wave.pk]), {"preflight": "abc", "decision": "maybe"}
    )
    assert response.status_code == 400
    response = admin_client.post(
        reverse("migration:wave_decide", args=[wave.pk]), {"preflight": "999999", "decision": "approve"}, follow=True
    )
    assert response.status_code == 200 and "newer pre-flight" in response.content.decode()
    session = lead_client.session
    session["wave_new"] = {"name": "x", "source": "csv", "csv_content": "%%%not base64"}
    session.save()
    assert lead_client.get(reverse("migration:wave_new_check")).url == reverse("migration:wave_new_upload")
