"""Approver pages (inbox, decision, out of office) and the platform admins' approval-stage configuration."""

from __future__ import annotations

from django.contrib import messages
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from onboarding.forms.approvals import ApprovalStageForm, DecisionForm, DelegationForm, StageMoveForm
from onboarding.models import ApprovalStage, DecisionOutcome, Delegation, RequestStage, StageStatus
from onboarding.selectors.approvals import (
    acting_for,
    approval_stages_configured,
    decided_rows,
    decision_eligibility,
    decisions_by,
    inbox_keys,
    inbox_rows,
    request_route,
    route_estimates,
    stage_closed_message,
)
from onboarding.services import approvals as services
from portal.decorators import require_permission
from portal.exceptions import InvalidStateError, PermissionDeniedError, PortalError

INBOX_PAGE_SIZE = 50
DECIDED_PAGE_SIZE = 20

# --- approvers -----------------------------------------------------------------------------------


@require_GET
@require_permission("decide_approvals")
def approvals_dashboard(request: HttpRequest) -> HttpResponse:
    now = timezone.now()
    people = acting_for(request.user, on=timezone.localdate(now))
    waiting_page = Paginator(inbox_keys(request.user, now=now, people=people), INBOX_PAGE_SIZE).get_page(
        request.GET.get("page")
    )
    decided_page = Paginator(decisions_by(request.user), DECIDED_PAGE_SIZE).get_page(request.GET.get("decided_page"))
    return render(
        request,
        "onboarding/approvals/inbox.html",
        {
            "rows": inbox_rows(waiting_page.object_list, people=people, now=now),
            "waiting_page": waiting_page,
            "decided_page": decided_page,
            "decided": decided_rows(decided_page.object_list),
            "now": now,
            "cover": Delegation.objects.filter(
                delegator=request.user, cancelled_at__isnull=True, ends_on__gte=timezone.localdate(now)
            )
            .select_related("delegate")
            .order_by("starts_on")
            .first(),
        },
    )


def _get_stage_for_user(request: HttpRequest, stage_id: int) -> RequestStage:
    """The stage, if it is (or was) one the person may decide; a 404 for anyone else."""
    stage = (
        RequestStage.objects.select_related(
            "request", "request__requester", "request__team", "request__owner", "request__backup_owner", "decided_by"
        )
        .filter(pk=stage_id)
        .first()
    )
    if stage is None or not decision_eligibility(request.user, stage, assume_waiting=True).allowed:
        raise Http404
    return stage


@require_http_methods(["GET", "POST"])
@require_permission("decide_approvals")
def approval_decision(request: HttpRequest, stage_id: int) -> HttpResponse:
    stage = _get_stage_for_user(request, stage_id)
    if stage.status != StageStatus.WAITING:
        messages.info(request, stage_closed_message(stage))
        return redirect("onboarding:approvals")
    eligibility = decision_eligibility(request.user, stage)
    if not eligibility.allowed:
        raise Http404
    form = DecisionForm(request.POST if request.method == "POST" else None, reason_required=stage.reason_required)
    if request.method == "POST" and form.is_valid():
        try:
            decision = services.approval_decide(
                actor=request.user,
                stage_id=stage.pk,
                outcome=form.cleaned_data["outcome"],
                reason=form.cleaned_data["reason"],
            )
        except (InvalidStateError, PermissionDeniedError) as refused:
            messages.info(request, refused.message)
            return redirect("onboarding:approvals")
        except PortalError as error:
            form.add_error(error.field if error.field in form.fields else None, error.message)
        else:
            done = {
                DecisionOutcome.APPROVE: "approved",
                DecisionOutcome.REJECT: "rejected",
                DecisionOutcome.RETURN: "returned for more information",
            }[DecisionOutcome(decision.outcome)]
            messages.success(request, f"You {done} {stage.request.reference} at the “{stage.name}” stage.")
            return redirect("onboarding:approvals")
    mailbox_request = stage.request
    route = request_route(mailbox_request)
    estimates = {estimate.stage.pk: estimate for estimate in route_estimates(mailbox_request)}
    history = sorted(
        (decision for step in route for decision in step.decisions.all()), key=lambda d: (d.decided_at, d.pk)
    )
    return render(
        request,
        "onboarding/approvals/decision.html",
        {
            "stage": stage,
            "mailbox_request": mailbox_request,
            "members": list(mailbox_request.members.all()),
            "route": [(step, estimates.get(step.pk)) for step in route],
            "history": history,
            "on_behalf_of": eligibility.on_behalf_of,
            "form": form,
            "now": timezone.now(),
        },
    )


@require_http_methods(["GET", "POST"])
@require_permission("decide_approvals")
def out_of_office(request: HttpRequest) -> HttpResponse:
    form = DelegationForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        try:
            delegation = services.delegation_create(
                actor=request.user,
                delegate=form.cleaned_data["delegate_email"],
                starts_on=form.cleaned_data["starts_on"],
                ends_on=form.cleaned_data["ends_on"],
            )
        except PortalError as error:
            field = {"delegate": "delegate_email"}.get(error.field or "", error.field)
            form.add_error(field if field in form.fields else None, error.message)
        else:
            messages.success(
                request,
                f"{delegation.delegate.display_name} will decide for you from "
                f"{delegation.starts_on:%-d %B %Y} to {delegation.ends_on:%-d %B %Y}.",
            )
            return redirect("onboarding:out_of_office")
    today = timezone.localdate()
    current = Delegation.objects.filter(cancelled_at__isnull=True, ends_on__gte=today)
    return render(
        request,
        "onboarding/approvals/out_of_office.html",
        {
            "form": form,
            "today": today,
            "my_cover": current.filter(delegator=request.user).select_related("delegate").order_by("starts_on"),
            "covering_for": current.filter(delegate=request.user).select_related("delegator").order_by("starts_on"),
        },
    )


