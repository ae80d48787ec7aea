"""Reads about mailbox requests: who may see which, the requests dashboard, and a request's timeline.

Visibility: their own, their team's, what they may decide or decided, or all for admins.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.db.models import Q, QuerySet
from django.utils import timezone

from onboarding.models import (
    Decision,
    DecisionOutcome,
    MailboxRequest,
    ProvisioningStep,
    RequestStatus,
    StageStatus,
    mailbox_address,
)
from onboarding.services.provisioning import step_title
from portal.accounts.models import Team, User, display_name_in
from portal.accounts.roles import perm
from portal.audit.models import AuditEvent
from portal.policy.services import policy_get

from .approvals import stages_awaiting


def requests_visible_to(user: User) -> QuerySet[MailboxRequest]:
    if not user.is_authenticated or not user.is_active:
        return MailboxRequest.objects.none()
    if user.has_perm(perm("administer_platform")):
        return MailboxRequest.objects.all()
    visible = Q(requester=user)
    if user.has_perm(perm("submit_mailbox_requests")):
        visible |= _in_teams_of(user)
    if user.has_perm(perm("decide_approvals")):
        decided = Decision.objects.filter(Q(decided_by=user) | Q(on_behalf_of=user)).values("request_id")
        awaiting = stages_awaiting(user).values("request_id")
        visible |= Q(pk__in=decided) | Q(pk__in=awaiting)
    return MailboxRequest.objects.filter(pk__in=MailboxRequest.objects.filter(visible).values("pk"))


def _in_teams_of(user: User) -> Q:
    """Requests for a team ``user`` is a member or business owner of.

    Two small lookups of team ids rather than joins through both memberships, which would pair
    every request with every member and owner of its team before filtering.
    """
    members = Team.members.through.objects.filter(user_id=user.pk).values("team_id")
    owners = Team.business_owners.through.objects.filter(user_id=user.pk).values("team_id")
    return Q(team_id__in=members) | Q(team_id__in=owners)


def teams_for(user: User) -> QuerySet[Team]:
    """The teams ``user`` may name as a mailbox's owner: those they are a member or business owner of."""
    return Team.objects.filter(pk__in=Team.objects.filter(Q(members=user) | Q(business_owners=user)).values("pk"))


def allowed_domains() -> list[str]:
    """The domains new mailbox addresses may use, lower-cased, from the portal's policy."""
    return [str(domain).lower() for domain in policy_get().allowed_domains]


def requests_on_dashboard(user: User) -> QuerySet[MailboxRequest]:
    """The requests dashboard: the person's own requests, drafts included, and their teams' submitted ones.

    Newest first, with what the list shows joined in, so a page costs the same number of queries at any size.
    """
    own_or_team = Q(requester=user) | (_in_teams_of(user) & ~Q(status=RequestStatus.DRAFT))
    return (
        requests_visible_to(user).filter(own_or_team).select_related("requester", "team").order_by("-created_at", "-id")
    )


# What the dashboard shows of each request (``dashboard_rows``).
DASHBOARD_FIELDS = (
    "id",
    "reference",
    "display_name",
    "local_part",
    "domain",
    "team__name",
    "requester_id",
    "requester__first_name",
    "requester__last_name",
    "requester__username",
    "updated_at",
    "status",
)
_STATUS_LABELS = {value: str(label) for value, label in RequestStatus.choices}


