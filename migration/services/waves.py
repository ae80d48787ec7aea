"""Waves: building a set of mailboxes to migrate, approving it, and starting, pausing or cancelling it.

A migration lead builds a wave from inventory filters or a CSV file of addresses. Mailboxes that
need no migration (already compliant, removed from Dynamics 365, excluded by an annotation) are
left out and reported; a mailbox can be in one active wave at a time. The wave runs queues first,
then users, then by priority (lower first), then by name.

A wave needs a finished pre-flight before it is submitted, and a platform admin other than its
creator approves it against the latest pre-flight. Every transition is one function here: atomic,
row-locked, re-checked inside the lock and audited; follow-up work is queued after commit. The
migration engine (:mod:`migration.services.migration_runs`) runs the mailboxes and enforces the
Test & Enable cap and blackout windows; :func:`wave_schedule_estimate` shows what to expect.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import io
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Count, Min
from django.db.models.functions import Upper
from django.utils import timezone

from migration.models import (
    ACTIVE_WAVE_MAILBOX_STATES,
    InventoryAnnotation,
    InventoryMailbox,
    OwnerType,
    PreflightRun,
    PreflightStatus,
    Readiness,
    Wave,
    WaveMailbox,
    WaveMailboxState,
    WaveStatus,
)
from migration.selectors.inventory import InventoryFilters, inventory_mailboxes_filtered
from portal.accounts.models import User
from portal.accounts.roles import perm
from portal.audit.services import audit_record
from portal.exceptions import InvalidStateError, PermissionDeniedError, PortalError
from portal.policy.models import BlackoutWindow
from portal.policy.services import policy_get
from portal.queue import enqueue_on_commit

NAME_MAX = 200
DESCRIPTION_MAX = 2000
NOTE_MAX = 2000
MAX_WAVE_MAILBOXES = 10_000
MAX_CSV_BYTES = 1024 * 1024
MAX_PROBLEMS_SHOWN = 50
DEFAULT_PRIORITY = 100
MAX_PRIORITY = 1000
DISPATCH_JOB_TIMEOUT = 600
MAX_SLOTS = 500
_ADDRESS = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_ADDRESS_HEADINGS = {"emailaddress", "email", "address", "mailboxaddress", "mailbox", "smtpaddress"}
_PRIORITY_HEADINGS = {"priority"}

# The wave mailboxes that have not started: cancelling a wave cancels these.
NOT_STARTED_STATES = (WaveMailboxState.PENDING, WaveMailboxState.SCHEDULED)


class WaveError(PortalError):
    """The wave cannot be built or changed as asked."""


class WaveCSVError(WaveError):
    """The CSV of addresses cannot be used; ``problems`` lists every reason, row by row."""

    def __init__(self, problems: list[str], *, total: int | None = None) -> None:
        super().__init__(problems[0] if problems else "The file could not be used", field="csv_file")
        self.problems = problems[:MAX_PROBLEMS_SHOWN]
        self.total = total if total is not None else len(problems)

    @property
    def hidden(self) -> int:
        return max(0, self.total - len(self.problems))


# --- who may do what -----------------------------------------------------------------------------


def _require(actor: User, codename: str, message: str) -> None:
    if actor is None or not actor.has_perm(perm(codename)):
        raise PermissionDeniedError(message)


def _require_lead(actor: User) -> None:
    _require(actor, "lead_migration", "Only a migration lead can do this.")


def _locked_wave(wave_id: int) -> Wave:
    wave = Wave.objects.select_for_update().filter(pk=wave_id).first()
    if wave is None:
        raise WaveError("The wave no longer exists.")
    return wave


def _expect(wave: Wave, *states: str, doing: str) -> None:
    if wave.status not in states:
        raise InvalidStateError(f"The wave is {wave.get_status_display().lower()}, so you cannot {doing} it.")


def _snapshot(wave: Wave) -> dict[str, Any]:
    return {"status": wave.status}


# --- building ------------------------------------------------------------------------------------


@dataclass
class WaveBuild:
    """The wave created and what was left out of it, by reason."""

    wave: Wave
    added: int
    left_out: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)


LEFT_OUT_REASONS = {
    "compliant": "already compliant",
    "removed": "removed from Dynamics 365",
    "excluded": "excluded from migration by an annotation",
    "in_active_wave": "already in another wave that has not finished",
}


def _clean_text(value: str, *, label: str, limit: int, required: bool) -> str:
    value = (value or "").strip()
    if required and not value:
        raise WaveError(f"Enter the wave's {label.lower()}", field=label.lower())
    if len(value) > limit:
        raise WaveError(f"{label} must be {limit:,} characters or fewer", field=label.lower())
    if "\x00" in value:
        raise WaveError(f"{label} can only contain letters, numbers, spaces and punctuation", field=label.lower())
    return value


def _candidates(mailbox_ids: Iterable[int]) -> tuple[list[InventoryMailbox], dict[str, list[InventoryMailbox]]]:
    """The mailboxes that can go in a wave, and those left out by reason."""
    ids = list(dict.fromkeys(mailbox_ids))
    rows = list(
        InventoryMailbox.objects.filter(pk__in=ids)
        .select_related("annotation")
        .only(
            "id",
            "name",
            "email_address",
            "owner_type",
            "readiness",
            "removed_at",
            "annotation__excluded",
        )
    )
    busy = set(WaveMailbox.objects.filter(mailbox_id__in=ids, active=True).values_list("mailbox_id", flat=True))
    kept: list[InventoryMailbox] = []
    left: dict[str, list[InventoryMailbox]] = {}
    for mailbox in rows:
        annotation: InventoryAnnotation | None = getattr(mailbox, "annotation", None)
        if mailbox.removed_at is not None:
            reason = "removed"
        elif mailbox.pk in busy:
            reason = "in_active_wave"
        elif annotation is not None and annotation.excluded:
            reason = "excluded"
        elif mailbox.readiness == Readiness.COMPLIANT:
            reason = "compliant"
        else:
            kept.append(mailbox)
            continue
        left.setdefault(reason, []).append(mailbox)
    return kept, left


def _wave_create(
    *,
    actor: User,
    name: str,
    description: str,
    built_from: dict[str, Any],
    mailbox_ids: Sequence[int],
    priorities: dict[int, int] | None = None,
) -> WaveBuild:
    _require_lead(actor)
    name = _clean_text(name, label="Name", limit=NAME_MAX, required=True)
    description = _clean_text(description, label="Description", limit=DESCRIPTION_MAX, required=False)
    if len(mailbox_ids) > MAX_WAVE_MAILBOXES:
        raise WaveError(
            f"A wave can hold at most {MAX_WAVE_MAILBOXES:,} mailboxes; these filters choose "
            f"{len(mailbox_ids):,}. Narrow the filters or split the wave."
        )
    priorities = priorities or {}
    policy = policy_get()
    try:
        with transaction.atomic():
            kept, left = _candidates(mailbox_ids)
            if not kept:
                reasons = ", ".join(f"{len(rows):,} {LEFT_OUT_REASONS[key]}" for key, rows in left.items())
                raise WaveError(
                    "None of the chosen mailboxes can be migrated"
                    + (f" ({reasons})" if reasons else "")
                    + ". Choose other mailboxes."
                )
            now = timezone.now()
            left_out = {key: len(rows) for key, rows in left.items()}
            wave = Wave.objects.create(
                name=name,
                description=description,
                created_by=actor,
                created_at=now,
                built_from={**built_from, "added": len(kept), "left_out": left_out},
                test_enable_cap=policy.wave_test_enable_cap,
                cap_window_hours=policy.wave_cap_window_hours,
                migrate_act_for_users=policy.migrate_act_for_users,
            )
            entries = [
                WaveMailbox(
                    wave=wave,
                    mailbox=mailbox,
                    priority=priorities.get(mailbox.pk, DEFAULT_PRIORITY),
                    is_queue=mailbox.owner_type == OwnerType.QUEUE,
                    state=WaveMailboxState.PENDING,
                    active=True,
                )
                for mailbox in kept
            ]
            _order(entries, {mailbox.pk: mailbox for mailbox in kept})
            WaveMailbox.objects.bulk_create(entries, batch_size=1000)
            audit_record(
                actor=actor,
                action="wave.created",
                object_type="wave",
                object_id=wave.pk,
                after={"name": name, "built_from": wave.built_from},
            )
    except IntegrityError:
        raise WaveError("Some of these mailboxes were added to another wave at the same moment. Try again.") from None
    return WaveBuild(
        wave=wave,
        added=len(kept),
        left_out=left_out,
        examples={key: [m.email_address or m.name for m in rows[:5]] for key, rows in left.items()},
    )


def _order_key(entry: WaveMailbox, mailbox: InventoryMailbox) -> tuple[Any, ...]:
    # Queues (and forward mailboxes, which many share) before users, as Microsoft advises.
    is_user = mailbox.owner_type == OwnerType.USER
    return (is_user, entry.priority, (mailbox.name or "").casefold(), mailbox.pk)


def _order(entries: list[WaveMailbox], mailboxes: dict[int, InventoryMailbox]) -> None:
    entries.sort(key=lambda entry: _order_key(entry, mailboxes[entry.mailbox_id]))
    for position, entry in enumerate(entries, start=1):
        entry.position = position


def wave_create_from_filters(*, actor: User, name: str, description: str, filters: InventoryFilters) -> WaveBuild:
    """A wave of the inventory mailboxes the filters choose (those that need migrating)."""
    ids = list(
        inventory_mailboxes_filtered(filters).order_by("pk").values_list("pk", flat=True)[: MAX_WAVE_MAILBOXES + 1]
    )
    if not ids:
        raise WaveError("No mailboxes in the inventory match these filters. Change the filters.")
    return _wave_create(
        actor=actor,
        name=name,
        description=description,
        built_from={"kind": "filters", "filters": filters.as_dict()},
        mailbox_ids=ids,
    )


# --- from a CSV of addresses ----------------------------------------------------------------------


@dataclass(frozen=True)
class CSVRows:
    mailbox_ids: list[int]
    priorities: dict[int, int]
    rows: int
    left_out: dict[str, list[str]]  # reason -> addresses (compliant or excluded), reported not refused


def _decode(content: bytes) -> str:
    if content.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return content.decode("utf-16")
        except UnicodeDecodeError:
            raise WaveCSVError(["The selected file must be saved as CSV UTF-8 (comma delimited)"]) from None
    if b"\x00" in content[:4096]:
        raise WaveCSVError(["The selected file must be a CSV file"])
    try:
        return content.decode("utf-8-sig")
    except UnicodeDecodeError:
        # Excel's "CSV (comma delimited)" on Windows saves in Windows-1252.
        try:
            return content.decode("cp1252")
        except UnicodeDecodeError:
            raise WaveCSVError(["The selected file must be saved as CSV UTF-8 (comma delimited)"]) from None


def wave_csv_read(content: bytes) -> CSVRows:
    """Check a CSV of addresses (an optional priority column) against the inventory, row by row.

    Unknown, duplicated, removed and already-in-a-wave addresses are errors, all reported at
    once; compliant and excluded mailboxes are left out and reported.
    """
    if len(content) > MAX_CSV_BYTES:
        raise WaveCSVError([f"The selected file must be smaller than {MAX_CSV_BYTES // 1024:,}KB"])
    if not content.strip():
        raise WaveCSVError(["The selected file is empty"])
    text = _decode(content)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        raw = [(number, cells) for number, cells in enumerate(reader, start=1) if any(c.strip() for c in cells)]
    except csv.Error as error:
        raise WaveCSVError([f"The selected file is not a valid CSV file: {error}"]) from None
    if not raw:
        raise WaveCSVError(["The selected file is empty"])
    address_column, priority_column = 0, None
    headings = [re.sub(r"[^a-z]", "", cell.lower()) for cell in raw[0][1]]
    if any(heading in _ADDRESS_HEADINGS for heading in headings):
        address_column = next(i for i, heading in enumerate(headings) if heading in _ADDRESS_HEADINGS)
        priority_column = next((i for i, heading in enumerate(headings) if heading in _PRIORITY_HEADINGS), None)
        raw = raw[1:]
    elif len(raw[0][1]) == 1 and ";" in raw[0][1][0]:
        raise WaveCSVError(["The selected file separates its columns with semicolons. Save it as CSV UTF-8"])
    if not raw:
        raise WaveCSVError(["The file has a heading but no addresses"])
    if len(raw) > MAX_WAVE_MAILBOXES:
        raise WaveCSVError([f"The file has more than {MAX_WAVE_MAILBOXES:,} addresses. Split it into smaller waves"])

    problems: list[str] = []
    wanted: list[tuple[int, str, int, str]] = []
    seen: dict[str, int] = {}
    for number, cells in raw:
        address = cells[address_column].strip() if address_column < len(cells) else ""
        shown = address[:100]
        if not address:
            problems.append(f"Row {number}: enter an email address")
            continue
        if not _ADDRESS.match(address):
            problems.append(f"Row {number}: '{shown}' is not an email address")
            continue
        priority = DEFAULT_PRIORITY
        if priority_column is not None and priority_column < len(cells) and cells[priority_column].strip():
            text_priority = cells[priority_column].strip()
            if not text_priority.isdigit() or not 0 <= int(text_priority) <= MAX_PRIORITY:
                problems.append(f"Row {number}: priority must be a whole number from 0 to {MAX_PRIORITY}")
                continue
            priority = int(text_priority)
        key = address.upper()
        if key in seen:
            problems.append(f"Row {number}: '{shown}' is also on row {seen[key]}")
            continue
        seen[key] = number
        wanted.append((number, key, priority, shown))

    rows = (
        InventoryMailbox.objects.annotate(address_upper=Upper("email_address"))
        .filter(address_upper__in=[key for _, key, _, _ in wanted])
        .order_by("removed_at", "pk")
        .values_list("address_upper", "pk", "removed_at")
    )
    by_address: dict[str, list[tuple[int, Any]]] = {}
    for address, pk, removed_at in rows:
        by_address.setdefault(address, []).append((pk, removed_at))
    chosen: dict[int, tuple[int, str, int, str]] = {}
    for number, key, priority, shown in wanted:
        found = by_address.get(key, [])
        live = [pk for pk, removed_at in found if removed_at is None]
        if not found:
            problems.append(f"Row {number}: there is no mailbox with the address '{shown}' in the inventory")
        elif not live:
            problems.append(f"Row {number}: the mailbox '{shown}' has been removed from Dynamics 365")
        elif len(live) > 1:
            problems.append(f"Row {number}: more than one mailbox has the address '{shown}'")
        else:
            chosen[live[0]] = (number, key, priority, shown)

    busy = dict(
        WaveMailbox.objects.filter(mailbox_id__in=list(chosen), active=True)
        .select_related("wave")
        .values_list("mailbox_id", "wave__name")
    )
    for mailbox_id, wave_name in busy.items():
        number, _key, _, shown = chosen.pop(mailbox_id)
        problems.append(f"Row {number}: '{shown}' is already in the wave '{wave_name[:100]}'")
    if problems:
        problems.sort(key=lambda message: int(message.split(":", 1)[0].removeprefix("Row ")))
        raise WaveCSVError(problems)

    _kept, left = _candidates(list(chosen))
    return CSVRows(
        mailbox_ids=list(chosen),
        priorities={pk: priority for pk, (_, _, priority, _) in chosen.items()},
        rows=len(raw),
        left_out={reason: [m.email_address for m in rows_] for reason, rows_ in left.items()},
    )


def wave_create_from_csv(*, actor: User, name: str, description: str, upload: bytes, file_name: str = "") -> WaveBuild:
    """A wave of the mailboxes a CSV file of addresses names (with an optional priority column)."""
    _require_lead(actor)
    checked = wave_csv_read(upload)
    return _wave_create(
        actor=actor,
        name=name,
        description=description,
        built_from={"kind": "csv", "file_name": file_name[:255], "rows": checked.rows},
        mailbox_ids=checked.mailbox_ids,
        priorities=checked.priorities,
    )


# --- editing a draft ------------------------------------------------------------------------------


def wave_mailbox_priority_set(*, actor: User, wave_id: int, entry_id: int, priority: int) -> None:
    """Change one mailbox's priority in a draft wave, and put the wave back in order."""
    _require_lead(actor)
    if not 0 <= priority <= MAX_PRIORITY:
        raise WaveError(f"Priority must be a whole number from 0 to {MAX_PRIORITY}", field="priority")
    with transaction.atomic():
        wave = _locked_wave(wave_id)
        _expect(wave, WaveStatus.DRAFT, doing="change the priorities of")
        entry = WaveMailbox.objects.filter(pk=entry_id, wave=wave).first()
        if entry is None:
            raise WaveError("The mailbox is not in this wave.")
        before = entry.priority
        if before == priority:
            return
        entry.priority = priority
        entry.save(update_fields=["priority", "updated_at"])
        _reorder(wave)
        audit_record(
            actor=actor,
            action="wave.priority_changed",
            object_type="wave",
            object_id=wave.pk,
            before={"mailbox": entry.mailbox_id, "priority": before},
            after={"mailbox": entry.mailbox_id, "priority": priority},
        )


