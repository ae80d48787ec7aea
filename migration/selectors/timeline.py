"""One mailbox's story in one list: what discovery saw change (alerts included), its pre-flight
results, its waves and migration steps, and audit events about it or its wave entries.

Each source is read once with its own bound, so the page costs the same few queries however long
the history; the merged list keeps the newest ``TIMELINE_LIMIT`` entries.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field

from django.db.models import F, Q
from django.db.models.functions import Coalesce
from django.urls import NoReverseMatch, reverse

from migration.models import (
    InventoryChange,
    InventoryMailbox,
    MigrationStep,
    MigrationStepStatus,
    PreflightResult,
    WaveMailbox,
    WaveMailboxState,
)
from portal.audit.models import AuditEvent, Outcome

from .inventory import _history_entry

TIMELINE_LIMIT = 100
# How audit events name a mailbox and a wave entry.
MAILBOX_OBJECT_TYPE = "inventory_mailbox"
WAVE_ENTRY_OBJECT_TYPES = ("wave_mailbox", "wave_entry")
_ALERT_FIELDS = {"open_error_alerts"}


@dataclass(frozen=True)
class TimelineEntry:
    at: dt.datetime
    kind: str  # inventory, alert, preflight, wave, step, audit
    kind_label: str
    title: str
    details: list[str] = field(default_factory=list)
    url: str = ""
    problem: bool = False
    # Ties at the same instant keep a stable order: later-created rows first.
    order: int = 0


@dataclass(frozen=True)
class Timeline:
    entries: list[TimelineEntry]
    truncated: bool


_KIND_ORDER = {"audit": 0, "step": 1, "wave": 2, "preflight": 3, "alert": 4, "inventory": 5}


def _wave_url(wave_id: int) -> str:
    try:
        return reverse("migration:wave", args=[wave_id])
    except NoReverseMatch:  # the wave pages are not installed
        return ""


def _inventory_entries(mailbox_id: int) -> list[TimelineEntry]:
    entries = []
    changes = InventoryChange.objects.filter(mailbox_id=mailbox_id).select_related("sync")
    for change in changes.order_by("-at", "-id")[: TIMELINE_LIMIT + 1]:
        history = _history_entry(change)
        raw = change.changes if isinstance(change.changes, dict) else {}
        is_alert = bool(_ALERT_FIELDS & set(raw))
        source = f" ({change.sync.get_kind_display().lower()} discovery {change.sync_id})" if change.sync else ""
        entries.append(
            TimelineEntry(
                at=change.at,
                kind="alert" if is_alert else "inventory",
                kind_label="Alerts" if is_alert else "Inventory",
                title=f"Discovery saw a change{source}",
                details=[f"{item.label}: {item.before} → {item.after}" for item in history.fields],
                problem=is_alert and _alerts_rose(raw),
                order=change.pk,
            )
        )
    return entries


def _alerts_rose(raw: dict) -> bool:
    pair = raw.get("open_error_alerts")
    if isinstance(pair, list | tuple) and len(pair) == 2:
        before, after = pair
        return isinstance(after, int) and after > (before if isinstance(before, int) else 0)
    return False


def _preflight_entries(mailbox_id: int) -> list[TimelineEntry]:
    results = (
        PreflightResult.objects.filter(mailbox_id=mailbox_id)
        .select_related("preflight__wave")
        .only(
            "id",
            "verdict",
            "findings",
            "changes",
            "checked_at",
            "preflight__id",
            "preflight__wave__id",
            "preflight__wave__name",
        )
        .order_by("-checked_at", "-id")[: TIMELINE_LIMIT + 1]
    )
    entries = []
    for result in results:
        wave = result.preflight.wave
        findings = [item for item in (result.findings or []) if isinstance(item, dict)]
        details = [
            str(item.get("message", "")) + (f" Fix: {item['fix']}" if item.get("fix") else "") for item in findings
        ]
        details += [
            f"{item.get('label', item.get('field', ''))}: {item.get('before')} → {item.get('after')}"
            for item in (result.changes or [])
            if isinstance(item, dict)
        ]
        entries.append(
            TimelineEntry(
                at=result.checked_at,
                kind="preflight",
                kind_label="Pre-flight",
                title=f"Pre-flight: {result.get_verdict_display()}" + (f" (wave {wave.name})" if wave else ""),
                details=[detail for detail in details if detail.strip()],
                url=_wave_url(wave.pk) if wave else "",
                problem=result.verdict == "blocked",
                order=result.pk,
            )
        )
    return entries


def _wave_entries(entries_of_mailbox: list[WaveMailbox]) -> list[TimelineEntry]:
    timeline = []
    for entry in entries_of_mailbox:
        url = _wave_url(entry.wave_id)
        if entry.started_at:
            timeline.append(
                TimelineEntry(
                    at=entry.started_at,
                    kind="wave",
                    kind_label="Wave",
                    title=f"Migration started in wave {entry.wave.name}",
                    url=url,
                    order=entry.pk,
                )
            )
        if entry.finished_at:
            problem = entry.state in (WaveMailboxState.NEEDS_ATTENTION, WaveMailboxState.ROLLBACK_CONFLICT)
            timeline.append(
                TimelineEntry(
                    at=entry.finished_at,
                    kind="wave",
                    kind_label="Wave",
                    title=f"{entry.get_state_display()} in wave {entry.wave.name}",
                    details=[entry.last_error] if entry.last_error else [],
                    url=url,
                    problem=problem,
                    order=entry.pk,
                )
            )
    return timeline


def _step_entries(mailbox_id: int) -> list[TimelineEntry]:
    steps = (
        MigrationStep.objects.filter(entry__mailbox_id=mailbox_id, started_at__isnull=False)
        .select_related("entry__wave")
        .only(
            "id",
            "name",
            "status",
            "error",
            "error_code",
            "attempts",
            "started_at",
            "finished_at",
            "entry__id",
            "entry__wave__id",
            "entry__wave__name",
        )
        .annotate(happened_at=Coalesce(F("finished_at"), F("started_at")))
        .order_by("-happened_at", "-id")[: TIMELINE_LIMIT + 1]
    )
    entries = []
    for step in steps:
        details = []
        if step.error:
            details.append(step.error + (f" ({step.error_code})" if step.error_code else ""))
        if step.attempts > 1:
            details.append(f"{step.attempts} attempts")
        entries.append(
            TimelineEntry(
                at=step.happened_at,
                kind="step",
                kind_label="Migration step",
                title=f"{step.name.replace('_', ' ').capitalize()}: {step.get_status_display().lower()} "
                f"(wave {step.entry.wave.name})",
                details=details,
                url=_wave_url(step.entry.wave_id),
                problem=step.status == MigrationStepStatus.FAILED,
                order=step.pk,
            )
        )
    return entries


def _audit_entries(mailbox_id: int, entry_ids: list[int]) -> list[TimelineEntry]:
    about = Q(object_type=MAILBOX_OBJECT_TYPE, object_id=str(mailbox_id))
    if entry_ids:
        about |= Q(object_type__in=WAVE_ENTRY_OBJECT_TYPES, object_id__in=[str(pk) for pk in entry_ids])
    events = (
        AuditEvent.objects.filter(about)
        .only("seq", "created_at", "action", "actor_name", "outcome", "reason", "after_json")
        .order_by("-seq")[: TIMELINE_LIMIT + 1]
    )
    entries = []
    for event in events:
        details = [event.reason] if event.reason else []
        entries.append(
            TimelineEntry(
                at=event.created_at,
                kind="audit",
                kind_label="Audit",
                title=f"{event.action} by {event.actor_name}"
                + ("" if event.outcome == Outcome.SUCCESS else f" ({event.get_outcome_display().lower()})"),
                details=details + _audit_summary(event.after_json),
                problem=event.outcome != Outcome.SUCCESS,
                order=event.seq,
            )
        )
    return entries


def _audit_summary(after_json: str) -> list[str]:
    try:
        after = json.loads(after_json)
    except ValueError:
        return []
    if not isinstance(after, dict) or not after:
        return []
    text = ", ".join(f"{key}: {value}" for key, value in after.items() if not isinstance(value, dict | list))
    return [text[:300]] if text else []


def mailbox_timeline(mailbox: InventoryMailbox) -> Timeline:
    """The newest ``TIMELINE_LIMIT`` events about the mailbox, newest first: five queries at any size."""
    wave_entries = list(
        WaveMailbox.objects.filter(mailbox_id=mailbox.pk)
        .select_related("wave")
        .only("id", "state", "started_at", "finished_at", "last_error", "wave__id", "wave__name")
        .order_by("-id")[:TIMELINE_LIMIT]
    )
    entries = [
        *_inventory_entries(mailbox.pk),
        *_preflight_entries(mailbox.pk),
        *_wave_entries(wave_entries),
        *_step_entries(mailbox.pk),
        *_audit_entries(mailbox.pk, [entry.pk for entry in wave_entries]),
    ]
    entries.sort(key=lambda entry: (entry.at, -_KIND_ORDER[entry.kind], entry.order), reverse=True)
    return Timeline(entries=entries[:TIMELINE_LIMIT], truncated=len(entries) > TIMELINE_LIMIT)
