"""The migration lead's start page: where the inventory stands, at a glance."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from migration.selectors.inventory import inventory_summary

from .inventory import classification_tag, inventory_access_required, readiness_tag


@require_GET
@inventory_access_required
def dashboard(request: HttpRequest) -> HttpResponse:
    summary = inventory_summary()
    return render(
        request,
        "migration/dashboard.html",
        {
            "summary": summary,
            "classification_rows": [(row, classification_tag(row.value)) for row in summary.by_classification],
            "readiness_rows": [(row, readiness_tag(row.value)) for row in summary.by_readiness],
        },
    )