def _reorder(wave: Wave) -> None:
    entries = list(
        WaveMailbox.objects.filter(wave=wave)
        .select_related("mailbox")
        .only("id", "position", "priority", "mailbox_id", "mailbox__owner_type", "mailbox__name")
    )
    old = {entry.pk: entry.position for entry in entries}
    _order(entries, {entry.mailbox_id: entry.mailbox for entry in entries})
    changed = [entry for entry in entries if entry.position != old[entry.pk]]
    WaveMailbox.objects.bulk_update(changed, ["position"], batch_size=1000)


# --- approval ------------------------------------------------------------------------------------


def _latest_preflight(wave: Wave) -> PreflightRun | None:
    return PreflightRun.objects.filter(wave=wave).order_by("-requested_at", "-id").first()


def wave_submit(*, actor: User, wave_id: int) -> Wave:
    """Draft → waiting for approval; the latest pre-flight must have finished."""
    _require_lead(actor)
    with transaction.atomic():
        wave = _locked_wave(wave_id)
        _expect(wave, WaveStatus.DRAFT, doing="submit")
        latest = _latest_preflight(wave)
        if latest is None:
            raise InvalidStateError("Run the pre-flight before submitting the wave for approval.")
        if latest.status != PreflightStatus.FINISHED:
            raise InvalidStateError(
                "The latest pre-flight has not finished. Wait for it, or run it again, before submitting the wave."
            )
        before = _snapshot(wave)
        wave.status = WaveStatus.AWAITING_APPROVAL
        wave.submitted_at = timezone.now()
        wave.save(update_fields=["status", "submitted_at"])
        audit_record(
            actor=actor,
            action="wave.submitted",
            object_type="wave",
            object_id=wave.pk,
            before=before,
            after={"status": wave.status, "preflight": latest.pk},
        )
    return wave


