"""Rolling wave mailboxes back to their snapshot, exactly, and never over a change made meanwhile in Dynamics 365."""

from __future__ import annotations

import pytest

from migration.models import InventoryMailbox, WaveMailbox, WaveMailboxState
from migration.services.migration_runs import migration_rollback, wave_dispatch
from portal.audit.models import AuditEvent
from portal.exceptions import PermissionDeniedError
from tests.migration.migration_run_support import (
    EXCHANGE_ONLINE_PROFILE,
    entries_finished,
    legacy,
    prepare,
    profile_ids,
    running_wave,
    wave_finished,
    work_until,
    writes,
)

pytestmark = pytest.mark.django_db(transaction=True)

RESTORED = (
    "_emailserverprofile_value",
    "incomingemaildeliverymethod",
    "outgoingemaildeliverymethod",
    "actdeliverymethod",
    "emailrouteraccessapproval",
    "incomingemailstatus",
    "outgoingemailstatus",
    "actstatus",
    "enabledforincomingemail",
    "enabledforoutgoingemail",
    "enabledforact",
    "testemailconfigurationscheduled",
    "testmailboxaccesscompletedon",
)
OWNER_COLUMNS = ("emailrouteraccessapproval", "incomingemaildeliverymethod", "outgoingemaildeliverymethod")


def _migrate(sim, queue, lead, rows, **fields):
    wave = running_wave(rows, creator=lead, **fields)
    wave_dispatch(wave_id=wave.pk)
    work_until(queue, wave_finished(wave))
    return wave


def _roll_back(queue, lead, *entries) -> int:
    queued = migration_rollback(actor=lead, entry_ids=[entry.pk for entry in entries])
    work_until(queue, entries_finished(*entries))
    return queued


def test_rollback_restores_exactly_what_was_there(m365_settings, fresh_sim, redis_queue, migration_lead):
    prepare(fresh_sim)
    user_row = legacy(fresh_sim, owner="systemuser", needs_approval=True)[0]
    queue_row = legacy(fresh_sim, owner="queue")[0]
    owner_before = fresh_sim.row("systemusers", user_row["_regardingobjectid_value"])
    settings_before = fresh_sim.row("usersettingscollection", user_row["_regardingobjectid_value"])
    wave = _migrate(fresh_sim, redis_queue, migration_lead, [user_row, queue_row])
    entries = list(WaveMailbox.objects.filter(wave=wave))
    assert {entry.state for entry in entries} == {WaveMailboxState.MIGRATED}
    assert fresh_sim.row("systemusers", user_row["_regardingobjectid_value"])["emailrouteraccessapproval"] == 1

    assert _roll_back(redis_queue, migration_lead, *entries) == 2

    for entry in WaveMailbox.objects.filter(wave=wave):
        assert entry.state == WaveMailboxState.ROLLED_BACK, entry.last_error
        assert not entry.active
    user_now = fresh_sim.row("mailboxes", user_row["mailboxid"])
    assert {column: user_now[column] for column in RESTORED} == {column: user_row[column] for column in RESTORED}
    queue_now = fresh_sim.row("mailboxes", queue_row["mailboxid"])
    assert {column: queue_now[column] for column in RESTORED} == {column: queue_row[column] for column in RESTORED}
    owner_now = fresh_sim.row("systemusers", user_row["_regardingobjectid_value"])
    assert {column: owner_now[column] for column in OWNER_COLUMNS} == {
        column: owner_before[column] for column in OWNER_COLUMNS
    }
    settings_now = fresh_sim.row("usersettingscollection", user_row["_regardingobjectid_value"])
    assert settings_now["incomingemailfilteringmethod"] == settings_before["incomingemailfilteringmethod"]

    user_entry = WaveMailbox.objects.get(wave=wave, is_queue=False)
    inventory = InventoryMailbox.objects.get(pk=user_entry.mailbox_id)
    assert inventory.incoming_delivery == user_row["incomingemaildeliverymethod"]
    assert inventory.email_approval == user_row["emailrouteraccessapproval"]
    assert user_entry.rollback_report["restored"]["mailbox"]
    assert AuditEvent.objects.filter(action="migration.rollback_requested", actor=migration_lead).count() == 2
    assert AuditEvent.objects.filter(action="migration.mailbox_rolled_back").count() == 2


