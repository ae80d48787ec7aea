"""Decommission pages: every legacy source's plan and progress, one plan with its checklist, evidence
and sign-off, and the organisation's "Process Email Using" check."""

from __future__ import annotations

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import content_disposition_header
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from migration.forms.decommission import ChecklistItemForm, PlanDetailsForm, SignOffForm
from migration.models import DecommissionEvidence, DecommissionItem, DecommissionPlan
from migration.selectors.decommission import (
    ALL_MIGRATED,
    decommission_overview,
    decommission_plan_detail,
    email_channel_status,
)
from migration.services import decommission as services
from portal.accounts.models import User
from portal.accounts.roles import perm
from portal.decorators import require_permission
from portal.exceptions import PortalError

from .inventory import inventory_access_required

OWNER_CHOICES_MAX = 500


def _can_change(request: HttpRequest) -> bool:
    return request.user.has_perm(perm("lead_migration"))


@require_GET
@inventory_access_required
def decommission_list(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "migration/decommission/list.html",
        {"rows": decommission_overview(), "channel": email_channel_status(), "can_change": _can_change(request)},
    )


@require_POST
@require_permission("lead_migration")
def decommission_outlook_sync(request: HttpRequest) -> HttpResponse:
    created = services.decommission_outlook_populations_sync(actor=request.user)
    if created:
        messages.success(
            request,
            f"Added {len(created)} Outlook-client population{'s' if len(created) != 1 else ''}: "
            + ", ".join(source.name for source in created),
        )
    else:
        messages.info(request, "Every business unit with mailboxes on the Outlook client is already listed.")
    return redirect("migration:decommission")


@require_POST
@require_permission("lead_migration")
def decommission_org_check(request: HttpRequest) -> HttpResponse:
    try:
        check = services.organization_email_channel_check(actor=request.user)
    except PortalError as error:
        messages.error(request, error.message)
    else:
        if check.is_sss:
            messages.success(
                request, f"Process Email Using is {check.label}: the organisation already uses server-side sync."
            )
        else:
            messages.info(
                request, f"Process Email Using is {check.label}. Change it to Server-Side Synchronization (0)."
            )
    return redirect("migration:decommission")


def _plan_page(
    request: HttpRequest, source_id: int, *, sign_off_form: SignOffForm | None = None, status: int = 200
) -> HttpResponse:
    detail = decommission_plan_detail(source_id)
    if detail is None:
        raise Http404("No such legacy source")
    can_change = _can_change(request)
    if sign_off_form is None and can_change and detail.plan is not None and detail.plan.signed_off_at is None:
        sign_off_form = SignOffForm()
    if sign_off_form is not None:
        sign_off_form.helper.form_action = reverse("migration:decommission_sign_off", args=[source_id])
    return render(
        request,
        "migration/decommission/plan.html",
        {"detail": detail, "can_change": can_change, "sign_off_form": sign_off_form},
        status=status,
    )


@require_GET
@inventory_access_required
def decommission_plan(request: HttpRequest, source_id: int) -> HttpResponse:
    return _plan_page(request, source_id)


@require_POST
@require_permission("lead_migration")
def decommission_plan_start(request: HttpRequest, source_id: int) -> HttpResponse:
    try:
        services.decommission_plan_ensure(actor=request.user, source_id=source_id)
    except PortalError as error:
        messages.error(request, error.message)
    return redirect("migration:decommission_plan", source_id=source_id)


def _plan_for(source_id: int) -> DecommissionPlan:
    plan = DecommissionPlan.objects.select_related("source").filter(source_id=source_id).first()
    if plan is None:
        raise Http404("No decommission plan for this source")
    return plan


def _owner_choices() -> list[tuple[int, str]]:
    people = (
        User.objects.filter(is_active=True, groups__isnull=False)
        .distinct()
        .order_by("first_name", "last_name", "username")
        .only("id", "first_name", "last_name", "username")[:OWNER_CHOICES_MAX]
    )
    return [(person.pk, person.display_name) for person in people]


@require_http_methods(["GET", "POST"])
@require_permission("lead_migration")
def decommission_plan_details(request: HttpRequest, source_id: int) -> HttpResponse:
    plan = _plan_for(source_id)
    owners = _owner_choices()
    if request.method == "POST":
        form = PlanDetailsForm(request.POST, owners=owners)
        if form.is_valid():
            owner_id = form.cleaned_data["owner"]
            owner = User.objects.filter(pk=owner_id).first() if owner_id else None
            try:
                services.decommission_plan_update(
                    actor=request.user, plan_id=plan.pk, owner=owner, due_date=form.cleaned_data["due_date"]
                )
            except PortalError as error:
                form.add_error(None, error.message)
            else:
                messages.success(request, "Owner and due date saved.")
                return redirect("migration:decommission_plan", source_id=source_id)
    else:
        form = PlanDetailsForm(owners=owners, initial={"owner": str(plan.owner_id or ""), "due_date": plan.due_date})
    return render(request, "migration/decommission/details.html", {"form": form, "plan": plan, "source": plan.source})


@require_http_methods(["GET", "POST"])
@require_permission("lead_migration")
def decommission_item(request: HttpRequest, item_id: int) -> HttpResponse:
    item = DecommissionItem.objects.select_related("plan__source").filter(pk=item_id).first()
    if item is None or item.code == ALL_MIGRATED:
        raise Http404("No such checklist item")
    if request.method == "POST":
        form = ChecklistItemForm(request.POST, request.FILES)
        if form.is_valid():
            try:
                services.decommission_item_update(
                    actor=request.user,
                    item_id=item.pk,
                    done=form.cleaned_data["done"] == "yes",
                    evidence_note=form.cleaned_data["evidence_note"],
                    evidence_file=form.cleaned_data.get("evidence_file"),
                )
            except PortalError as error:
                form.add_error(error.field if error.field in form.fields else None, error.message)
            else:
                messages.success(request, f"“{item.label}” saved.")
                return redirect("migration:decommission_plan", source_id=item.plan.source_id)
    else:
        form = ChecklistItemForm(initial={"done": "yes" if item.done else "no", "evidence_note": item.evidence_note})
    return render(
        request,
        "migration/decommission/item.html",
        {"form": form, "item": item, "source": item.plan.source},
        status=400 if form.errors else 200,
    )


@require_POST
@require_permission("lead_migration")
def decommission_sign_off(request: HttpRequest, source_id: int) -> HttpResponse:
    plan = _plan_for(source_id)
    form = SignOffForm(request.POST)
    if form.is_valid():
        try:
            services.decommission_plan_sign_off(actor=request.user, plan_id=plan.pk, note=form.cleaned_data["note"])
        except PortalError as error:
            form.add_error(None, error.message)
        else:
            messages.success(request, f"Decommissioning of {plan.source.name} signed off.")
            return redirect("migration:decommission_plan", source_id=source_id)
    return _plan_page(request, source_id, sign_off_form=form, status=400)


@require_GET
@inventory_access_required
def decommission_evidence(request: HttpRequest, evidence_id: int) -> HttpResponse:
    evidence = DecommissionEvidence.objects.filter(pk=evidence_id).first()
    if evidence is None:
        raise Http404("No such evidence file")
    response = HttpResponse(bytes(evidence.content), content_type=evidence.content_type)
    response["Content-Disposition"] = content_disposition_header(as_attachment=True, filename=evidence.file_name)
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Security-Policy"] = "default-src 'none'; sandbox; frame-ancestors 'none'"
    return response
