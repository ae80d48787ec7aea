"""The central policy pages for platform admins: a summary of every setting and one form per section.

Views parse input, call one service and render or redirect; services do the checking and auditing.
"""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse, QueryDict
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods

from portal.accounts.roles import perm
from portal.decorators import require_permission
from portal.exceptions import PortalError

from . import selectors, services
from .forms import SECTION_FORMS, BlackoutRemoveForm, BlackoutWindowForm
from .models import BlackoutWindow

ADMINISTER = "administer_platform"


def _posted(request: HttpRequest) -> QueryDict | None:
    # A POST with every box unticked is still an answer, so the form is bound even when it is empty.
    return request.POST if request.method == "POST" else None


def _add_error(form: forms.Form, error: PortalError, aliases: dict[str, str] | None = None) -> None:
    field = (aliases or {}).get(error.field or "", error.field)
    form.add_error(field if field in form.fields else None, error.message)


@require_GET
@require_permission(ADMINISTER)
def policy_summary(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "policy/summary.html",
        {
            "overview": selectors.policy_overview(),
            "can_run_discovery": request.user.has_perm(perm("lead_migration")),
        },
    )


@require_http_methods(["GET", "POST"])
@require_permission(ADMINISTER)
def policy_section_change(request: HttpRequest, section: str) -> HttpResponse:
    form_class = SECTION_FORMS.get(section)
    if form_class is None:
        raise Http404
    form = form_class(_posted(request), policy=services.policy_get())
    if request.method == "POST" and form.is_valid():
        try:
            services.policy_update(actor=request.user, changes=form.changes(), reason=form.cleaned_data["reason"])
        except PortalError as error:
            _add_error(form, error)
        else:
            messages.success(request, form.saved_message)
            return redirect("policy:summary")
    return render(request, "policy/section_form.html", {"form": form})


@require_http_methods(["GET", "POST"])
@require_permission(ADMINISTER)
def policy_blackout_add(request: HttpRequest) -> HttpResponse:
    form = BlackoutWindowForm(_posted(request))
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            services.blackout_window_add(
                actor=request.user, starts_at=data["starts_at"], ends_at=data["ends_at"], reason=data["reason"]
            )
        except PortalError as error:
            _add_error(form, error, BlackoutWindowForm.service_fields)
        else:
            messages.success(request, f"The blackout window “{data['reason'].strip()}” was added.")
            return redirect("policy:summary")
    return render(request, "policy/blackout_add.html", {"form": form})


def _get_blackout(window_id: int) -> BlackoutWindow:
    window = BlackoutWindow.objects.filter(pk=window_id).first()
    if window is None:
        raise Http404
    return window


@require_http_methods(["GET", "POST"])
@require_permission(ADMINISTER)
def policy_blackout_remove(request: HttpRequest, window_id: int) -> HttpResponse:
    window = _get_blackout(window_id)
    form = BlackoutRemoveForm(_posted(request))
    if request.method == "POST" and form.is_valid():
        try:
            services.blackout_window_remove(actor=request.user, window_id=window.pk, reason=form.cleaned_data["reason"])
        except PortalError as error:
            messages.info(request, error.message)
        else:
            messages.success(request, f"The blackout window “{window.reason}” was removed.")
        return redirect("policy:summary")
    return render(request, "policy/blackout_remove.html", {"form": form, "window": window})