def _require_approver(actor: User, wave: Wave) -> None:
    _require(actor, "administer_platform", "Only a platform admin can approve or reject a wave.")
    if wave.created_by_id == actor.pk:
        raise PermissionDeniedError("You created this wave, so another platform admin must approve or reject it.")


def wave_approve(*, actor: User, wave_id: int, preflight_id: int, note: str = "") -> Wave:
    """Waiting for approval → approved, by a platform admin who did not create the wave, against the
    latest finished pre-flight (which stays attached to the wave)."""
    note = _clean_text(note, label="Note", limit=NOTE_MAX, required=False)
    with transaction.atomic():
        wave = _locked_wave(wave_id)
        _require_approver(actor, wave)
        _expect(wave, WaveStatus.AWAITING_APPROVAL, doing="approve")
        latest = _latest_preflight(wave)
        if latest is None or latest.pk != preflight_id:
            raise InvalidStateError(
                "A newer pre-flight has been run since you opened the page. Read its results before approving."
            )
        if latest.status != PreflightStatus.FINISHED:
            raise InvalidStateError("The pre-flight has not finished, so the wave cannot be approved yet.")
        before = _snapshot(wave)
        wave.status = WaveStatus.APPROVED
        wave.approved_by = actor
        wave.approved_at = timezone.now()
        wave.approved_preflight = latest
        wave.decision_note = note
        wave.save(update_fields=["status", "approved_by", "approved_at", "approved_preflight", "decision_note"])
        audit_record(
            actor=actor,
            action="wave.approved",
            object_type="wave",
            object_id=wave.pk,
            before=before,
            after={"status": wave.status, "preflight": latest.pk, "summary": latest.summary},
            reason=note,
        )
    return wave


