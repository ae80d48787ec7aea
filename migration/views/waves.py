"""Wave pages: the list, the new-wave questions, one wave with its live progress, its pre-flights,
and the buttons that move it along. Views parse input, call one service and render or redirect."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse, QueryDict, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from migration.forms.inventory import InventoryFilterForm
from migration.forms.waves import (
    SOURCE_CSV,
    SOURCE_FILTERS,
    CancelForm,
    PriorityForm,
    WaveCSVForm,
    WaveDecisionForm,
    WaveDetailsForm,
)
from migration.models import (
    PreflightResult,
    PreflightRun,
    PreflightStatus,
    PreflightVerdict,
    Wave,
    WaveMailbox,
    WaveMailboxState,
    WaveStatus,
)
from migration.selectors import inventory as inventory_selectors
from migration.services import migration_runs, preflight, waves
from portal.accounts.roles import perm
from portal.audit.services import audit_record
from portal.decorators import require_permission
from portal.exceptions import PortalError

# Migration leads run waves; platform admins approve them and may look.
WAVE_PERMISSIONS = ("lead_migration", "administer_platform")
PAGE_SIZE = 50
# While a wave or its pre-flight is moving, browsers without script reload the page this often.
REFRESH_SECONDS = 15
# The script asks for fresh progress this often.
POLL_SECONDS = 5
SESSION_KEY = "wave_new"

STATE_TAGS = {
    WaveMailboxState.PENDING: "govuk-tag--grey",
    WaveMailboxState.SCHEDULED: "govuk-tag--light-blue",
    WaveMailboxState.RUNNING: "govuk-tag--blue",
    WaveMailboxState.WAITING: "govuk-tag--blue",
    WaveMailboxState.MIGRATED: "govuk-tag--green",
    WaveMailboxState.NEEDS_ATTENTION: "govuk-tag--red",
    WaveMailboxState.ROLLING_BACK: "govuk-tag--yellow",
    WaveMailboxState.ROLLED_BACK: "govuk-tag--purple",
    WaveMailboxState.ROLLBACK_CONFLICT: "govuk-tag--orange",
    WaveMailboxState.CANCELLED: "govuk-tag--grey",
}
WAVE_TAGS = {
    WaveStatus.DRAFT: "govuk-tag--grey",
    WaveStatus.AWAITING_APPROVAL: "govuk-tag--yellow",
    WaveStatus.APPROVED: "govuk-tag--turquoise",
    WaveStatus.RUNNING: "govuk-tag--blue",
    WaveStatus.PAUSED: "govuk-tag--orange",
    WaveStatus.COMPLETED: "govuk-tag--green",
    WaveStatus.CANCELLED: "govuk-tag--grey",
}
VERDICT_TAGS = {
    PreflightVerdict.READY: "govuk-tag--blue",
    PreflightVerdict.BLOCKED: "govuk-tag--red",
    PreflightVerdict.ALREADY_COMPLIANT: "govuk-tag--green",
    PreflightVerdict.GONE: "govuk-tag--grey",
}
_STATE_LABELS = dict(WaveMailboxState.choices)
_VERDICT_LABELS = dict(PreflightVerdict.choices)
ROLLBACK_STATES = (WaveMailboxState.MIGRATED, WaveMailboxState.NEEDS_ATTENTION)
MOVING_WAVE_STATES = (WaveStatus.RUNNING, WaveStatus.PAUSED, WaveStatus.CANCELLED)


def wave_access_required(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Signed-out people go to sign-in; people with none of ``WAVE_PERMISSIONS`` get the 403 page."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not any(request.user.has_perm(perm(codename)) for codename in WAVE_PERMISSIONS):
            raise PermissionDenied
        return view(request, *args, **kwargs)

    return login_required(wrapped)


def _get_wave_for_user(request: HttpRequest, wave_id: int) -> Wave:
    """The wave, for someone already allowed to see waves (every wave is visible to them)."""
    wave = Wave.objects.select_related("created_by", "approved_by", "started_by", "approved_preflight").filter(
        pk=wave_id
    )
    found = wave.first()
    if found is None:
        raise Http404("No such wave")
    return found


def _is_lead(request: HttpRequest) -> bool:
    return request.user.has_perm(perm("lead_migration"))


def _is_admin(request: HttpRequest) -> bool:
    return request.user.has_perm(perm("administer_platform"))


# --- the list --------------------------------------------------------------------------------------


@require_GET
@wave_access_required
def wave_list(request: HttpRequest) -> HttpResponse:
    paginator = Paginator(Wave.objects.select_related("created_by").order_by("-created_at", "-id"), PAGE_SIZE)
    page = paginator.get_page(request.GET.get("page"))
    rows = [{"wave": wave, "tag": WAVE_TAGS.get(wave.status, "govuk-tag--grey")} for wave in page.object_list]
    return render(request, "migration/waves/list.html", {"page": page, "rows": rows, "can_create": _is_lead(request)})


# --- a new wave: questions kept in the session until "Create wave" ------------------------------------


def _answers(request: HttpRequest) -> dict[str, Any]:
    answers = request.session.get(SESSION_KEY)
    return answers if isinstance(answers, dict) else {}


def _save_answers(request: HttpRequest, **changes: Any) -> None:
    request.session[SESSION_KEY] = {**_answers(request), **changes}


def _filter_form(query: QueryDict) -> InventoryFilterForm:
    return InventoryFilterForm(
        query or None,
        teams=inventory_selectors.inventory_team_names(),
        business_units=inventory_selectors.inventory_business_unit_names(),
        legacy_sources=inventory_selectors.legacy_sources_for_choice(),
    )


def _filters_of(query_string: str) -> tuple[InventoryFilterForm, inventory_selectors.InventoryFilters]:
    query = QueryDict(query_string, mutable=True)
    for name in ("sort", "after", "before", "submit", "page"):
        query.pop(name, None)
    form = _filter_form(query)
    if not query:
        return form, inventory_selectors.InventoryFilters()
    form.is_valid()
    return form, form.filters()


@require_http_methods(["GET", "POST"])
@require_permission("lead_migration")
def wave_new(request: HttpRequest) -> HttpResponse:
    if request.method == "GET" and request.GET:
        # Arriving from the inventory list with its filters: keep them for the next step.
        _save_answers(request, filters_query=request.GET.urlencode(), source=SOURCE_FILTERS)
    answers = _answers(request)
    if request.method == "POST":
        form = WaveDetailsForm(request.POST)
        if form.is_valid():
            _save_answers(request, **form.cleaned_data)
            step = (
                "migration:wave_new_filters"
                if form.cleaned_data["source"] == SOURCE_FILTERS
                else "migration:wave_new_upload"
            )
            return redirect(step)
    else:
        form = WaveDetailsForm(initial={key: answers.get(key, "") for key in ("name", "description", "source")})
    return render(request, "migration/waves/new.html", {"form": form})


@require_http_methods(["GET", "POST"])
@require_permission("lead_migration")
def wave_new_filters(request: HttpRequest) -> HttpResponse:
    answers = _answers(request)
    if not answers.get("name"):
        return redirect("migration:wave_new")
    if request.method == "POST":
        form, filters = _filters_of(request.POST.get("query", ""))
        if form.errors:
            messages.error(request, "Correct the filters before continuing.")
            return redirect(f"{reverse('migration:wave_new_filters')}?{request.POST.get('query', '')}")
        _save_answers(request, filters_query=request.POST.get("query", ""), source=SOURCE_FILTERS)
        return redirect("migration:wave_new_check")
    query_string = request.GET.urlencode() if request.GET else answers.get("filters_query", "")
    form, filters = _filters_of(query_string)
    form.helper.form_action = reverse("migration:wave_new_filters")
    chosen = inventory_selectors.inventory_mailboxes_filtered(filters)
    return render(
        request,
        "migration/waves/new_filters.html",
        {
            "form": form,
            "query": QueryDict(query_string).urlencode(),
            "matching": chosen.count(),
            "filters_applied": bool(filters.as_dict()),
        },
    )


@require_http_methods(["GET", "POST"])
@require_permission("lead_migration")
def wave_new_upload(request: HttpRequest) -> HttpResponse:
    if not _answers(request).get("name"):
        return redirect("migration:wave_new")
    form = WaveCSVForm(request.POST, request.FILES) if request.method == "POST" else WaveCSVForm()
    hidden = 0
    if request.method == "POST" and form.is_valid():
        content = form.cleaned_data["csv_file"]
        try:
            waves.wave_csv_read(content)
        except waves.WaveCSVError as error:
            for problem in error.problems:
                form.add_error(None, problem)
            hidden = error.hidden
            form.add_error("csv_file", "Fix the problems in the file and upload it again")
        else:
            _save_answers(
                request,
                source=SOURCE_CSV,
                csv_content=base64.b64encode(content).decode(),
                csv_name=getattr(form, "file_name", "")[:255],
            )
            return redirect("migration:wave_new_check")
    return render(request, "migration/waves/new_upload.html", {"form": form, "hidden_problems": hidden})


def _csv_content(answers: dict[str, Any]) -> bytes | None:
    try:
        return base64.b64decode(answers.get("csv_content") or "", validate=True) or None
    except (binascii.Error, ValueError):
        return None


@require_http_methods(["GET", "POST"])
@require_permission("lead_migration")
def wave_new_check(request: HttpRequest) -> HttpResponse:
    answers = _answers(request)
    source = answers.get("source")
    if not answers.get("name") or source not in (SOURCE_FILTERS, SOURCE_CSV):
        return redirect("migration:wave_new")
    content = _csv_content(answers) if source == SOURCE_CSV else None
    if source == SOURCE_CSV and content is None:
        return redirect("migration:wave_new_upload")
    filter_form, filters = _filters_of(answers.get("filters_query", ""))
    if source == SOURCE_FILTERS and filter_form.errors:
        # Never build a wider wave than asked by dropping a filter that no longer fits.
        messages.error(request, "Correct the filters before continuing.")
        return redirect("migration:wave_new_filters")
    error = ""
    if request.method == "POST":
        try:
            if source == SOURCE_CSV:
                build = waves.wave_create_from_csv(
                    actor=request.user,
                    name=answers["name"],
                    description=answers.get("description", ""),
                    upload=content or b"",
                    file_name=answers.get("csv_name", ""),
                )
            else:
                build = waves.wave_create_from_filters(
                    actor=request.user,
                    name=answers["name"],
                    description=answers.get("description", ""),
                    filters=filters,
                )
        except waves.WaveCSVError as problem:
            error = f"{problem.message}. Upload the file again."
        except PortalError as problem:
            error = problem.message
        else:
            request.session.pop(SESSION_KEY, None)
            left_out = ", ".join(
                f"{count:,} {waves.LEFT_OUT_REASONS[reason]}" for reason, count in build.left_out.items()
            )
            messages.success(
                request,
                f"Wave created with {build.added:,} mailbox{'es' if build.added != 1 else ''}."
                + (f" Left out: {left_out}." if left_out else "")
                + " Run the pre-flight next.",
            )
            return redirect("migration:wave", wave_id=build.wave.pk)
    return render(
        request,
        "migration/waves/new_check.html",
        {
            "answers": answers,
            "source": source,
            "filters": [(name.replace("_", " ").capitalize(), value) for name, value in filters.as_dict().items()],
            "error": error,
        },
        status=400 if error else 200,
    )


# --- one wave ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EntryRow:
    entry: WaveMailbox
    state_label: str
    state_tag: str
    verdict_label: str
    verdict_tag: str
    expected: waves.ScheduleSlot | None


def _entries_page(wave: Wave, number: Any) -> Any:
    entries = (
        WaveMailbox.objects.filter(wave=wave)
        .select_related("mailbox")
        .only(
            "id",
            "wave_id",
            "position",
            "priority",
            "is_queue",
            "state",
            "last_error",
            "error_code",
            "mailbox__id",
            "mailbox__name",
            "mailbox__email_address",
            "mailbox__owner_type",
        )
        .order_by("position", "id")
    )
    return Paginator(entries, PAGE_SIZE).get_page(number)


def _entry_rows(wave: Wave, page: Any, latest: PreflightRun | None, slots: list[waves.ScheduleSlot]) -> list[EntryRow]:
    entries = list(page.object_list)
    verdicts: dict[int, str] = {}
    if latest is not None and entries:
        verdicts = dict(
            PreflightResult.objects.filter(
                preflight=latest, mailbox_id__in=[entry.mailbox_id for entry in entries]
            ).values_list("mailbox_id", "verdict")
        )
    not_started = [entry for entry in entries if entry.state in waves.NOT_STARTED_STATES]
    rank = 0
    if slots and not_started:
        rank = WaveMailbox.objects.filter(
            wave=wave, state__in=waves.NOT_STARTED_STATES, position__lt=not_started[0].position
        ).count()
    rows = []
    for entry in entries:
        expected = None
        if slots and entry.state in waves.NOT_STARTED_STATES:
            rank += 1
            expected = waves.slot_for_rank(slots, rank)
        verdict = verdicts.get(entry.mailbox_id, "")
        rows.append(
            EntryRow(
                entry=entry,
                state_label=_STATE_LABELS.get(entry.state, entry.state),
                state_tag=STATE_TAGS.get(entry.state, "govuk-tag--grey"),
                verdict_label=_VERDICT_LABELS.get(verdict, ""),
                verdict_tag=VERDICT_TAGS.get(verdict, ""),
                expected=expected,
            )
        )
    return rows


def _actions(request: HttpRequest, wave: Wave, latest: PreflightRun | None, progress: waves.WaveProgress) -> dict:
    lead, admin = _is_lead(request), _is_admin(request)
    status = wave.status
    preflight_moving = latest is not None and latest.status in (PreflightStatus.QUEUED, PreflightStatus.RUNNING)
    return {
        "preflight": lead and status in preflight.CHECKABLE_WAVE_STATES and not preflight_moving,
        "submit": lead
        and status == WaveStatus.DRAFT
        and latest is not None
        and latest.status == PreflightStatus.FINISHED,
        "decide": admin
        and status == WaveStatus.AWAITING_APPROVAL
        and wave.created_by_id != request.user.pk
        and latest is not None
        and latest.status == PreflightStatus.FINISHED,
        "own_wave": admin and status == WaveStatus.AWAITING_APPROVAL and wave.created_by_id == request.user.pk,
        "start": lead and status == WaveStatus.APPROVED,
        "pause": lead and status == WaveStatus.RUNNING,
        "resume": lead and status == WaveStatus.PAUSED,
        "cancel": lead and status not in (WaveStatus.COMPLETED, WaveStatus.CANCELLED),
        "retry": lead
        and status in (WaveStatus.RUNNING, WaveStatus.PAUSED, WaveStatus.COMPLETED)
        and progress.by_state.get(WaveMailboxState.NEEDS_ATTENTION, 0) > 0,
        "rollback": lead and sum(progress.by_state.get(state, 0) for state in ROLLBACK_STATES) > 0,
        "priority": lead and status == WaveStatus.DRAFT,
    }


def _wave_page(
    request: HttpRequest, wave: Wave, *, decision_form: WaveDecisionForm | None = None, status: int = 200
) -> HttpResponse:
    latest = preflight.preflight_latest(wave.pk)
    progress = waves.wave_progress(wave.pk)
    page = _entries_page(wave, request.GET.get("page"))
    actions = _actions(request, wave, latest, progress)
    if actions["decide"] and decision_form is None:
        decision_form = WaveDecisionForm(initial={"preflight": latest.pk if latest else None})
    if decision_form is not None:
        decision_form.helper.form_action = reverse("migration:wave_decide", args=[wave.pk])
    moving = wave.status in (WaveStatus.RUNNING,) or (
        latest is not None and latest.status in (PreflightStatus.QUEUED, PreflightStatus.RUNNING)
    )
    slots = waves.wave_schedule_estimate(wave)
    progress_url = reverse("migration:wave_progress", args=[wave.pk])
    if page.number > 1:
        progress_url += f"?page={page.number}"
    return render(
        request,
        "migration/waves/wave.html",
        {
            "wave": wave,
            "wave_tag": WAVE_TAGS.get(wave.status, "govuk-tag--grey"),
            "latest": latest,
            "progress": progress,
            "progress_states": [
                {"value": value, "label": label, "count": progress.by_state.get(value, 0)}
                for value, label in WaveMailboxState.choices
            ],
            "page": page,
            "rows": _entry_rows(wave, page, latest, slots),
            "schedule": slots,
            "actions": actions,
            "decision_form": decision_form if actions["decide"] else None,
            "cancel_form": CancelForm() if actions["cancel"] else None,
            "refresh_seconds": REFRESH_SECONDS if moving else None,
            "poll_seconds": POLL_SECONDS,
            "progress_url": progress_url,
            "left_out": [
                (waves.LEFT_OUT_REASONS.get(reason, reason), count)
                for reason, count in (wave.built_from.get("left_out") or {}).items()
            ]
            if isinstance(wave.built_from, dict)
            else [],
        },
        status=status,
    )


@require_GET
@wave_access_required
def wave_detail(request: HttpRequest, wave_id: int) -> HttpResponse:
    return _wave_page(request, _get_wave_for_user(request, wave_id))


@require_GET
@wave_access_required
def wave_progress(request: HttpRequest, wave_id: int) -> JsonResponse:
    """The wave's progress and the states of one page of its mailboxes, for the page's script."""
    wave = Wave.objects.filter(pk=wave_id).only("id", "status").first()
    if wave is None:
        raise Http404("No such wave")
    progress = waves.wave_progress(wave.pk)
    latest = preflight.preflight_latest(wave.pk)
    page = _entries_page(wave, request.GET.get("page"))
    return JsonResponse(
        {
            "status": wave.status,
            "status_label": wave.get_status_display(),
            "status_tag": WAVE_TAGS.get(wave.status, "govuk-tag--grey"),
            "total": progress.total,
            "finished": progress.finished,
            "percent": progress.percent,
            "by_state": progress.by_state,
            "preflight": {
                "status": latest.status,
                "checked": latest.mailboxes_checked,
                "total": latest.mailboxes_total,
            }
            if latest is not None
            else None,
            "active": wave.status == WaveStatus.RUNNING
            or (latest is not None and latest.status in (PreflightStatus.QUEUED, PreflightStatus.RUNNING)),
            "entries": [
                {
                    "id": entry.pk,
                    "state": entry.state,
                    "label": _STATE_LABELS.get(entry.state, entry.state),
                    "tag": STATE_TAGS.get(entry.state, "govuk-tag--grey"),
                    "error": entry.last_error[:500],
                }
                for entry in page.object_list
            ],
        },
        headers={"Cache-Control": "no-store"},
    )


# --- the buttons -------------------------------------------------------------------------------------


def _done(request: HttpRequest, wave_id: int, message: str) -> HttpResponse:
    messages.success(request, message)
    return redirect("migration:wave", wave_id=wave_id)


def _refused(request: HttpRequest, wave_id: int, error: PortalError) -> HttpResponse:
    messages.error(request, error.message)
    return redirect("migration:wave", wave_id=wave_id)


def _rollback_entries(wave_id: int) -> list[int]:
    return list(WaveMailbox.objects.filter(wave_id=wave_id, state__in=ROLLBACK_STATES).values_list("pk", flat=True))


@require_POST
@require_permission("lead_migration")
def wave_action(request: HttpRequest, wave_id: int, action: str) -> HttpResponse:
    _get_wave_for_user(request, wave_id)
    actor = request.user
    try:
        if action == "preflight":
            run = preflight.preflight_request(actor=actor, wave_id=wave_id)
            return _done(request, wave_id, f"The pre-flight is checking {run.mailboxes_total:,} mailboxes.")
        if action == "submit":
            waves.wave_submit(actor=actor, wave_id=wave_id)
            return _done(request, wave_id, "The wave is waiting for a platform admin to approve it.")
        if action == "start":
            waves.wave_start(actor=actor, wave_id=wave_id)
            return _done(request, wave_id, "The wave has started. This page shows its progress.")
        if action == "pause":
            waves.wave_pause(actor=actor, wave_id=wave_id)
            return _done(request, wave_id, "The wave is paused. Mailboxes already migrating finish first.")
        if action == "resume":
            waves.wave_resume(actor=actor, wave_id=wave_id)
            return _done(request, wave_id, "The wave has resumed.")
        if action == "cancel":
            form = CancelForm(request.POST)
            reason = form.cleaned_data.get("reason", "") if form.is_valid() else ""
            waves.wave_cancel(actor=actor, wave_id=wave_id, reason=reason)
            return _done(request, wave_id, "The wave is cancelled. Mailboxes that had not started are free again.")
        if action == "retry":
            count = migration_runs.migration_retry_failed(actor=actor, wave_id=wave_id)
            return _done(request, wave_id, f"{count:,} mailbox{'es' if count != 1 else ''} will be migrated again.")
        if action == "rollback":
            count = migration_runs.migration_rollback(actor=actor, entry_ids=_rollback_entries(wave_id))
            return _done(request, wave_id, f"{count:,} mailbox{'es' if count != 1 else ''} will be rolled back.")
    except PortalError as error:
        return _refused(request, wave_id, error)
    raise Http404("No such action")


@require_POST
@require_permission("lead_migration")
def wave_mailbox_rollback(request: HttpRequest, wave_id: int, entry_id: int) -> HttpResponse:
    entry = WaveMailbox.objects.filter(pk=entry_id, wave_id=wave_id).select_related("mailbox").first()
    if entry is None:
        raise Http404("No such mailbox in this wave")
    try:
        count = migration_runs.migration_rollback(actor=request.user, entry_ids=[entry.pk])
    except PortalError as error:
        return _refused(request, wave_id, error)
    if not count:
        messages.error(request, f"{entry.mailbox.email_address} cannot be rolled back in its current state.")
        return redirect("migration:wave", wave_id=wave_id)
    return _done(request, wave_id, f"{entry.mailbox.email_address} will be rolled back to its earlier settings.")


@require_POST
@require_permission("lead_migration")
def wave_mailbox_priority(request: HttpRequest, wave_id: int, entry_id: int) -> HttpResponse:
    form = PriorityForm(request.POST)
    if not form.is_valid():
        messages.error(request, next(iter(form.errors.values()))[0])
        return redirect("migration:wave", wave_id=wave_id)
    try:
        waves.wave_mailbox_priority_set(
            actor=request.user, wave_id=wave_id, entry_id=entry_id, priority=form.cleaned_data["priority"]
        )
    except PortalError as error:
        return _refused(request, wave_id, error)
    return _done(request, wave_id, "Priority saved; the wave's order is updated.")


@require_POST
@require_permission("administer_platform")
def wave_decide(request: HttpRequest, wave_id: int) -> HttpResponse:
    wave = _get_wave_for_user(request, wave_id)
    form = WaveDecisionForm(request.POST)
    if not form.is_valid():
        return _wave_page(request, wave, decision_form=form, status=400)
    data = form.cleaned_data
    try:
        if data["decision"] == "approve":
            waves.wave_approve(actor=request.user, wave_id=wave_id, preflight_id=data["preflight"], note=data["note"])
            message = "The wave is approved. A migration lead can start it."
        else:
            waves.wave_reject(actor=request.user, wave_id=wave_id, note=data["note"])
            message = "The wave is returned to the migration lead."
    except PortalError as error:
        if error.field in form.fields:
            form.add_error(error.field, error.message)
            return _wave_page(request, wave, decision_form=form, status=400)
        return _refused(request, wave_id, error)
    return _done(request, wave_id, message)


# --- pre-flights -------------------------------------------------------------------------------------


def _get_preflight(wave_id: int, preflight_id: int) -> PreflightRun:
    run = PreflightRun.objects.select_related("wave", "requested_by").filter(pk=preflight_id, wave_id=wave_id).first()
    if run is None:
        raise Http404("No such pre-flight")
    return run


@require_GET
@wave_access_required
def wave_preflight(request: HttpRequest, wave_id: int, preflight_id: int) -> HttpResponse:
    run = _get_preflight(wave_id, preflight_id)
    verdict = request.GET.get("verdict", "")
    results = PreflightResult.objects.filter(preflight=run).select_related("mailbox").order_by("id")
    if verdict in PreflightVerdict.values:
        results = results.filter(verdict=verdict)
    else:
        verdict = ""
    page = Paginator(results, PAGE_SIZE).get_page(request.GET.get("page"))
    rows = [
        {
            "result": result,
            "verdict_label": _VERDICT_LABELS.get(result.verdict, result.verdict),
            "verdict_tag": VERDICT_TAGS.get(result.verdict, "govuk-tag--grey"),
            "changes": result.changes if isinstance(result.changes, list) else [],
            "findings": result.findings if isinstance(result.findings, list) else [],
        }
        for result in page.object_list
    ]
    summary = run.summary if isinstance(run.summary, dict) else {}
    return render(
        request,
        "migration/waves/preflight.html",
        {
            "run": run,
            "wave": run.wave,
            "page": page,
            "rows": rows,
            "verdict": verdict,
            "verdicts": [
                {"value": value, "label": label, "count": summary.get(value, 0)}
                for value, label in PreflightVerdict.choices
            ],
            "summary": summary,
            "keep": f"verdict={verdict}" if verdict else "",
            "refresh_seconds": REFRESH_SECONDS
            if run.status in (PreflightStatus.QUEUED, PreflightStatus.RUNNING)
            else None,
        },
    )


@require_GET
@wave_access_required
def wave_preflight_export(request: HttpRequest, wave_id: int, preflight_id: int) -> HttpResponse:
    run = _get_preflight(wave_id, preflight_id)
    audit_record(
        actor=request.user,
        action="wave.preflight_exported",
        object_type="wave",
        object_id=wave_id,
        after={"preflight": run.pk},
    )
    response = StreamingHttpResponse(preflight.preflight_csv(run.pk), content_type="text/csv; charset=utf-8")
    stamp = timezone.localtime(run.requested_at).strftime("%Y-%m-%d-%H%M")
    response["Content-Disposition"] = f'attachment; filename="wave-{wave_id}-preflight-{stamp}.csv"'
    response["Cache-Control"] = "no-store"
    return response
