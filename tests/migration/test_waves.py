"""The waves service: building from filters and CSV files, ordering, separation of duties, every
transition allowed and refused, the dispatch job queued on start and resume, pacing and progress."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from migration.models import (
    Classification,
    OwnerType,
    PreflightStatus,
    Readiness,
    WaveMailbox,
    WaveMailboxState,
    WaveStatus,
)
from migration.selectors.inventory import InventoryFilters
from migration.services.waves import (
    MAX_CSV_BYTES,
    WaveCSVError,
    WaveError,
    schedule_slots,
    wave_approve,
    wave_cancel,
    wave_create_from_csv,
    wave_create_from_filters,
    wave_mailbox_priority_set,
    wave_pause,
    wave_progress,
    wave_reject,
    wave_resume,
    wave_schedule_estimate,
    wave_start,
    wave_submit,
)
from portal.audit.models import AuditEvent
from portal.exceptions import InvalidStateError, PermissionDeniedError
from portal.policy.models import BlackoutWindow
from tests.migration.factories import (
    InventoryAnnotationFactory,
    InventoryMailboxFactory,
    PreflightRunFactory,
    WaveFactory,
    WaveMailboxFactory,
)

pytestmark = pytest.mark.django_db


def legacy(**fields):
    fields.setdefault("classification", Classification.EMAIL_ROUTER)
    fields.setdefault("readiness", Readiness.READY)
    return InventoryMailboxFactory(**fields)


def entries(wave) -> list[WaveMailbox]:
    return list(WaveMailbox.objects.filter(wave=wave).select_related("mailbox").order_by("position"))


# --- building from filters -------------------------------------------------------------------------


def test_a_wave_from_filters_orders_queues_first_then_users_then_priority_and_name(migration_lead):
    legacy(name="Zara user", owner_type=OwnerType.USER)
    legacy(name="Adam user", owner_type=OwnerType.USER)
    legacy(name="Payroll", owner_type=OwnerType.QUEUE)
    legacy(name="Complaints", owner_type=OwnerType.QUEUE)
    InventoryMailboxFactory(name="Compliant one")  # already compliant: left out

    build = wave_create_from_filters(
        actor=migration_lead,
        name="Router users",
        description="First wave",
        filters=InventoryFilters(),
    )

    wave = build.wave
    assert [entry.mailbox.name for entry in entries(wave)] == ["Complaints", "Payroll", "Adam user", "Zara user"]
    assert [entry.position for entry in entries(wave)] == [1, 2, 3, 4]
    assert [entry.is_queue for entry in entries(wave)] == [True, True, False, False]
    assert build.added == 4 and build.left_out == {"compliant": 1}
    assert wave.status == WaveStatus.DRAFT and wave.created_by == migration_lead
    assert wave.built_from["kind"] == "filters"
    assert (wave.test_enable_cap, wave.cap_window_hours) == (200, 5)
    assert AuditEvent.objects.filter(action="wave.created", object_id=str(wave.pk)).exists()


def test_filters_choose_the_mailboxes_and_leave_out_excluded_removed_and_busy_ones(migration_lead):
    chosen = legacy(team_name="Finance")
    legacy(team_name="Legal")
    InventoryAnnotationFactory(mailbox=legacy(team_name="Finance"), excluded=True, exclusion_reason="Retiring")
    legacy(team_name="Finance", removed_at=timezone.now())
    busy = legacy(team_name="Finance")
    WaveMailboxFactory(mailbox=busy)

    build = wave_create_from_filters(
        actor=migration_lead, name="Finance", description="", filters=InventoryFilters(team="Finance")
    )

    assert [entry.mailbox for entry in entries(build.wave)] == [chosen]
    assert build.left_out == {"excluded": 1, "in_active_wave": 1}


def test_a_wave_with_nothing_to_migrate_is_refused(migration_lead):
    InventoryMailboxFactory()
    with pytest.raises(WaveError, match="None of the chosen mailboxes can be migrated"):
        wave_create_from_filters(actor=migration_lead, name="Nothing", description="", filters=InventoryFilters())
    with pytest.raises(WaveError, match="No mailboxes in the inventory match"):
        wave_create_from_filters(
            actor=migration_lead, name="Nothing", description="", filters=InventoryFilters(team="Nobody")
        )


def test_a_wave_needs_a_name_and_a_migration_lead(migration_lead, platform_admin):
    legacy()
    with pytest.raises(WaveError, match="Enter the wave's name"):
        wave_create_from_filters(actor=migration_lead, name="  ", description="", filters=InventoryFilters())
    with pytest.raises(PermissionDeniedError):
        wave_create_from_filters(actor=platform_admin, name="Mine", description="", filters=InventoryFilters())


# --- building from a CSV ---------------------------------------------------------------------------


def test_a_wave_from_a_csv_of_addresses_with_priorities(migration_lead):
    first = legacy(email_address="first@example.gov.uk", name="A")
    second = legacy(email_address="second@example.gov.uk", name="B")
    legacy(email_address="other@example.gov.uk")
    content = "\ufeffEmail address,Priority\r\nSECOND@example.gov.uk,1\r\nfirst@example.gov.uk,\r\n\r\n".encode()

    build = wave_create_from_csv(
        actor=migration_lead, name="From file", description="", upload=content, file_name="wave.csv"
    )

    rows = entries(build.wave)
    assert [(entry.mailbox, entry.priority) for entry in rows] == [(second, 1), (first, 100)]
    assert build.wave.built_from["kind"] == "csv" and build.wave.built_from["file_name"] == "wave.csv"


def test_a_csv_without_headings_in_windows_1252_is_read(migration_lead):
    legacy(email_address="zoë@example.gov.uk")
    build = wave_create_from_csv(
        actor=migration_lead, name="Accents", description="", upload="zoë@example.gov.uk\n".encode("cp1252")
    )
    assert build.added == 1


def test_a_csv_is_refused_with_every_problem_row_by_row(migration_lead):
    legacy(email_address="ok@example.gov.uk")
    legacy(email_address="gone@example.gov.uk", removed_at=timezone.now())
    WaveMailboxFactory(mailbox=legacy(email_address="busy@example.gov.uk"), wave__name="Earlier wave")
    content = (
        b"email address\n"
        b"ok@example.gov.uk\n"
        b"nobody@example.gov.uk\n"
        b"OK@example.gov.uk\n"
        b"gone@example.gov.uk\n"
        b"busy@example.gov.uk\n"
        b"not an address\n"
    )

    with pytest.raises(WaveCSVError) as caught:
        wave_create_from_csv(actor=migration_lead, name="Bad", description="", upload=content)

    assert caught.value.problems == [
        "Row 3: there is no mailbox with the address 'nobody@example.gov.uk' in the inventory",
        "Row 4: 'OK@example.gov.uk' is also on row 2",
        "Row 5: the mailbox 'gone@example.gov.uk' has been removed from Dynamics 365",
        "Row 6: 'busy@example.gov.uk' is already in the wave 'Earlier wave'",
        "Row 7: 'not an address' is not an email address",
    ]
    assert not WaveMailbox.objects.filter(mailbox__email_address="ok@example.gov.uk").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "The selected file is empty"),
        (b"email\n", "The file has a heading but no addresses"),
        (b"\x00\x01\x02", "The selected file must be a CSV file"),
        (b"a" * (MAX_CSV_BYTES + 1), "must be smaller than"),
        (b"email;priority\na@example.gov.uk;1\n", "semicolons"),
        (b"email,priority\na@example.gov.uk,high\n", "priority must be a whole number"),
    ],
)
def test_unusable_files_get_a_clear_message(migration_lead, content, message):
    legacy(email_address="a@example.gov.uk")
    with pytest.raises(WaveCSVError) as caught:
        wave_create_from_csv(actor=migration_lead, name="Bad", description="", upload=content)
    assert message in caught.value.problems[0]


def test_compliant_and_excluded_addresses_are_left_out_and_reported(migration_lead):
    legacy(email_address="go@example.gov.uk")
    InventoryMailboxFactory(email_address="done@example.gov.uk")
    build = wave_create_from_csv(
        actor=migration_lead, name="Mixed", description="", upload=b"go@example.gov.uk\ndone@example.gov.uk\n"
    )
    assert build.added == 1 and build.left_out == {"compliant": 1}
    assert build.examples["compliant"] == ["done@example.gov.uk"]


def test_priorities_can_be_changed_while_the_wave_is_a_draft(migration_lead):
    wave = WaveFactory(created_by=migration_lead)
    a = WaveMailboxFactory(wave=wave, mailbox=legacy(name="A"), position=1)
    b = WaveMailboxFactory(wave=wave, mailbox=legacy(name="B"), position=2)

    wave_mailbox_priority_set(actor=migration_lead, wave_id=wave.pk, entry_id=b.pk, priority=5)

    assert [entry.pk for entry in entries(wave)] == [b.pk, a.pk]
    wave.status = WaveStatus.AWAITING_APPROVAL
    wave.save()
    with pytest.raises(InvalidStateError):
        wave_mailbox_priority_set(actor=migration_lead, wave_id=wave.pk, entry_id=a.pk, priority=1)


# --- approval --------------------------------------------------------------------------------------


@pytest.fixture
def checked_wave(migration_lead):
    wave = WaveFactory(created_by=migration_lead)
    WaveMailboxFactory(wave=wave)
    PreflightRunFactory(wave=wave, status=PreflightStatus.FINISHED)
    return wave


def test_a_wave_is_submitted_only_after_a_finished_preflight(migration_lead):
    wave = WaveFactory(created_by=migration_lead)
    with pytest.raises(InvalidStateError, match="Run the pre-flight"):
        wave_submit(actor=migration_lead, wave_id=wave.pk)
    PreflightRunFactory(wave=wave, status=PreflightStatus.RUNNING, finished_at=None)
    with pytest.raises(InvalidStateError, match="has not finished"):
        wave_submit(actor=migration_lead, wave_id=wave.pk)
    PreflightRunFactory(wave=wave, status=PreflightStatus.FINISHED)

    wave = wave_submit(actor=migration_lead, wave_id=wave.pk)

    assert wave.status == WaveStatus.AWAITING_APPROVAL and wave.submitted_at is not None


def test_a_platform_admin_other_than_the_creator_approves_with_the_preflight(
    checked_wave, migration_lead, platform_admin
):
    wave_submit(actor=migration_lead, wave_id=checked_wave.pk)
    preflight = checked_wave.preflights.get()

    wave = wave_approve(actor=platform_admin, wave_id=checked_wave.pk, preflight_id=preflight.pk, note="Go ahead")

    assert wave.status == WaveStatus.APPROVED
    assert (wave.approved_by, wave.approved_preflight, wave.decision_note) == (platform_admin, preflight, "Go ahead")
    event = AuditEvent.objects.get(action="wave.approved")
    assert event.actor_id == platform_admin.pk and event.reason == "Go ahead"


def test_the_creator_cannot_approve_their_own_wave_even_as_a_platform_admin(platform_admin):
    from portal.accounts.roles import Role
    from tests.factories import UserFactory

    both = UserFactory(username="both", roles=[Role.PLATFORM_ADMIN, Role.MIGRATION_LEAD])
    wave = WaveFactory(created_by=both, status=WaveStatus.AWAITING_APPROVAL)
    preflight = PreflightRunFactory(wave=wave)

    with pytest.raises(PermissionDeniedError, match="another platform admin"):
        wave_approve(actor=both, wave_id=wave.pk, preflight_id=preflight.pk)
    wave.refresh_from_db()
    assert wave.status == WaveStatus.AWAITING_APPROVAL


@pytest.mark.parametrize("persona", ["migration_lead", "approver", "requester", "auditor"])
def test_only_platform_admins_approve(request, persona, platform_admin):
    wave = WaveFactory(created_by=platform_admin, status=WaveStatus.AWAITING_APPROVAL)
    preflight = PreflightRunFactory(wave=wave)
    with pytest.raises(PermissionDeniedError):
        wave_approve(actor=request.getfixturevalue(persona), wave_id=wave.pk, preflight_id=preflight.pk)


def test_approval_is_refused_against_a_preflight_that_is_not_the_latest(checked_wave, migration_lead, platform_admin):
    wave_submit(actor=migration_lead, wave_id=checked_wave.pk)
    old = checked_wave.preflights.get()
    PreflightRunFactory(wave=checked_wave, requested_at=timezone.now() + dt.timedelta(seconds=1))

    with pytest.raises(InvalidStateError, match="newer pre-flight"):
        wave_approve(actor=platform_admin, wave_id=checked_wave.pk, preflight_id=old.pk)


def test_a_rejected_wave_goes_back_to_draft_with_the_reason(checked_wave, migration_lead, platform_admin):
    wave_submit(actor=migration_lead, wave_id=checked_wave.pk)
    with pytest.raises(WaveError, match="Enter why"):
        wave_reject(actor=platform_admin, wave_id=checked_wave.pk, note=" ")

    wave = wave_reject(actor=platform_admin, wave_id=checked_wave.pk, note="Too many blocked mailboxes")

    assert wave.status == WaveStatus.DRAFT and wave.decision_note == "Too many blocked mailboxes"
    with pytest.raises(InvalidStateError):
        wave_reject(actor=platform_admin, wave_id=checked_wave.pk, note="Again")


# --- running ---------------------------------------------------------------------------------------


def approved_wave(lead, admin, *, mailboxes=2):
    wave = WaveFactory(created_by=lead, status=WaveStatus.APPROVED, approved_by=admin, approved_at=timezone.now())
    for _ in range(mailboxes):
        WaveMailboxFactory(wave=wave)
    return wave


def queued_dispatches(queue) -> list[tuple[str, tuple]]:
    return [(job.func_name, job.args) for job in queue.get_jobs()]


def test_starting_queues_the_dispatch_job_after_commit(
    migration_lead, platform_admin, redis_queue, django_capture_on_commit_callbacks
):
    wave = approved_wave(migration_lead, platform_admin)

    with django_capture_on_commit_callbacks(execute=True):
        wave = wave_start(actor=migration_lead, wave_id=wave.pk)

    assert wave.status == WaveStatus.RUNNING and wave.started_by == migration_lead
    assert queued_dispatches(redis_queue) == [("migration.jobs.wave_dispatch_job", (wave.pk,))]
    assert AuditEvent.objects.filter(action="wave.started", object_id=str(wave.pk)).exists()


def test_pause_and_resume_and_resume_dispatches_again(
    migration_lead, platform_admin, redis_queue, django_capture_on_commit_callbacks
):
    wave = approved_wave(migration_lead, platform_admin)
    with django_capture_on_commit_callbacks(execute=True):
        wave_start(actor=migration_lead, wave_id=wave.pk)
        assert wave_pause(actor=migration_lead, wave_id=wave.pk).status == WaveStatus.PAUSED
        assert wave_resume(actor=migration_lead, wave_id=wave.pk).status == WaveStatus.RUNNING

    assert len(queued_dispatches(redis_queue)) == 2


@pytest.mark.parametrize(
    ("status", "transition"),
    [
        (WaveStatus.DRAFT, wave_start),
        (WaveStatus.AWAITING_APPROVAL, wave_start),
        (WaveStatus.RUNNING, wave_start),
        (WaveStatus.APPROVED, wave_pause),
        (WaveStatus.PAUSED, wave_pause),
        (WaveStatus.RUNNING, wave_resume),
        (WaveStatus.COMPLETED, wave_cancel),
        (WaveStatus.CANCELLED, wave_cancel),
        (WaveStatus.APPROVED, wave_submit),
    ],
)
def test_transitions_from_the_wrong_state_are_refused(migration_lead, redis_queue, status, transition):
    wave = WaveFactory(created_by=migration_lead, status=status)
    with pytest.raises(InvalidStateError):
        transition(actor=migration_lead, wave_id=wave.pk)
    wave.refresh_from_db()
    assert wave.status == status
    assert redis_queue.count == 0


@pytest.mark.parametrize("transition", [wave_start, wave_pause, wave_resume, wave_cancel, wave_submit])
def test_only_migration_leads_run_waves(platform_admin, transition):
    wave = WaveFactory(created_by=platform_admin, status=WaveStatus.APPROVED)
    with pytest.raises(PermissionDeniedError):
        transition(actor=platform_admin, wave_id=wave.pk)


def test_cancelling_frees_the_mailboxes_not_started(migration_lead, platform_admin):
    wave = approved_wave(migration_lead, platform_admin, mailboxes=0)
    waiting = WaveMailboxFactory(wave=wave, state=WaveMailboxState.PENDING)
    scheduled = WaveMailboxFactory(wave=wave, state=WaveMailboxState.SCHEDULED)
    migrating = WaveMailboxFactory(wave=wave, state=WaveMailboxState.RUNNING)

    wave = wave_cancel(actor=migration_lead, wave_id=wave.pk, reason="Month end")

    assert wave.status == WaveStatus.CANCELLED and wave.finished_at is None  # one still migrating
    for entry, state, active in (
        (waiting, WaveMailboxState.CANCELLED, False),
        (scheduled, WaveMailboxState.CANCELLED, False),
        (migrating, WaveMailboxState.RUNNING, True),
    ):
        entry.refresh_from_db()
        assert (entry.state, entry.active) == (state, active)
    # A cancelled mailbox can join another wave.
    build = wave_create_from_csv(
        actor=migration_lead, name="Again", description="", upload=waiting.mailbox.email_address.encode()
    )
    assert build.added == 1


# --- pacing and progress -----------------------------------------------------------------------------


def test_the_schedule_spreads_mailboxes_over_windows_and_skips_blackouts():
    now = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)
    blackout = (now + dt.timedelta(hours=5), now + dt.timedelta(hours=8), "Month-end close")

    slots = schedule_slots(remaining=450, now=now, cap=200, window_hours=5, blackouts=[blackout])

    assert [(slot.first, slot.last) for slot in slots] == [(1, 200), (201, 400), (401, 450)]
    assert slots[0].starts_at == now
    assert slots[1].starts_at == now + dt.timedelta(hours=8) and slots[1].after_blackout == "Month-end close"
    assert slots[2].starts_at == now + dt.timedelta(hours=13)


def test_the_schedule_counts_test_and_enables_already_in_the_window():
    now = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)
    slots = schedule_slots(
        remaining=100, now=now, cap=200, window_hours=5, used_in_window=150, window_started=now - dt.timedelta(hours=1)
    )
    assert [(slot.first, slot.last, slot.starts_at) for slot in slots] == [
        (1, 50, now),
        (51, 100, now + dt.timedelta(hours=4)),
    ]


def test_the_wave_schedule_uses_the_wave_cap_and_blackout_windows(migration_lead):
    wave = WaveFactory(created_by=migration_lead, test_enable_cap=2, cap_window_hours=5)
    for _ in range(3):
        WaveMailboxFactory(wave=wave)
    now = timezone.now()
    BlackoutWindow.objects.create(
        starts_at=now - dt.timedelta(hours=1), ends_at=now + dt.timedelta(hours=2), reason="Freeze", created_at=now
    )

    slots = wave_schedule_estimate(wave, now=now)

    assert [(slot.first, slot.last) for slot in slots] == [(1, 2), (3, 3)]
    assert slots[0].starts_at == now + dt.timedelta(hours=2) and slots[0].after_blackout == "Freeze"


def test_progress_counts_finished_mailboxes(migration_lead):
    wave = WaveFactory(created_by=migration_lead, status=WaveStatus.RUNNING)
    for state in ("migrated", "migrated", "needs_attention", "running"):
        WaveMailboxFactory(wave=wave, state=state)

    progress = wave_progress(wave.pk)

    assert (progress.total, progress.finished, progress.percent) == (4, 3, 75)
    assert progress.by_state["migrated"] == 2 and progress.by_state["pending"] == 0
