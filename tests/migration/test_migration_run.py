"""Migrating wave mailboxes against the tenant simulator with a real RQ worker: steps, claims, pacing, retries."""

from __future__ import annotations

import datetime as dt
import threading
import uuid

import pytest
from django.db import connections
from django.utils import timezone
from rq.registry import ScheduledJobRegistry

from migration.models import (
    Classification,
    InventoryMailbox,
    MigrationStep,
    MigrationStepStatus,
    Wave,
    WaveMailbox,
    WaveMailboxState,
    WaveStatus,
)
from migration.services.migration_runs import (
    dispatch_job_id,
    migration_retry_failed,
    migration_run,
    wave_dispatch,
)
from portal.audit.models import AuditEvent
from portal.exceptions import PermissionDeniedError
from portal.policy.models import BlackoutWindow
from tests.migration.factories import WaveMailboxFactory
from tests.migration.migration_run_support import (
    EXCHANGE_ONLINE_PROFILE,
    legacy,
    not_in_exchange_online,
    prepare,
    profile_ids,
    running_wave,
    wave_finished,
    work_until,
    writes,
)

pytestmark = pytest.mark.django_db(transaction=True)


def _start(wave: Wave, queue) -> None:
    wave_dispatch(wave_id=wave.pk)
    work_until(queue, wave_finished(wave))


def test_a_queue_and_a_user_mailbox_move_to_server_side_sync(m365_settings, fresh_sim, redis_queue, migration_lead):
    prepare(fresh_sim)
    queue_row = legacy(fresh_sim, owner="queue")[0]
    user_row = legacy(fresh_sim, owner="systemuser")[0]
    exo = profile_ids(fresh_sim)[EXCHANGE_ONLINE_PROFILE]
    wave = running_wave([user_row, queue_row], creator=migration_lead)

    _start(wave, redis_queue)

    queue_entry = WaveMailbox.objects.get(wave=wave, is_queue=True)
    user_entry = WaveMailbox.objects.get(wave=wave, is_queue=False)
    assert queue_entry.state == WaveMailboxState.MIGRATED, queue_entry.last_error
    assert user_entry.state == WaveMailboxState.MIGRATED, user_entry.last_error
    assert queue_entry.test_enable_at <= user_entry.test_enable_at  # queues first

    queue_now = fresh_sim.row("mailboxes", queue_row["mailboxid"])
    assert queue_now["_emailserverprofile_value"] == exo
    assert queue_now["incomingemaildeliverymethod"] == 2
    assert queue_now["outgoingemaildeliverymethod"] == 2
    assert queue_now["actdeliverymethod"] == queue_row["actdeliverymethod"]  # queues keep theirs
    assert queue_now["emailrouteraccessapproval"] == 1
    assert (queue_now["incomingemailstatus"], queue_now["outgoingemailstatus"]) == (1, 1)
    assert queue_now["testemailconfigurationscheduled"] is False

    user_now = fresh_sim.row("mailboxes", user_row["mailboxid"])
    assert user_now["_emailserverprofile_value"] == exo
    assert (user_now["incomingemaildeliverymethod"], user_now["outgoingemaildeliverymethod"]) == (2, 2)
    assert user_now["actdeliverymethod"] == 1  # appointments, contacts and tasks too, as policy says
    assert (user_now["incomingemailstatus"], user_now["outgoingemailstatus"], user_now["actstatus"]) == (1, 1, 1)

    # The snapshot holds exactly what was there before, including the user's tracking option.
    snapshot = user_entry.snapshot
    for column in ("incomingemaildeliverymethod", "outgoingemaildeliverymethod", "actdeliverymethod"):
        assert snapshot["mailbox"][column] == user_row[column]
    assert snapshot["mailbox"]["_emailserverprofile_value"] == user_row["_emailserverprofile_value"]
    settings_row = fresh_sim.row("usersettingscollection", user_row["_regardingobjectid_value"])
    assert snapshot["usersettings"]["incomingemailfilteringmethod"] == settings_row["incomingemailfilteringmethod"]
    assert snapshot["owner"]["entity_set"] == "systemusers"

    inventory = InventoryMailbox.objects.get(pk=user_entry.mailbox_id)
    assert (inventory.incoming_delivery, inventory.outgoing_delivery, inventory.act_delivery) == (2, 2, 1)
    assert str(inventory.profile_id) == exo
    assert inventory.classification not in (Classification.OUTLOOK_CLIENT, Classification.EMAIL_ROUTER)
    assert AuditEvent.objects.filter(action="migration.mailbox_migrated", object_id=str(user_entry.mailbox_id)).exists()
    assert list(user_entry.steps.values_list("name", flat=True)) == [
        "snapshot",
        "bind_profile",
        "approve_address",
        "schedule_test",
        "await_test",
    ]
    assert not user_entry.steps.exclude(
        status__in=[MigrationStepStatus.SUCCEEDED, MigrationStepStatus.SKIPPED]
    ).exists()
    assert Wave.objects.get(pk=wave.pk).status == WaveStatus.COMPLETED  # the last run's dispatch saw it done