def wave_reject(*, actor: User, wave_id: int, note: str) -> Wave:
    """Waiting for approval → draft, with the reason, for the migration lead to rework."""
    note = _clean_text(note, label="Note", limit=NOTE_MAX, required=False)
    if not note:
        raise WaveError("Enter why the wave is being returned", field="note")
    with transaction.atomic():
        wave = _locked_wave(wave_id)
        _require_approver(actor, wave)
        _expect(wave, WaveStatus.AWAITING_APPROVAL, doing="reject")
        before = _snapshot(wave)
        wave.status = WaveStatus.DRAFT
        wave.submitted_at = None
        wave.decision_note = note
        wave.save(update_fields=["status", "submitted_at", "decision_note"])
        audit_record(
            actor=actor,
            action="wave.rejected",
            object_type="wave",
            object_id=wave.pk,
            before=before,
            after={"status": wave.status},
            reason=note,
        )
    return wave


# --- running -------------------------------------------------------------------------------------


def _queue_dispatch(wave_id: int) -> None:
    from migration.jobs import wave_dispatch_job

    enqueue_on_commit(wave_dispatch_job, wave_id, job_timeout=DISPATCH_JOB_TIMEOUT)


def _transition(
    *, actor: User, wave_id: int, allowed: Sequence[str], to: str, doing: str, action: str, fields: dict[str, Any]
) -> Wave:
    _require_lead(actor)
    with transaction.atomic():
        wave = _locked_wave(wave_id)
        _expect(wave, *allowed, doing=doing)
        before = _snapshot(wave)
        wave.status = to
        for name, value in fields.items():
            setattr(wave, name, value)
        wave.save(update_fields=["status", *fields])
        audit_record(
            actor=actor, action=action, object_type="wave", object_id=wave.pk, before=before, after=_snapshot(wave)
        )
        if to == WaveStatus.RUNNING:
            _queue_dispatch(wave.pk)
    return wave