def dashboard_rows(user: User, values: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """A page of ``requests_on_dashboard(...).values(*DASHBOARD_FIELDS)`` as the dashboard draws it:
    plain values, whether the request is the person's own, and the names and labels it shows."""
    rows = []
    for request in values:
        rows.append(
            {
                "id": request["id"],
                "reference": request["reference"],
                "display_name": request["display_name"],
                "address": mailbox_address(request["local_part"], request["domain"]),
                "team_name": request["team__name"] or "",
                "mine": request["requester_id"] == user.pk,
                "requester_name": display_name_in(request, "requester"),
                "updated_at": request["updated_at"],
                "status": request["status"],
                "status_label": _STATUS_LABELS.get(request["status"], request["status"]),
            }
        )
    return rows


@dataclass(frozen=True)
class TimelineEntry:
    title: str
    when: dt.datetime | None = None
    who: str = ""
    detail: str = ""
    status: str = ""  # a short state shown as a tag ("Sent", "Failed", ...)
    upcoming: bool = False  # expected, not yet happened
    estimated: dt.datetime | None = None
    overdue: bool = False


_TIMELINE_ACTIONS = {
    "mailbox_request.created": "Draft started",
    "mailbox_request.submitted": "Request submitted",
    "mailbox_request.resubmitted": "Request submitted again",
    "mailbox_request.withdrawn": "Request withdrawn",
    "approval.stage_escalated": "Decision overdue: passed to fallback approvers",
}
_OUTCOME_TITLES = {
    DecisionOutcome.APPROVE: "approved",
    DecisionOutcome.REJECT: "rejected",
    DecisionOutcome.RETURN: "returned for more information",
}


def request_timeline(request: MailboxRequest, *, now: dt.datetime | None = None) -> list[TimelineEntry]:
    """What has happened to ``request`` in time order, then what is still expected.

    A fixed handful of queries whatever the request's history: one each for its audit
    events, decisions, stages, provisioning steps and notifications.
    """
    now = now or timezone.now()
    past: list[TimelineEntry] = []
    upcoming: list[TimelineEntry] = []

    events = AuditEvent.objects.filter(
        object_type="mailbox_request", object_id=str(request.pk), action__in=list(_TIMELINE_ACTIONS)
    ).select_related("actor")
    for event in events.order_by("seq"):
        past.append(
            TimelineEntry(
                title=_TIMELINE_ACTIONS[event.action],
                when=event.created_at,
                who=event.actor.display_name if event.actor else event.actor_name,
                detail=event.reason,
            )
        )

    decisions = request.decisions.select_related("decided_by", "on_behalf_of", "stage")
    for decision in decisions:
        who = decision.decided_by.display_name
        if decision.on_behalf_of:
            who = f"{who} on behalf of {decision.on_behalf_of.display_name}"
        past.append(
            TimelineEntry(
                title=f"{decision.stage.name}: {_OUTCOME_TITLES.get(decision.outcome, decision.outcome)}",
                when=decision.decided_at,
                who=who,
                detail=decision.reason,
            )
        )

    if request.status == RequestStatus.SUBMITTED:
        estimate: dt.datetime | None = None
        stages = request.stages.filter(status__in=[StageStatus.WAITING, StageStatus.PENDING]).order_by("order")
        for stage in stages:
            if stage.status == StageStatus.WAITING:
                estimate = stage.due_at
            elif estimate is not None:
                # A later stage starts when the one before it is decided: at the latest, its due time.
                estimate = max(estimate, now) + dt.timedelta(hours=stage.sla_hours)
            upcoming.append(
                TimelineEntry(
                    title=f"{stage.name} decision",
                    status=stage.get_status_display(),
                    upcoming=True,
                    estimated=estimate,
                    overdue=bool(stage.status == StageStatus.WAITING and stage.due_at and stage.due_at < now),
                )
            )

    steps = ProvisioningStep.objects.filter(run__request=request).select_related("done_by").order_by("order")
    for step in steps:
        entry = TimelineEntry(
            title=f"Set-up: {step_title(step.name)}",
            when=step.finished_at,
            detail=step.error or step.note,
            status=step.get_status_display(),
            who=step.done_by.display_name if step.done_by else "",
            upcoming=step.finished_at is None,
        )
        (upcoming if entry.upcoming else past).append(entry)

    for notification in request.notifications.all():
        past.append(
            TimelineEntry(
                title=f"Email: {notification.subject}",
                when=notification.sent_at or notification.created_at,
                detail=f"To {', '.join(notification.recipients)}",
                status=notification.get_status_display(),
            )
        )

    past.sort(key=lambda entry: entry.when or now)
    return [*past, *upcoming]


def latest_return_reason(request: MailboxRequest) -> str:
    """What the approver who returned the request asked for, most recent first."""
    decision = request.decisions.filter(outcome=DecisionOutcome.RETURN).order_by("-decided_at", "-id").first()
    return decision.reason if decision else ""
