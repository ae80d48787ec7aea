"""The migration lead's start page: where the inventory stands and how the migration is going."""

from __future__ import annotations

import dataclasses

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import NoReverseMatch, reverse
from django.views.decorators.http import require_GET

from migration.selectors.decommission import decommission_overview, email_channel_status
from migration.selectors.inventory import inventory_summary
from migration.selectors.progress import WaveProgress, burn_down, wave_progress
from portal.figures import figures_get

from .inventory import classification_tag, inventory_access_required, readiness_tag


def _with_wave_links(rows: list[WaveProgress]) -> list[WaveProgress]:
    """Each wave with the URL of its page, when the wave pages are installed."""
    try:
        return [dataclasses.replace(row, url=reverse("migration:wave", args=[row.wave.pk])) for row in rows]
    except NoReverseMatch:
        return rows


def _dashboard_figures() -> dict:
    """Everything on the page that counts across the inventory, waves and legacy sources."""
    summary = inventory_summary()
    return {
        "summary": summary,
        "classification_rows": [(row, classification_tag(row.value)) for row in summary.by_classification],
        "readiness_rows": [(row, readiness_tag(row.value)) for row in summary.by_readiness],
        "burn_down": burn_down(),
        "waves": _with_wave_links(wave_progress()),
        "decommission_rows": decommission_overview(),
        "channel": email_channel_status(),
    }


@require_GET
@inventory_access_required
def dashboard(request: HttpRequest) -> HttpResponse:
    figures = figures_get("migration_dashboard", _dashboard_figures)
    return render(request, "migration/dashboard.html", {**figures.value, "figures": figures})
