"""Canonical serialisation, hashing and verification of the audit chain."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from django.core.serializers.json import DjangoJSONEncoder

GENESIS_HASH = "0" * 64


def to_canonical_json(value: Any) -> str:
    """JSON with sorted keys, no spaces and ASCII escapes: one spelling per value."""
    return json.dumps(value, cls=DjangoJSONEncoder, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def event_hash(
    *,
    seq: int,
    created_at: datetime,
    actor_id: int | None,
    actor_name: str,
    action: str,
    object_type: str,
    object_id: str,
    before_json: str,
    after_json: str,
    outcome: str,
    reason: str,
    correlation_id: str,
    prev_hash: str,
) -> str:
    document = {
        "seq": seq,
        "created_at": created_at.astimezone(UTC).isoformat(timespec="microseconds"),
        "actor_id": actor_id,
        "actor_name": actor_name,
        "action": action,
        "object_type": object_type,
        "object_id": object_id,
        "before": before_json,
        "after": after_json,
        "outcome": outcome,
        "reason": reason,
        "correlation_id": correlation_id,
        "prev_hash": prev_hash,
    }
    return hashlib.sha256(to_canonical_json(document).encode("ascii")).hexdigest()


class _StoredEvent(Protocol):
    pk: Any
    seq: int
    created_at: datetime
    actor_id: int | None
    actor_name: str
    action: str
    object_type: str
    object_id: str
    before_json: str
    after_json: str
    outcome: str
    reason: str
    correlation_id: str
    prev_hash: str
    hash: str


def recompute_hash(event: _StoredEvent) -> str:
    return event_hash(
        seq=event.seq,
        created_at=event.created_at,
        actor_id=event.actor_id,
        actor_name=event.actor_name,
        action=event.action,
        object_type=event.object_type,
        object_id=event.object_id,
        before_json=event.before_json,
        after_json=event.after_json,
        outcome=event.outcome,
        reason=event.reason,
        correlation_id=event.correlation_id,
        prev_hash=event.prev_hash,
    )


@dataclass(frozen=True)
class ChainReport:
    intact: bool
    events_checked: int
    first_bad_seq: int | None = None
    first_bad_id: Any = None
    problem: str = ""
    last_hash: str = GENESIS_HASH

    def describe(self) -> str:
        if self.intact:
            return f"Audit chain intact: {self.events_checked} events verified, last hash {self.last_hash}."
        return f"Audit chain broken at event #{self.first_bad_seq} (id {self.first_bad_id}): {self.problem}"


def verify_events(events: Iterable[_StoredEvent], *, head_seq: int | None, head_hash: str | None) -> ChainReport:
    """Walk ``events`` (ordered by ``seq``) and report the first event that breaks the chain."""
    expected_seq = 1
    expected_prev = GENESIS_HASH
    for event in events:
        if event.seq != expected_seq:
            missing = (
                f"event #{expected_seq} is missing"
                if event.seq > expected_seq
                else f"it repeats sequence number {event.seq}"
            )
            return _broken(event, expected_seq - 1, f"{missing}; events were removed or reordered.")
        if event.prev_hash != expected_prev:
            return _broken(
                event,
                expected_seq - 1,
                f"it does not link to event #{expected_seq - 1}: the event before it was "
                "altered, removed or reordered.",
            )
        if recompute_hash(event) != event.hash:
            return _broken(event, expected_seq - 1, "its contents do not match its hash: it was altered.")
        expected_prev = event.hash
        expected_seq += 1

    checked = expected_seq - 1
    if head_seq is not None and (head_seq != checked or head_hash != expected_prev):
        return ChainReport(
            intact=False,
            events_checked=checked,
            first_bad_seq=checked + 1,
            first_bad_id=None,
            problem=(
                f"the chain head records {head_seq} events but {checked} remain: "
                "events at the end were removed, or the head was altered."
            ),
            last_hash=expected_prev,
        )
    return ChainReport(intact=True, events_checked=checked, last_hash=expected_prev)


def _broken(event: _StoredEvent, checked: int, problem: str) -> ChainReport:
    return ChainReport(
        intact=False,
        events_checked=checked,
        first_bad_seq=event.seq,
        first_bad_id=event.pk,
        problem=problem,
    )
