"""Who may decide what: the eligibility rules every approval read and write shares.

A person may decide a waiting stage when, for themselves or for someone whose
out-of-office delegation to them is active today, they are one of the stage's
approvers (the team's business owners, holders of a role — optionally only
within the request's team — or named people), or the stage has escalated and
they are a fallback approver. Separation of duties: never on a request they
made (or made by someone they act for), and never a second stage of the same
request.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from django.db.models import BooleanField, Case, Exists, OuterRef, Q, QuerySet, Value, When
from django.utils import timezone

from onboarding.models import ApproverKind, Delegation, RequestStage, StageStatus
from portal.accounts.models import User


def acting_for(user: User, *, on: dt.date | None = None) -> list[User]:
    """``user`` first, then everyone whose delegation to ``user`` is active on ``on`` (today)."""
    on = on or timezone.localdate()
    delegators = [
        delegation.delegator
        for delegation in Delegation.objects.filter(
            delegate=user, starts_on__lte=on, ends_on__gte=on, cancelled_at__isnull=True
        ).select_related("delegator")
        if delegation.delegator.is_active
    ]
    return [user, *delegators]


def _approver_q(person: User) -> Q:
    """Stages ``person`` is an approver of in their own right (not yet counting escalation)."""
    owner = Q(approver_kind=ApproverKind.TEAM_OWNER, request__team__business_owners=person)
    named = Q(approver_kind=ApproverKind.NAMED, approvers=person)
    roles = [role.value for role in person.roles()]
    in_team = Q(request__team__members=person) | Q(request__team__business_owners=person)
    by_role = Q(approver_kind=ApproverKind.ROLE, role__in=roles) & (Q(team_scoped=False) | in_team)
    fallback = Q(escalated_at__isnull=False, fallback_approvers=person)
    return owner | named | (by_role if roles else Q(pk__in=[])) | fallback


def _eligible_ids(user: User, *, on: dt.date | None = None) -> QuerySet[RequestStage]:
    people = acting_for(user, on=on)
    allowed = Q(pk__in=[])
    for person in people:
        allowed |= _approver_q(person)
    already_decided = RequestStage.objects.filter(
        request=OuterRef("request"), status=StageStatus.APPROVED, decided_by=user
    ).exclude(pk=OuterRef("pk"))
    return (
        RequestStage.objects.filter(allowed, status=StageStatus.WAITING)
        .exclude(request__requester__in=people)
        .exclude(Exists(already_decided))
        .values("pk")
    )


def stages_awaiting(user: User, *, now: dt.datetime | None = None) -> QuerySet[RequestStage]:
    """The approver's inbox: stages they may decide now, oldest first, ``is_overdue`` annotated."""
    now = now or timezone.now()
    return (
        RequestStage.objects.filter(pk__in=_eligible_ids(user, on=timezone.localdate(now)))
        .select_related("request", "request__requester", "request__team")
        .annotate(
            is_overdue=Case(When(due_at__lt=now, then=Value(True)), default=Value(False), output_field=BooleanField())
        )
        .order_by("waiting_since", "pk")
    )


@dataclass(frozen=True)
class Eligibility:
    allowed: bool
    on_behalf_of: User | None = None  # the delegator, when the person decides as a delegate
    reason: str = ""


def decision_eligibility(user: User, stage: RequestStage, *, now: dt.datetime | None = None) -> Eligibility:
    """Whether ``user`` may decide ``stage`` now, and for whom; ``reason`` says why not in plain English."""
    now = now or timezone.now()
    request = stage.request
    if stage.status != StageStatus.WAITING:
        return Eligibility(False, reason="This stage is not waiting for a decision.")
    if request.requester_id == user.pk:
        return Eligibility(False, reason="You cannot decide on a request you made.")
    if request.stages.filter(status=StageStatus.APPROVED, decided_by=user).exclude(pk=stage.pk).exists():
        return Eligibility(False, reason="You have already decided another stage of this request.")
    for person in acting_for(user, on=timezone.localdate(now)):
        if person.pk == request.requester_id:
            continue
        if RequestStage.objects.filter(_approver_q(person), pk=stage.pk).exists():
            return Eligibility(True, on_behalf_of=None if person.pk == user.pk else person)
    return Eligibility(False, reason="You are not an approver for this stage.")


def stage_approvers(stage: RequestStage) -> list[User]:
    """Everyone who may decide ``stage`` in their own right (for notifications), excluding the requester."""
    people: QuerySet[User] | Any
    if stage.approver_kind == ApproverKind.TEAM_OWNER:
        people = (
            User.objects.filter(owned_teams=stage.request.team_id) if stage.request.team_id else User.objects.none()
        )
    elif stage.approver_kind == ApproverKind.NAMED:
        people = stage.approvers.all()
    else:
        from portal.accounts.roles import ROLE_GROUP_NAMES, Role

        people = User.objects.filter(groups__name=ROLE_GROUP_NAMES[Role(stage.role)])
        if stage.team_scoped and stage.request.team_id:
            people = people.filter(Q(teams=stage.request.team_id) | Q(owned_teams=stage.request.team_id))
    if stage.escalated_at:
        people = people | stage.fallback_approvers.all()
    return list(people.filter(is_active=True).exclude(pk=stage.request.requester_id).distinct())