def wave_start(*, actor: User, wave_id: int) -> Wave:
    """Approved → running; the dispatcher queues the mailboxes that may start now."""
    return _transition(
        actor=actor,
        wave_id=wave_id,
        allowed=(WaveStatus.APPROVED,),
        to=WaveStatus.RUNNING,
        doing="start",
        action="wave.started",
        fields={"started_by": actor, "started_at": timezone.now()},
    )


def wave_pause(*, actor: User, wave_id: int) -> Wave:
    """Running → paused: no more mailboxes start; those already migrating finish their run."""
    return _transition(
        actor=actor,
        wave_id=wave_id,
        allowed=(WaveStatus.RUNNING,),
        to=WaveStatus.PAUSED,
        doing="pause",
        action="wave.paused",
        fields={},
    )


def wave_resume(*, actor: User, wave_id: int) -> Wave:
    """Paused → running; the dispatcher carries on where it stopped."""
    return _transition(
        actor=actor,
        wave_id=wave_id,
        allowed=(WaveStatus.PAUSED,),
        to=WaveStatus.RUNNING,
        doing="resume",
        action="wave.resumed",
        fields={},
    )


def wave_cancel(*, actor: User, wave_id: int, reason: str = "") -> Wave:
    """Cancel the wave: mailboxes not started are cancelled and free to join another wave.

    Mailboxes already migrating finish their run (and can be rolled back from the wave page).
    """
    _require_lead(actor)
    reason = _clean_text(reason, label="Reason", limit=NOTE_MAX, required=False)
    with transaction.atomic():
        wave = _locked_wave(wave_id)
        _expect(
            wave,
            WaveStatus.DRAFT,
            WaveStatus.AWAITING_APPROVAL,
            WaveStatus.APPROVED,
            WaveStatus.RUNNING,
            WaveStatus.PAUSED,
            doing="cancel",
        )
        before = _snapshot(wave)
        cancelled = WaveMailbox.objects.filter(wave=wave, state__in=NOT_STARTED_STATES).update(
            state=WaveMailboxState.CANCELLED, active=False, not_before=None, updated_at=timezone.now()
        )
        in_flight = WaveMailbox.objects.filter(wave=wave, state__in=ACTIVE_WAVE_MAILBOX_STATES).exists()
        wave.status = WaveStatus.CANCELLED
        fields = ["status"]
        if not in_flight:
            wave.finished_at = timezone.now()
            fields.append("finished_at")
        wave.save(update_fields=fields)
        audit_record(
            actor=actor,
            action="wave.cancelled",
            object_type="wave",
            object_id=wave.pk,
            before=before,
            after={"status": wave.status, "mailboxes_cancelled": cancelled},
            reason=reason,
        )
    return wave