def test_a_mailbox_changed_in_dynamics_after_migration_is_reported_not_overwritten(
    m365_settings, fresh_sim, redis_queue, migration_lead
):
    prepare(fresh_sim)
    row = legacy(fresh_sim, owner="systemuser")[0]
    exo = profile_ids(fresh_sim)[EXCHANGE_ONLINE_PROFILE]
    wave = _migrate(fresh_sim, redis_queue, migration_lead, [row])
    entry = WaveMailbox.objects.get(wave=wave)
    assert entry.state == WaveMailboxState.MIGRATED, entry.last_error
    # Someone in Dynamics 365 turns outgoing email off after the migration.
    fresh_sim.control("PATCH", f"state/mailboxes/{row['mailboxid']}", {"outgoingemaildeliverymethod": 0})
    since = fresh_sim.last_seq()

    _roll_back(redis_queue, migration_lead, entry)

    entry.refresh_from_db()
    assert entry.state == WaveMailboxState.ROLLBACK_CONFLICT
    assert "changed in Dynamics 365 after the migration" in entry.last_error
    assert "Outgoing email" in entry.last_error
    report = entry.rollback_report
    assert report["record"] == "mailbox"
    assert {"field": "outgoingemaildeliverymethod", "label": "Outgoing email", "expected": 2, "found": 0} in report[
        "differences"
    ]
    now = fresh_sim.row("mailboxes", row["mailboxid"])
    assert now["outgoingemaildeliverymethod"] == 0  # their change stands
    assert now["_emailserverprofile_value"] == exo  # and nothing of ours was undone over it
    assert writes(fresh_sim, since) == []
    refused = [item for item in fresh_sim.ledger(since) if item["method"] == "PATCH"]
    assert refused and all(item["status"] == 412 for item in refused)


def test_a_tracking_option_changed_meanwhile_is_reported_and_nothing_is_restored(
    m365_settings, fresh_sim, redis_queue, migration_lead
):
    prepare(fresh_sim)
    row = legacy(fresh_sim, owner="systemuser")[0]
    user_id = row["_regardingobjectid_value"]
    wave = _migrate(fresh_sim, redis_queue, migration_lead, [row])
    entry = WaveMailbox.objects.get(wave=wave)
    before = fresh_sim.row("usersettingscollection", user_id)["incomingemailfilteringmethod"]
    changed = 4 if before != 4 else 0
    fresh_sim.control("PATCH", f"state/usersettingscollection/{user_id}", {"incomingemailfilteringmethod": changed})
    since = fresh_sim.last_seq()

    _roll_back(redis_queue, migration_lead, entry)

    entry.refresh_from_db()
    assert entry.state == WaveMailboxState.ROLLBACK_CONFLICT
    assert entry.rollback_report["record"] == "usersettings"
    assert "Track incoming email" in entry.last_error
    assert fresh_sim.row("mailboxes", row["mailboxid"])["incomingemaildeliverymethod"] == 2  # untouched
    assert writes(fresh_sim, since) == []


def test_a_mailbox_that_needs_attention_can_be_rolled_back(m365_settings, fresh_sim, redis_queue, migration_lead):
    prepare(fresh_sim, deny_address_approval=True)
    row = legacy(fresh_sim, owner="queue", needs_approval=True)[0]
    wave = _migrate(fresh_sim, redis_queue, migration_lead, [row])
    entry = WaveMailbox.objects.get(wave=wave)
    assert entry.state == WaveMailboxState.NEEDS_ATTENTION
    assert fresh_sim.row("mailboxes", row["mailboxid"])["incomingemaildeliverymethod"] == 2  # half-way

    _roll_back(redis_queue, migration_lead, entry)

    entry.refresh_from_db()
    assert entry.state == WaveMailboxState.ROLLED_BACK, entry.last_error
    now = fresh_sim.row("mailboxes", row["mailboxid"])
    assert {column: now[column] for column in RESTORED} == {column: row[column] for column in RESTORED}


def test_only_finished_mailboxes_with_a_snapshot_are_rolled_back(m365_settings, fresh_sim, redis_queue, migration_lead):
    prepare(fresh_sim)
    wave = running_wave(legacy(fresh_sim, owner="systemuser"), creator=migration_lead)
    entry = WaveMailbox.objects.get(wave=wave)

    assert migration_rollback(actor=migration_lead, entry_ids=[entry.pk]) == 0

    assert WaveMailbox.objects.get(pk=entry.pk).state == WaveMailboxState.PENDING


def test_only_a_migration_lead_may_roll_back(m365_settings, outsider, migration_lead):
    with pytest.raises(PermissionDeniedError):
        migration_rollback(actor=outsider, entry_ids=[1])