@require_POST
@require_permission("decide_approvals")
def out_of_office_cancel(request: HttpRequest, delegation_id: int) -> HttpResponse:
    if not Delegation.objects.filter(pk=delegation_id, delegator=request.user).exists():
        raise Http404
    try:
        delegation = services.delegation_cancel(actor=request.user, delegation_id=delegation_id)
    except PortalError as refused:
        messages.info(request, refused.message)
    else:
        messages.success(request, f"You cancelled the cover by {delegation.delegate.display_name}.")
    return redirect("onboarding:out_of_office")


# --- platform admins: the configured route -------------------------------------------------------


def _get_configured_stage(stage_id: int) -> ApprovalStage:
    stage = ApprovalStage.objects.filter(pk=stage_id).first()
    if stage is None:
        raise Http404
    return stage


@require_GET
@require_permission("administer_platform")
def approval_stages(request: HttpRequest) -> HttpResponse:
    stages = list(approval_stages_configured())
    return render(request, "onboarding/approvals/stages.html", {"stages": stages})


def _stage_settings(form: ApprovalStageForm) -> dict:
    data = form.cleaned_data
    return {
        "name": data["name"],
        "approver_kind": data["approver_kind"],
        "role": data["role"],
        "team_scoped": data["team_scoped"],
        "approvers": data["approvers"],
        "fallback_approvers": data["fallback_approvers"],
        "sla_hours": data["sla_hours"],
        "reason_required": data["reason_required"],
    }


def _save_stage_form(request: HttpRequest, form: ApprovalStageForm, save) -> HttpResponse | None:
    if request.method != "POST" or not form.is_valid():
        return None
    try:
        stage = save(actor=request.user, **_stage_settings(form))
    except InvalidStateError as refused:
        messages.info(request, refused.message)
        return redirect("onboarding:approval_stages")
    except PortalError as error:
        form.add_error(error.field if error.field in form.fields else None, error.message)
        return None
    messages.success(request, f"The stage “{stage.name}” was saved.")
    return redirect("onboarding:approval_stages")


@require_http_methods(["GET", "POST"])
@require_permission("administer_platform")
def approval_stage_add(request: HttpRequest) -> HttpResponse:
    form = ApprovalStageForm(request.POST if request.method == "POST" else None, initial={"sla_hours": 48})
    done = _save_stage_form(request, form, services.approval_stage_create)
    if done:
        return done
    return render(
        request,
        "onboarding/approvals/stage_form.html",
        {"form": form, "stage": None},
    )


@require_http_methods(["GET", "POST"])
@require_permission("administer_platform")
def approval_stage_change(request: HttpRequest, stage_id: int) -> HttpResponse:
    stage = _get_configured_stage(stage_id)
    form = ApprovalStageForm(
        request.POST if request.method == "POST" else None, initial=ApprovalStageForm.initial_for(stage)
    )

    def save(**values):
        return services.approval_stage_update(stage_id=stage.pk, **values)

    done = _save_stage_form(request, form, save)
    if done:
        return done
    return render(
        request,
        "onboarding/approvals/stage_form.html",
        {"form": form, "stage": stage},
    )


@require_POST
@require_permission("administer_platform")
def approval_stage_move(request: HttpRequest, stage_id: int) -> HttpResponse:
    stage = _get_configured_stage(stage_id)
    form = StageMoveForm(request.POST)
    if form.is_valid():
        try:
            services.approval_stage_move(
                actor=request.user, stage_id=stage.pk, direction=form.cleaned_data["direction"]
            )
        except PortalError as refused:
            messages.info(request, refused.message)
    return redirect("onboarding:approval_stages")


@require_http_methods(["GET", "POST"])
@require_permission("administer_platform")
def approval_stage_deactivate(request: HttpRequest, stage_id: int) -> HttpResponse:
    stage = _get_configured_stage(stage_id)
    if request.method == "POST":
        try:
            services.approval_stage_deactivate(actor=request.user, stage_id=stage.pk)
        except PortalError as refused:
            messages.info(request, refused.message)
        else:
            messages.success(request, f"The stage “{stage.name}” was deactivated.")
        return redirect("onboarding:approval_stages")
    if not stage.is_active:
        return redirect("onboarding:approval_stages")
    return render(request, "onboarding/approvals/stage_deactivate.html", {"stage": stage})


@require_POST
@require_permission("administer_platform")
def approval_stage_activate(request: HttpRequest, stage_id: int) -> HttpResponse:
    stage = _get_configured_stage(stage_id)
    try:
        services.approval_stage_activate(actor=request.user, stage_id=stage.pk)
    except PortalError as refused:
        messages.info(request, refused.message)
    else:
        messages.success(request, f"The stage “{stage.name}” is active again.")
    return redirect("onboarding:approval_stages")
