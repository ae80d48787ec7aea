"""The discovery page: recent runs, the one in progress, and "Sync now"."""

from __future__ import annotations

from django.contrib import messages
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from migration.forms.discovery import SyncRequestForm
from migration.selectors import discovery as selectors
from migration.services.discovery import inventory_sync_request
from portal.decorators import require_permission
from portal.exceptions import PortalError

# While a run is queued or running the page reloads itself this often (a meta refresh, no script).
REFRESH_SECONDS = 5


def _page(request, form: SyncRequestForm, *, status: int = 200):
    overview = selectors.discovery_overview()
    return render(
        request,
        "migration/discovery/runs.html",
        {"overview": overview, "form": form, "refresh_seconds": REFRESH_SECONDS if overview.active else None},
        status=status,
    )


@require_GET
@require_permission("lead_migration")
def discovery(request):
    return _page(request, SyncRequestForm())


@require_POST
@require_permission("lead_migration")
def discovery_sync(request):
    form = SyncRequestForm(request.POST)
    if not form.is_valid():
        return _page(request, form, status=400)
    before = selectors.inventory_sync_active()
    try:
        sync = inventory_sync_request(actor=request.user, kind=form.cleaned_data["kind"])
    except PortalError as error:
        form.add_error(error.field if error.field in form.fields else None, error.message)
        return _page(request, form, status=400)
    if before is not None and before.pk == sync.pk:
        messages.info(request, "Discovery is already running. This page shows its progress.")
    elif sync.kind != form.cleaned_data["kind"]:
        messages.success(
            request, "Discovery has started. It reads every mailbox, because there is no earlier run to continue from."
        )
    else:
        messages.success(request, "Discovery has started. This page shows its progress.")
    return redirect("migration:discovery")