def test_act_is_left_alone_when_the_wave_says_so(m365_settings, fresh_sim, redis_queue, migration_lead):
    prepare(fresh_sim)
    row = legacy(fresh_sim, owner="systemuser")[0]
    wave = running_wave([row], creator=migration_lead, migrate_act_for_users=False)

    _start(wave, redis_queue)

    entry = WaveMailbox.objects.get(wave=wave)
    assert entry.state == WaveMailboxState.MIGRATED, entry.last_error
    assert fresh_sim.row("mailboxes", row["mailboxid"])["actdeliverymethod"] == row["actdeliverymethod"]


def test_a_failed_test_and_enable_needs_attention_with_the_alert(m365_settings, fresh_sim, redis_queue, migration_lead):
    prepare(fresh_sim)
    row = not_in_exchange_online(fresh_sim)[0]
    wave = running_wave([row], creator=migration_lead)

    _start(wave, redis_queue)

    entry = WaveMailbox.objects.get(wave=wave)
    assert entry.state == WaveMailboxState.NEEDS_ATTENTION
    assert entry.error_code == "test_enable_failed"
    assert "Test & Enable failed" in entry.last_error
    assert "was not found in Exchange Online" in entry.last_error  # the mailbox's alert, in its words
    assert entry.steps.get(name="await_test").status == MigrationStepStatus.FAILED
    assert not entry.active
    assert AuditEvent.objects.filter(action="migration.needs_attention", object_id=str(entry.mailbox_id)).exists()


def test_an_address_approval_refused_needs_attention_with_what_to_do(
    m365_settings, fresh_sim, redis_queue, migration_lead
):
    prepare(fresh_sim, deny_address_approval=True)
    row = legacy(fresh_sim, owner="queue", needs_approval=True)[0]
    wave = running_wave([row], creator=migration_lead)

    _start(wave, redis_queue)

    entry = WaveMailbox.objects.get(wave=wave)
    assert entry.state == WaveMailboxState.NEEDS_ATTENTION
    assert "refused to approve the email address" in entry.last_error
    assert "Approve Email" in entry.last_error
    assert entry.test_enable_at is None  # it never used its place under the cap
    assert fresh_sim.row("mailboxes", row["mailboxid"])["testemailconfigurationscheduled"] is False


def test_a_mailbox_is_read_once_before_its_changes_and_once_when_its_test_has_finished(
    m365_settings, fresh_sim, redis_queue, migration_lead
):
    # Every request spends the application user's budget: reads the job has just made are not made again.
    # RQ keeps scheduled times in whole seconds, so a poll asked for in 2 s may come after 1 s: still
    # well after the simulated test's 0.3 s. (Asked for in 1 s, it could come at once, before it.)
    prepare(fresh_sim, test_enable_delay=0.3, poll_seconds=2)
    row = legacy(fresh_sim, owner="systemuser")[0]
    wave = running_wave([row], creator=migration_lead)
    since = fresh_sim.last_seq()

    _start(wave, redis_queue)

    entry = WaveMailbox.objects.get(wave=wave)
    assert entry.state == WaveMailboxState.MIGRATED, entry.last_error
    reads = [
        item
        for item in fresh_sim.ledger(since)
        if item["surface"] == "dataverse"
        and item["method"] == "GET"
        and row["mailboxid"].lower() in item["path"].lower()
    ]
    assert len(reads) == 2  # the snapshot, then the poll that finds Test & Enable finished
    assert len(writes(fresh_sim, since, row_ids=[row["mailboxid"]])) == 2  # the settings, the test


def test_a_change_applied_but_answered_too_late_is_not_made_again(
    m365_settings, fresh_sim, redis_queue, migration_lead
):
    prepare(fresh_sim)
    row = legacy(fresh_sim, owner="systemuser")[0]
    wave = running_wave([row], creator=migration_lead)
    # The delivery settings and the Test & Enable request both apply, and both answers are lost.
    fresh_sim.control(
        "PUT",
        "faults",
        {"rate_lost_response": 1.0, "operations": ["PATCH mailboxes"], "max_faults": 2, "seed": 3},
    )
    since = fresh_sim.last_seq()

    _start(wave, redis_queue)

    entry = WaveMailbox.objects.get(wave=wave)
    assert entry.state == WaveMailboxState.MIGRATED, entry.last_error
    lost = [item for item in fresh_sim.ledger(since) if item.get("fault")]
    assert len(lost) == 2
    mailbox_writes = writes(fresh_sim, since, row_ids=[row["mailboxid"]])
    assert len(mailbox_writes) == 2  # the settings once, the Test & Enable request once
    assert entry.steps.get(name="bind_profile").attempts == 2
    assert entry.steps.get(name="schedule_test").attempts == 2


