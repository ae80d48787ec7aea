"""Migration lead pages for inventory annotations: the CSV export and import, and one mailbox's form."""

from __future__ import annotations

from django.contrib import messages
from django.http import Http404, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods

from migration.forms.annotations import AnnotationCSVForm, AnnotationForm
from migration.services import annotations as services
from portal.decorators import require_permission
from portal.exceptions import PortalError


@require_http_methods(["GET", "POST"])
@require_permission("lead_migration")
def annotations(request):
    form = AnnotationCSVForm(request.POST, request.FILES) if request.method == "POST" else AnnotationCSVForm()
    hidden_problems = 0
    if request.method == "POST" and form.is_valid():
        try:
            result = services.annotations_import(actor=request.user, content=form.cleaned_data["csv_file"])
        except services.AnnotationImportError as error:
            for problem in error.problems:
                form.add_error(None, problem)
            hidden_problems = error.hidden
            form.add_error("csv_file", "Nothing was saved. Fix the problems in the file and upload it again")
        else:
            messages.success(
                request,
                f"{result.rows:,} {'row' if result.rows == 1 else 'rows'} checked: "
                f"{result.changed:,} {'annotation' if result.changed == 1 else 'annotations'} changed, "
                f"{result.unchanged:,} unchanged.",
            )
            return redirect("migration:annotations")
    return render(
        request,
        "migration/annotations/annotations.html",
        {
            "form": form,
            "hidden_problems": hidden_problems,
            "annotation_count": services.annotations_count(),
            "columns": services.COLUMNS,
        },
    )


@require_GET
@require_permission("lead_migration")
def annotations_export(request):
    response = StreamingHttpResponse(services.annotations_csv(), content_type="text/csv; charset=utf-8")
    stamp = timezone.localtime().strftime("%Y-%m-%d-%H%M")
    response["Content-Disposition"] = f'attachment; filename="inventory-annotations-{stamp}.csv"'
    response["Cache-Control"] = "no-store"
    return response


@require_http_methods(["GET", "POST"])
@require_permission("lead_migration")
def annotation_edit(request, mailbox_id: int):
    found = services.annotation_for(mailbox_id)
    if found is None:
        raise Http404("No such inventory mailbox")
    mailbox, annotation = found
    current = services.AnnotationValues.of(annotation)
    if request.method == "POST":
        form = AnnotationForm(request.POST)
    else:
        form = AnnotationForm(initial=AnnotationForm.initial_for(current))
    if request.method == "POST" and form.is_valid():
        try:
            changed = services.annotation_save(actor=request.user, mailbox_id=mailbox.pk, values=form.values())
        except PortalError as error:
            form.add_error(error.field if error.field in form.fields else None, error.message)
        else:
            messages.success(
                request,
                f"The annotation of {mailbox.name or mailbox.email_address} is saved."
                if changed
                else "Nothing changed, so nothing was saved.",
            )
            return redirect("migration:annotation_edit", mailbox_id=mailbox.pk)
    return render(
        request,
        "migration/annotations/edit.html",
        {"form": form, "mailbox": mailbox, "annotation": annotation},
    )