# --- pacing --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScheduleSlot:
    """A run of mailboxes (by rank among those not started, 1-based) expected to start from ``starts_at``."""

    first: int
    last: int
    starts_at: dt.datetime
    after_blackout: str = ""
    window: int = 1  # 1 for the first window of Test & Enables, 2 for the next, …


def schedule_slots(
    *,
    remaining: int,
    now: dt.datetime,
    cap: int,
    window_hours: int,
    used_in_window: int = 0,
    window_started: dt.datetime | None = None,
    blackouts: Sequence[tuple[dt.datetime, dt.datetime, str]] = (),
) -> list[ScheduleSlot]:
    """When the mailboxes not yet started can expect to start, given the cap per window and the
    blackout windows (an estimate for people; the engine decides at run time).

    ``used_in_window`` Test & Enables already ran in the window that began at ``window_started``.
    """
    slots: list[ScheduleSlot] = []
    if remaining <= 0 or cap <= 0:
        return slots
    window = dt.timedelta(hours=max(1, window_hours))
    if window_started is not None and used_in_window:
        anchor, room = window_started, cap - used_in_window
        if room <= 0:
            anchor, room = window_started + window, cap
    else:
        anchor, room = now, cap
    ranked = 0
    ordered = sorted(blackouts)
    while ranked < remaining and len(slots) < MAX_SLOTS:
        starts_at = max(anchor, now)
        reason = ""
        for begins, ends, why in ordered:
            if begins <= starts_at < ends:
                starts_at, reason = ends, why
        if starts_at != max(anchor, now):
            anchor = starts_at
        count = min(room, remaining - ranked)
        slots.append(
            ScheduleSlot(
                first=ranked + 1,
                last=ranked + count,
                starts_at=starts_at,
                after_blackout=reason,
                window=len(slots) + 1,
            )
        )
        ranked += count
        anchor, room = anchor + window, cap
    return slots


