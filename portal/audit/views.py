from __future__ import annotations

import datetime as dt
from typing import Any

from django.contrib import messages
from django.http import StreamingHttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from portal.csv_safe import csv_rows
from portal.decorators import require_permission
from portal.fragments import form_fragment_key

from . import selectors, services
from .forms import AuditFilterForm
from .models import AuditEvent

EXPORT_HEADER = (
    "seq",
    "created_at_utc",
    "actor_id",
    "actor_name",
    "action",
    "object_type",
    "object_id",
    "outcome",
    "reason",
    "before",
    "after",
    "correlation_id",
    "prev_hash",
    "hash",
)


def _positive_int(value: str | None) -> int | None:
    if value and value.isdigit() and len(value) < 19:
        return int(value)
    return None


def _filtered(request) -> tuple[AuditFilterForm, selectors.AuditFilters]:
    form = AuditFilterForm(request.GET or None)
    if request.GET:
        form.is_valid()
    return form, form.filters() if request.GET else selectors.AuditFilters()


@require_GET
@require_permission("view_audit_trail")
def events(request):
    form, filters = _filtered(request)
    page = selectors.audit_events_page(
        selectors.audit_events_filtered(filters),
        before=_positive_int(request.GET.get("before")),
        after=_positive_int(request.GET.get("after")),
    )
    query = request.GET.copy()
    for key in ("before", "after"):
        query.pop(key, None)
    can_export = request.user.has_perm("accounts.export_audit_trail")
    return render(
        request,
        "audit/events.html",
        {
            "form": form,
            "form_fragment_key": form_fragment_key(form),
            "page": page,
            "rows": [_event_row(event) for event in page.events],
            "filter_query": query.urlencode(),
            "filters_applied": bool(filters.as_dict()),
            "can_export": can_export,
            "verifications": selectors.audit_verifications_recent() if can_export else [],
        },
    )


def _event_row(event: AuditEvent) -> dict[str, Any]:
    """What the trail shows of an event, as plain values: pages of events are kept as fragments."""
    return {
        "seq": event.seq,
        "created_at": event.created_at,
        "actor_name": event.actor_name,
        "action": event.action,
        "object_type": event.object_type,
        "object_id": event.object_id,
        "outcome": event.outcome,
        "outcome_label": str(event.get_outcome_display()),
        "reason": event.reason,
        "before_json": event.before_json,
        "after_json": event.after_json,
        "correlation_id": str(event.correlation_id),
    }


@require_GET
@require_permission("export_audit_trail")
def export(request):
    form, filters = _filtered(request)
    if request.GET and form.errors:
        messages.error(request, "Correct the filters before exporting.")
        return redirect(f"{reverse('audit:events')}?{request.GET.urlencode()}")
    services.audit_record(
        actor=request.user,
        action="audit.exported",
        object_type="audit_trail",
        after={"filters": filters.as_dict()},
    )
    rows = (
        (
            event.seq,
            event.created_at.astimezone(dt.UTC).isoformat(),
            event.actor_id,
            event.actor_name,
            event.action,
            event.object_type,
            event.object_id,
            event.outcome,
            event.reason,
            event.before_json,
            event.after_json,
            event.correlation_id,
            event.prev_hash,
            event.hash,
        )
        for event in selectors.audit_events_filtered(filters).order_by("seq").iterator(chunk_size=2000)
    )
    stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
    response = StreamingHttpResponse(csv_rows(EXPORT_HEADER, rows), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="audit-trail-{stamp}.csv"'
    return response


@require_POST
@require_permission("export_audit_trail")
def verify(request):
    services.audit_verification_request(actor=request.user)
    messages.success(request, "The audit chain check has started. Its result appears below when it finishes.")
    return redirect("audit:events")
