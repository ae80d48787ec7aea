"""Platform admin pages for provisioning: runs needing attention, one run's steps, retry and mark done."""

from __future__ import annotations

from django.contrib import messages
from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from onboarding.forms.provisioning import StepDoneForm
from onboarding.models import ProvisioningStep
from onboarding.selectors import provisioning as selectors
from onboarding.services import provisioning as services
from portal.decorators import require_permission
from portal.exceptions import PortalError


@require_GET
@require_permission("administer_platform")
def provisioning_runs(request):
    return render(
        request,
        "onboarding/provisioning/runs.html",
        {
            "page": selectors.provisioning_runs_page(request.GET.get("page")),
            "counts": selectors.provisioning_run_counts(),
        },
    )


@require_GET
@require_permission("administer_platform")
def provisioning_run(request, run_id: int):
    detail = selectors.provisioning_run_detail(run_id)
    if detail is None:
        raise Http404("No such provisioning run")
    return render(request, "onboarding/provisioning/run.html", {"detail": detail})


def _step_of_run(run_id: int, step_id: int) -> ProvisioningStep:
    step = ProvisioningStep.objects.filter(pk=step_id, run_id=run_id).first()
    if step is None:
        raise Http404("No such provisioning step")
    return step


@require_POST
@require_permission("administer_platform")
def provisioning_step_retry(request, run_id: int, step_id: int):
    step = _step_of_run(run_id, step_id)
    try:
        run = services.provisioning_retry_from_step(actor=request.user, run_id=run_id, step_order=step.order)
    except PortalError as error:
        messages.error(request, error.message)
    else:
        restart = selectors.provisioning_next_step(run)
        where = f" from step {restart.order}, {services.step_title(restart.name).lower()}" if restart else ""
        messages.success(request, f"Provisioning will start again{where}. This page shows its progress.")
    return redirect("onboarding:provisioning_run", run_id=run_id)


@require_http_methods(["GET", "POST"])
@require_permission("administer_platform")
def provisioning_step_done(request, run_id: int, step_id: int):
    found = selectors.provisioning_step_for_marking(run_id, step_id)
    if found is None:
        raise Http404("No such provisioning step")
    detail, step_view = found
    if not step_view.can_mark_done:
        messages.error(request, "Only the step that needs attention can be marked as done by hand.")
        return redirect("onboarding:provisioning_run", run_id=run_id)
    form = StepDoneForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        try:
            services.provisioning_mark_step_done(actor=request.user, step_id=step_id, note=form.cleaned_data["note"])
        except PortalError as error:
            form.add_error(error.field if error.field in form.fields else None, error.message)
        else:
            messages.success(
                request,
                f"Step {step_view.step.order} is marked as done by hand. Provisioning continues with the next step.",
            )
            return redirect("onboarding:provisioning_run", run_id=run_id)
    return render(
        request,
        "onboarding/provisioning/step_done.html",
        {"detail": detail, "step_view": step_view, "form": form},
    )
