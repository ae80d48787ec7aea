"""verify_audit finds any event altered, removed or reordered, and names it.

Tampering is simulated the way a database superuser would do it: with the
append-only trigger disabled for the duration of the change.
"""

from __future__ import annotations

from contextlib import contextmanager

import pytest
from django.core.management import call_command
from django.db import connection

from portal.audit.models import AuditEvent
from portal.audit.services import audit_record


@contextmanager
def trigger_disabled():
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE audit_auditevent DISABLE TRIGGER audit_event_append_only")
        try:
            yield cursor
        finally:
            cursor.execute("ALTER TABLE audit_auditevent ENABLE TRIGGER audit_event_append_only")


def run_verify(capsys) -> tuple[int, str]:
    try:
        call_command("verify_audit")
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    else:
        code = 0
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.fixture
def chain(requester, approver):
    events = []
    for n in range(6):
        actor = requester if n % 2 else approver
        events.append(audit_record(actor=actor, action=f"test.event_{n}", object_type="thing", object_id=n))
    return events


@pytest.mark.django_db
def test_an_untouched_chain_verifies(chain, capsys):
    code, output = run_verify(capsys)
    assert code == 0
    assert "Audit chain intact: 6 events verified" in output


@pytest.mark.django_db
def test_an_empty_chain_verifies(capsys):
    code, output = run_verify(capsys)
    assert code == 0
    assert "0 events verified" in output


@pytest.mark.django_db
def test_one_changed_byte_is_found_and_named(chain, capsys):
    target = chain[2]
    with trigger_disabled() as cursor:
        cursor.execute(
            "UPDATE audit_auditevent SET actor_name = overlay(actor_name placing 'X' from 1 for 1) WHERE id = %s",
            [target.pk],
        )
    code, output = run_verify(capsys)
    assert code == 1
    assert f"broken at event #{target.seq} (id {target.pk})" in output
    assert "do not match its hash" in output


@pytest.mark.django_db
def test_a_change_in_before_after_json_is_found(chain, capsys):
    target = chain[4]
    with trigger_disabled() as cursor:
        cursor.execute("UPDATE audit_auditevent SET after_json = '{\"x\":1}' WHERE id = %s", [target.pk])
    code, output = run_verify(capsys)
    assert code == 1
    assert f"event #{target.seq}" in output


@pytest.mark.django_db
def test_an_altered_event_with_a_recomputed_hash_breaks_the_next_link(chain, capsys):
    from portal.audit.chain import recompute_hash

    target = chain[1]
    target.reason = "rewritten history"
    forged = recompute_hash(target)
    with trigger_disabled() as cursor:
        cursor.execute(
            "UPDATE audit_auditevent SET reason = %s, hash = %s WHERE id = %s", [target.reason, forged, target.pk]
        )
    code, output = run_verify(capsys)
    assert code == 1
    assert f"broken at event #{chain[2].seq}" in output
    assert f"does not link to event #{target.seq}" in output


@pytest.mark.django_db
def test_a_removed_event_is_found_and_the_gap_named(chain, capsys):
    removed = chain[3]
    with trigger_disabled() as cursor:
        cursor.execute("DELETE FROM audit_auditevent WHERE id = %s", [removed.pk])
    code, output = run_verify(capsys)
    assert code == 1
    assert f"broken at event #{chain[4].seq}" in output
    assert f"event #{removed.seq} is missing" in output


@pytest.mark.django_db
def test_the_newest_event_removed_is_found_through_the_chain_head(chain, capsys):
    with trigger_disabled() as cursor:
        cursor.execute("DELETE FROM audit_auditevent WHERE id = %s", [chain[-1].pk])
    code, output = run_verify(capsys)
    assert code == 1
    assert "events at the end were removed" in output
    assert f"#{chain[-1].seq}" in output


@pytest.mark.django_db
def test_two_swapped_events_are_found(chain, capsys):
    a, b = chain[1], chain[4]
    with trigger_disabled() as cursor:
        # Swap their places in the sequence (through a free number, as seq is unique).
        cursor.execute("UPDATE audit_auditevent SET seq = 999999 WHERE id = %s", [a.pk])
        cursor.execute("UPDATE audit_auditevent SET seq = %s WHERE id = %s", [a.seq, b.pk])
        cursor.execute("UPDATE audit_auditevent SET seq = %s WHERE id = %s", [b.seq, a.pk])
    code, output = run_verify(capsys)
    assert code == 1
    assert f"broken at event #{a.seq} (id {b.pk})" in output


@pytest.mark.django_db
def test_swapped_contents_are_found(chain, capsys):
    a, b = chain[0], chain[1]
    with trigger_disabled() as cursor:
        cursor.execute(
            "UPDATE audit_auditevent SET action = CASE id WHEN %s THEN %s ELSE %s END WHERE id IN (%s, %s)",
            [a.pk, b.action, a.action, a.pk, b.pk],
        )
    code, output = run_verify(capsys)
    assert code == 1
    assert f"broken at event #{a.seq}" in output


@pytest.mark.django_db
def test_verification_streams_large_chains(requester, capsys):
    for n in range(250):
        audit_record(actor=requester, action="test.bulk", object_id=n)
    from portal.audit.services import audit_chain_verify

    report = audit_chain_verify(chunk_size=40)
    assert report.intact
    assert report.events_checked == 250 == AuditEvent.objects.count()
