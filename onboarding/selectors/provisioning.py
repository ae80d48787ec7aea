"""Reads for the platform admin's provisioning pages: the run list and one run with its steps."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from django.core.paginator import Page, Paginator
from django.db.models import Case, Count, IntegerField, OuterRef, Q, QuerySet, Subquery, Value, When

from onboarding.models import ProvisioningRun, ProvisioningStep, RunStatus, StepStatus
from onboarding.services.provisioning import (
    DONE_STATUSES,
    IN_FLIGHT,
    retryable_orders,
    step_description,
    step_title,
)

RUNS_PER_PAGE = 25


def provisioning_runs() -> QuerySet[ProvisioningRun]:
    """Every run: those needing attention first, then those in progress, then the rest, newest first.

    Each run carries its request, its requester, the step it is at (``current_step_name``,
    ``current_step_order``) and how many steps it has and has done, in one query.
    """
    open_steps = ProvisioningStep.objects.filter(run=OuterRef("pk")).exclude(status__in=DONE_STATUSES).order_by("order")
    return (
        ProvisioningRun.objects.select_related("request", "request__requester")
        .annotate(
            priority=Case(
                When(status=RunStatus.NEEDS_ATTENTION, then=Value(0)),
                When(status__in=IN_FLIGHT, then=Value(1)),
                default=Value(2),
                output_field=IntegerField(),
            ),
            current_step_name=Subquery(open_steps.values("name")[:1]),
            current_step_order=Subquery(open_steps.values("order")[:1]),
            step_count=Count("steps", distinct=True),
            done_count=Count("steps", filter=Q(steps__status__in=DONE_STATUSES), distinct=True),
        )
        .order_by("priority", "-created_at", "-pk")
    )


@dataclass(frozen=True)
class RunCounts:
    needs_attention: int
    in_progress: int


def provisioning_run_counts() -> RunCounts:
    counts = ProvisioningRun.objects.aggregate(
        needs_attention=Count("pk", filter=Q(status=RunStatus.NEEDS_ATTENTION)),
        in_progress=Count("pk", filter=Q(status__in=IN_FLIGHT)),
    )
    return RunCounts(**counts)


def provisioning_runs_page(page_number: str | int | None) -> Page:
    """One page of :func:`provisioning_runs`; a bad or too-large page number gives the nearest real page."""
    page = Paginator(provisioning_runs(), RUNS_PER_PAGE).get_page(page_number)
    for run in page.object_list:
        run.current_step_title = step_title(run.current_step_name) if run.current_step_name else ""
    return page


@dataclass(frozen=True)
class StepView:
    step: ProvisioningStep
    title: str
    description: str
    inputs: str
    found: str
    result: str
    can_retry: bool
    can_mark_done: bool
    is_current: bool


@dataclass(frozen=True)
class RunView:
    run: ProvisioningRun
    steps: list[StepView]
    failing: StepView | None

    @property
    def needs_attention(self) -> bool:
        return self.run.status == RunStatus.NEEDS_ATTENTION


def _pretty(value: Any) -> str:
    if value in (None, {}, []):
        return ""
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


def provisioning_run_detail(run_id: int) -> RunView | None:
    """One run with everything its page shows, or None when there is no such run."""
    run = (
        ProvisioningRun.objects.select_related("request", "request__requester", "request__owner", "request__team")
        .filter(pk=run_id)
        .first()
    )
    if run is None:
        return None
    steps = list(run.steps.select_related("done_by").order_by("order"))
    retryable = retryable_orders(run, steps)
    current = next((step.order for step in steps if step.status not in DONE_STATUSES), None)
    views = [
        StepView(
            step=step,
            title=step_title(step.name),
            description=step_description(step.name),
            inputs=_pretty(step.inputs),
            found=_pretty(step.before_state),
            result=_pretty(step.result),
            can_retry=step.order in retryable,
            can_mark_done=run.status == RunStatus.NEEDS_ATTENTION and step.status == StepStatus.FAILED,
            is_current=step.order == current,
        )
        for step in steps
    ]
    failing = next((view for view in views if view.step.status == StepStatus.FAILED), None)
    return RunView(run=run, steps=views, failing=failing)


def provisioning_next_step(run: ProvisioningRun) -> ProvisioningStep | None:
    """The step the run will do next (the first one not done)."""
    return run.steps.exclude(status__in=DONE_STATUSES).order_by("order").first()


def provisioning_step_for_marking(run_id: int, step_id: int) -> tuple[RunView, StepView] | None:
    """The run and the step a platform admin is about to mark as done by hand."""
    detail = provisioning_run_detail(run_id)
    if detail is None:
        return None
    view = next((view for view in detail.steps if view.step.pk == step_id), None)
    return None if view is None else (detail, view)