def test_two_workers_never_migrate_the_same_mailbox(m365_settings, fresh_sim, redis_queue, migration_lead):
    prepare(fresh_sim)
    row = legacy(fresh_sim, owner="systemuser")[0]
    wave = running_wave([row], creator=migration_lead)
    entry = WaveMailbox.objects.get(wave=wave)
    wave_dispatch(wave_id=wave.pk)
    since = fresh_sim.last_seq()
    barrier = threading.Barrier(4)

    def worker() -> None:
        try:
            barrier.wait()
            migration_run(entry_id=entry.pk)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    work_until(redis_queue, wave_finished(wave))

    entry.refresh_from_db()
    assert entry.state == WaveMailboxState.MIGRATED, entry.last_error
    assert len(writes(fresh_sim, since, row_ids=[row["mailboxid"]])) == 2
    assert MigrationStep.objects.get(entry=entry, name="bind_profile").attempts == 1


def test_a_paused_wave_starts_no_new_mailbox_until_resumed(m365_settings, fresh_sim, redis_queue, migration_lead):
    prepare(fresh_sim)
    rows = legacy(fresh_sim, owner="systemuser", count=3)
    wave = running_wave(rows, creator=migration_lead)
    wave_dispatch(wave_id=wave.pk)
    assert WaveMailbox.objects.filter(wave=wave, state=WaveMailboxState.SCHEDULED).count() == 3
    Wave.objects.filter(pk=wave.pk).update(status=WaveStatus.PAUSED)  # as pausing the wave does
    since = fresh_sim.last_seq()

    work_until(
        redis_queue, lambda: not WaveMailbox.objects.filter(wave=wave, state=WaveMailboxState.SCHEDULED).exists()
    )

    assert set(WaveMailbox.objects.filter(wave=wave).values_list("state", flat=True)) == {WaveMailboxState.PENDING}
    assert writes(fresh_sim, since) == []
    assert wave_dispatch(wave_id=wave.pk) == 0

    Wave.objects.filter(pk=wave.pk).update(status=WaveStatus.RUNNING)  # resumed
    _start(wave, redis_queue)
    assert set(WaveMailbox.objects.filter(wave=wave).values_list("state", flat=True)) == {WaveMailboxState.MIGRATED}


def test_the_cap_counts_every_wave_and_the_rest_are_scheduled(m365_settings, fresh_sim, redis_queue, migration_lead):
    prepare(fresh_sim)
    earlier = running_wave(legacy(fresh_sim, owner="systemuser"), creator=migration_lead, status=WaveStatus.COMPLETED)
    an_hour_ago = timezone.now() - dt.timedelta(hours=1)
    WaveMailbox.objects.filter(wave=earlier).update(
        state=WaveMailboxState.MIGRATED, active=False, test_enable_at=an_hour_ago
    )
    rows = legacy(fresh_sim, owner="systemuser", count=3)
    wave = running_wave(rows, creator=migration_lead, test_enable_cap=3, cap_window_hours=5)

    assert wave_dispatch(wave_id=wave.pk) == 2  # one of the three Test & Enables in this window is taken

    entries = list(WaveMailbox.objects.filter(wave=wave).order_by("position"))
    assert [entry.state for entry in entries] == [
        WaveMailboxState.SCHEDULED,
        WaveMailboxState.SCHEDULED,
        WaveMailboxState.PENDING,
    ]

    work_until(
        redis_queue,
        lambda: WaveMailbox.objects.filter(wave=wave, state=WaveMailboxState.MIGRATED).count() == 2,
    )
    assert WaveMailbox.objects.get(pk=entries[2].pk).state == WaveMailboxState.PENDING
    assert WaveMailbox.objects.filter(test_enable_at__gt=timezone.now() - dt.timedelta(hours=5)).count() == 3
    # The wave looks again when the oldest Test & Enable leaves the window, under one fixed job.
    registry = ScheduledJobRegistry(queue=redis_queue)
    when = registry.get_scheduled_time(dispatch_job_id(wave.pk))
    assert abs((when - (an_hour_ago + dt.timedelta(hours=5))).total_seconds()) < 5
    assert Wave.objects.get(pk=wave.pk).status == WaveStatus.RUNNING