def wave_schedule_estimate(wave: Wave, *, now: dt.datetime | None = None) -> list[ScheduleSlot]:
    """The expected start of the wave's mailboxes that have not started (three queries)."""
    now = now or timezone.now()
    remaining = WaveMailbox.objects.filter(wave=wave, state__in=NOT_STARTED_STATES).count()
    if not remaining or wave.status in (WaveStatus.CANCELLED, WaveStatus.COMPLETED):
        return []
    window = dt.timedelta(hours=max(1, wave.cap_window_hours))
    recent = WaveMailbox.objects.filter(test_enable_at__gt=now - window).aggregate(
        used=Count("id"), first=Min("test_enable_at")
    )
    blackouts = [
        (window_.starts_at, window_.ends_at, window_.reason)
        for window_ in BlackoutWindow.objects.filter(ends_at__gt=now).order_by("starts_at")[:100]
    ]
    return schedule_slots(
        remaining=remaining,
        now=now,
        cap=wave.test_enable_cap,
        window_hours=wave.cap_window_hours,
        used_in_window=recent["used"] or 0,
        window_started=recent["first"],
        blackouts=blackouts,
    )


def slot_for_rank(slots: Sequence[ScheduleSlot], rank: int) -> ScheduleSlot | None:
    for slot in slots:
        if slot.first <= rank <= slot.last:
            return slot
    return None


# --- progress ------------------------------------------------------------------------------------

FINISHED_STATES = (
    WaveMailboxState.MIGRATED,
    WaveMailboxState.NEEDS_ATTENTION,
    WaveMailboxState.ROLLED_BACK,
    WaveMailboxState.ROLLBACK_CONFLICT,
    WaveMailboxState.CANCELLED,
)


@dataclass(frozen=True)
class WaveProgress:
    total: int
    finished: int
    percent: int
    by_state: dict[str, int]


def wave_progress(wave_id: int) -> WaveProgress:
    """The wave's mailboxes by state, and how far through it is (one query)."""
    by_state = dict(WaveMailbox.objects.filter(wave_id=wave_id).values_list("state").annotate(n=Count("id")).order_by())
    total = sum(by_state.values())
    finished = sum(by_state.get(state, 0) for state in FINISHED_STATES)
    percent = (100 * finished // total) if total else 0
    return WaveProgress(
        total=total,
        finished=finished,
        percent=percent,
        by_state={state: by_state.get(state, 0) for state in WaveMailboxState.values},
    )
