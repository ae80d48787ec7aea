"""Recording events: the chain links, and the database refuses to change history."""

from __future__ import annotations

import pytest
from django.db import DatabaseError, connection, transaction

from portal.audit.chain import GENESIS_HASH, recompute_hash
from portal.audit.models import AuditChainHead, AuditEvent, Outcome
from portal.audit.services import audit_record


@pytest.mark.django_db
def test_events_form_a_chain(requester):
    first = audit_record(actor=requester, action="test.first", object_type="thing", object_id=1, after={"a": 1})
    second = audit_record(actor=None, action="test.second", outcome=Outcome.FAILURE, reason="because")

    assert (first.seq, second.seq) == (1, 2)
    assert first.prev_hash == GENESIS_HASH
    assert second.prev_hash == first.hash
    assert recompute_hash(first) == first.hash
    assert first.actor_name == "Riya Patel (riya)"
    assert second.actor_name == "System"
    head = AuditChainHead.objects.get(pk=1)
    assert (head.seq, head.hash) == (2, second.hash)


@pytest.mark.django_db
def test_stored_values_hash_the_same_after_a_round_trip(requester):
    event = audit_record(
        actor=requester,
        action="test.values",
        before={"name": "Öwen ☃", "when": "2026-01-01", "n": 1.5},
        after={"list": [1, "two", None]},
        reason='quote " and control \x01 and NUL \x00 kept safe',
    )
    stored = AuditEvent.objects.get(pk=event.pk)
    assert recompute_hash(stored) == stored.hash
    assert stored.before == {"name": "Öwen ☃", "when": "2026-01-01", "n": 1.5}
    assert "\x00" not in stored.reason


@pytest.mark.django_db
def test_the_event_rolls_back_with_the_change_it_records(requester):
    with pytest.raises(RuntimeError), transaction.atomic():
        audit_record(actor=requester, action="test.rolled_back")
        raise RuntimeError("the change failed")
    assert not AuditEvent.objects.filter(action="test.rolled_back").exists()
    # The chain continues from where it was, not from the rolled-back event.
    event = audit_record(actor=requester, action="test.after_rollback")
    assert event.seq == 1


@pytest.mark.django_db
def test_postgresql_refuses_update(requester):
    event = audit_record(actor=requester, action="test.protected")
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("UPDATE audit_auditevent SET reason = 'edited' WHERE id = %s", [event.pk])
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEvent.objects.filter(pk=event.pk).update(actor_name="someone else")
    assert AuditEvent.objects.get(pk=event.pk).reason == ""


@pytest.mark.django_db
def test_postgresql_refuses_delete(requester):
    event = audit_record(actor=requester, action="test.protected")
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("DELETE FROM audit_auditevent WHERE id = %s", [event.pk])
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEvent.objects.all().delete()
    assert AuditEvent.objects.filter(pk=event.pk).exists()


@pytest.mark.django_db
def test_an_unknown_outcome_is_a_programming_error(requester):
    with pytest.raises(ValueError, match="unknown audit outcome"):
        audit_record(actor=requester, action="test.bad", outcome="maybe")
