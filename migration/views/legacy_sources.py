"""Migration lead pages for legacy sources: the list, adding an Email Router by uploading its
configuration, watching an import, and one source's profiles and served mailboxes."""

from __future__ import annotations

from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods

from migration.forms.legacy_sources import RouterUploadForm
from migration.models import LegacySource
from migration.services import router_import as services
from portal.decorators import require_permission
from portal.exceptions import PortalError

# How often the import page reloads itself while the background job works.
REFRESH_SECONDS = 3


@require_GET
@require_permission("lead_migration")
def legacy_sources(request):
    page, rows = services.legacy_source_page(request.GET.get("page"))
    return render(request, "migration/legacy_sources/list.html", {"page": page, "rows": rows})


@require_http_methods(["GET", "POST"])
@require_permission("lead_migration")
def router_add(request):
    initial = {}
    source_id = request.GET.get("source", "")
    if source_id.isdigit():
        source = LegacySource.objects.filter(pk=int(source_id)).only("name").first()
        if source is not None:
            initial["server_name"] = source.name
    if request.method == "POST":
        form = RouterUploadForm(request.POST, request.FILES)
    else:
        form = RouterUploadForm(initial=initial)
    if request.method == "POST" and form.is_valid():
        file_name, content = form.cleaned_data["configuration_file"]
        state_name, state_content = form.cleaned_data.get("state_file") or ("", None)
        try:
            record = services.router_import_request(
                actor=request.user,
                server_name=form.cleaned_data["server_name"],
                file_name=file_name,
                content=content,
                state_file_name=state_name,
                state_content=state_content,
            )
        except PortalError as error:
            form.add_error(error.field if error.field in form.fields else None, error.message)
        else:
            return redirect("migration:router_import", import_id=record.pk)
    return render(request, "migration/legacy_sources/router_add.html", {"form": form})


@require_GET
@require_permission("lead_migration")
def router_import(request, import_id: int):
    detail = services.router_import_detail(import_id)
    if detail is None:
        raise Http404("No such import")
    return render(
        request,
        "migration/legacy_sources/import.html",
        {"detail": detail, "refresh_seconds": REFRESH_SECONDS if detail.in_progress else None},
    )


@require_GET
@require_permission("lead_migration")
def legacy_source(request, source_id: int):
    unmatched_only = request.GET.get("show") == "unmatched"
    detail = services.legacy_source_detail(
        source_id, page_number=request.GET.get("page"), unmatched_only=unmatched_only
    )
    if detail is None:
        raise Http404("No such legacy source")
    return render(
        request,
        "migration/legacy_sources/detail.html",
        {"detail": detail, "unmatched_only": unmatched_only, "keep": "show=unmatched" if unmatched_only else ""},
    )