def test_no_test_and_enable_starts_in_a_blackout(m365_settings, fresh_sim, redis_queue, migration_lead):
    prepare(fresh_sim)
    now = timezone.now()
    blackout = BlackoutWindow.objects.create(
        starts_at=now - dt.timedelta(minutes=5),
        ends_at=now + dt.timedelta(hours=2),
        reason="Month-end close",
        created_at=now,
    )
    wave = running_wave(legacy(fresh_sim, owner="systemuser", count=2), creator=migration_lead)
    since = fresh_sim.last_seq()

    assert wave_dispatch(wave_id=wave.pk) == 0

    assert set(WaveMailbox.objects.filter(wave=wave).values_list("state", flat=True)) == {WaveMailboxState.PENDING}
    registry = ScheduledJobRegistry(queue=redis_queue)
    when = registry.get_scheduled_time(dispatch_job_id(wave.pk))
    assert abs((when - blackout.ends_at).total_seconds()) < 5
    assert writes(fresh_sim, since) == []


def test_a_blackout_that_begins_mid_run_holds_back_the_test(m365_settings, fresh_sim, redis_queue, migration_lead):
    prepare(fresh_sim)
    row = legacy(fresh_sim, owner="systemuser")[0]
    wave = running_wave([row], creator=migration_lead)
    entry = WaveMailbox.objects.get(wave=wave)
    wave_dispatch(wave_id=wave.pk)
    now = timezone.now()
    BlackoutWindow.objects.create(
        starts_at=now - dt.timedelta(minutes=1), ends_at=now + dt.timedelta(hours=1), reason="Release", created_at=now
    )

    work_until(redis_queue, lambda: WaveMailbox.objects.get(pk=entry.pk).state == WaveMailboxState.WAITING)

    entry.refresh_from_db()
    assert entry.steps.get(name="bind_profile").status == MigrationStepStatus.SUCCEEDED
    assert entry.steps.get(name="schedule_test").status == MigrationStepStatus.RUNNING
    assert entry.not_before > now + dt.timedelta(minutes=59)
    assert fresh_sim.row("mailboxes", row["mailboxid"])["testemailconfigurationscheduled"] is False


def test_retry_failed_reruns_only_the_mailboxes_that_need_attention(
    m365_settings, fresh_sim, redis_queue, migration_lead
):
    prepare(fresh_sim, deny_address_approval=True)
    refused = legacy(fresh_sim, owner="queue", needs_approval=True)[0]
    fine = legacy(fresh_sim, owner="queue", approved=True)[0]
    wave = running_wave([refused, fine], creator=migration_lead)
    _start(wave, redis_queue)
    states = dict(WaveMailbox.objects.filter(wave=wave).values_list("mailbox__dataverse_id", "state"))
    assert sorted(states.values()) == [WaveMailboxState.MIGRATED, WaveMailboxState.NEEDS_ATTENTION]
    assert Wave.objects.get(pk=wave.pk).status == WaveStatus.COMPLETED
    assert states[uuid.UUID(fine["mailboxid"])] == WaveMailboxState.MIGRATED
    assert states[uuid.UUID(refused["mailboxid"])] == WaveMailboxState.NEEDS_ATTENTION
    migrated_row, failed_row = fine, refused
    fresh_sim.control("PUT", "settings", {"deny_address_approval": False})
    since = fresh_sim.last_seq()

    assert migration_retry_failed(actor=migration_lead, wave_id=wave.pk) == 1

    assert Wave.objects.get(pk=wave.pk).status == WaveStatus.RUNNING
    work_until(redis_queue, wave_finished(wave))
    assert set(WaveMailbox.objects.filter(wave=wave).values_list("state", flat=True)) == {WaveMailboxState.MIGRATED}
    assert writes(fresh_sim, since, row_ids=[migrated_row["mailboxid"]]) == []  # left alone
    assert writes(fresh_sim, since, row_ids=[failed_row["mailboxid"]])
    retried = WaveMailbox.objects.get(wave=wave, mailbox__dataverse_id=uuid.UUID(failed_row["mailboxid"]))
    assert retried.snapshot["mailbox"]["emailrouteraccessapproval"] == failed_row["emailrouteraccessapproval"]
    assert AuditEvent.objects.filter(action="wave.retry_failed", object_id=str(wave.pk)).exists()


def test_only_a_migration_lead_may_retry(outsider, migration_lead):
    wave = WaveMailboxFactory(wave__created_by=migration_lead, wave__status=WaveStatus.COMPLETED).wave
    with pytest.raises(PermissionDeniedError):
        migration_retry_failed(actor=outsider, wave_id=wave.pk)
