"""Who may decide what: the eligibility rules every approval read and write shares.

A person may decide a waiting stage when they hold the ``decide_approvals``
permission and, for themselves or for someone whose out-of-office delegation to
them is active today, they are one of the stage's approvers (the team's
business owners, holders of a role — optionally only within the request's team
— or named people), or the stage has escalated and they are a fallback
approver.

Separation of duties:

* never on a request they made, or made by someone they are standing in for;
* never a second stage of the same request: nobody whose authority approved one
  stage — whether they decided it or it was decided on their behalf — approves
  another. A return or a rejection is not an approval, and a stage reset by a
  resubmission no longer counts.

``stages_awaiting`` (the inbox, in SQL) and ``decision_eligibility`` (one stage,
with a reason in plain English) apply the same rules through the same query
pieces, so what a person sees in their inbox is exactly what they may decide.
The one piece written twice is "approved another stage": the inbox reads it once
for all waiting stages (``_approved_by_q``), the single check per stage
(``_approved_elsewhere_q``); ``tests/onboarding/test_approval_selectors.py`` holds
the inbox, ``inbox_keys`` and the single check to the same answers for every
person and stage of a busy little world.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import Permission
from django.db.models import (
    BooleanField,
    Case,
    Exists,
    IntegerField,
    OuterRef,
    Prefetch,
    Q,
    QuerySet,
    Value,
    When,
)
from django.utils import formats, timezone

from onboarding.models import (
    ApprovalStage,
    ApproverKind,
    Decision,
    Delegation,
    MailboxRequest,
    RequestStage,
    RequestStatus,
    StageStatus,
    mailbox_address,
)
from portal import compiled_sql
from portal.accounts.models import Team, User, display_name_in, display_name_of
from portal.accounts.roles import ROLE_GROUP_NAMES, Role, perm
from portal.dates import since, until

DECIDE_PERMISSION = "decide_approvals"


def can_decide_approvals(person: User) -> bool:
    return bool(person.is_active and person.has_perm(perm(DECIDE_PERMISSION)))


def people_who_can_decide() -> QuerySet[User]:
    """Active people holding ``decide_approvals`` through a role, directly, or as superusers."""
    permission = Permission.objects.filter(codename=DECIDE_PERMISSION, content_type__app_label="accounts")
    return User.objects.filter(is_active=True).filter(
        Q(is_superuser=True)
        | Q(pk__in=User.objects.filter(groups__permissions__in=permission).values("pk"))
        | Q(pk__in=User.objects.filter(user_permissions__in=permission).values("pk"))
    )


# Values no real row has, standing in for a person and a day in SQL built once (see compiled_sql).
_SOMEONE = -918_273_645
_SOME_DAY = dt.date(1, 2, 3)


def _delegations_to(person_id: int, *, on: dt.date) -> QuerySet[Delegation]:
    """Delegations to the person active on ``on``, from someone else."""
    return Delegation.objects.filter(
        delegate_id=person_id, starts_on__lte=on, ends_on__gte=on, cancelled_at__isnull=True
    ).exclude(delegator_id=person_id)


def acting_for(user: User, *, on: dt.date | None = None) -> list[User]:
    """``user`` first, then everyone whose delegation to ``user`` is active on ``on`` (today).

    A delegator who could not decide approvals themselves lends no authority.
    """
    on = on or timezone.localdate()
    # Most people stand in for nobody: a first look, built once, says so without building the query.
    standing_in = compiled_sql.compiled(
        "standing in",
        lambda: _delegations_to(_SOMEONE, on=_SOME_DAY).values_list("pk")[:1],
        stand_ins=(_SOMEONE, _SOME_DAY),
    )
    if not compiled_sql.rows(standing_in, values=(user.pk, on)):
        return [user]
    delegations = _delegations_to(user.pk, on=on).select_related("delegator").order_by("delegator__username", "pk")
    delegators: dict[int, User] = {}
    for delegation in delegations:
        if delegation.delegator_id not in delegators and can_decide_approvals(delegation.delegator):
            delegators[delegation.delegator_id] = delegation.delegator
    return [user, *delegators.values()]


def delegates_of(people: Iterable[User], *, on: dt.date | None = None) -> list[User]:
    """Who stands in today for any of ``people``."""
    on = on or timezone.localdate()
    ids = [person.pk for person in people]
    return list(
        User.objects.filter(
            pk__in=Delegation.objects.filter(
                delegator_id__in=ids, starts_on__lte=on, ends_on__gte=on, cancelled_at__isnull=True
            ).values("delegate_id"),
            is_active=True,
        ).order_by("username")
    )


# --- query pieces shared by the inbox and the single-stage check ---------------------------------


def _approver_q(person: User) -> Q:
    """Stages ``person`` is an approver of in their own right, counting escalation (any stage status).

    Built from ``Exists`` so a stage never repeats however many teams or approvers match.
    """
    team_owner = Team.business_owners.through.objects.filter(team_id=OuterRef("request__team_id"), user_id=person.pk)
    team_member = Team.members.through.objects.filter(team_id=OuterRef("request__team_id"), user_id=person.pk)
    named = RequestStage.approvers.through.objects.filter(requeststage_id=OuterRef("pk"), user_id=person.pk)
    fallback = RequestStage.fallback_approvers.through.objects.filter(requeststage_id=OuterRef("pk"), user_id=person.pk)
    allowed = (
        (Q(approver_kind=ApproverKind.TEAM_OWNER) & Q(Exists(team_owner)))
        | (Q(approver_kind=ApproverKind.NAMED) & Q(Exists(named)))
        | (Q(escalated_at__isnull=False) & Q(Exists(fallback)))
    )
    roles = [role.value for role in person.roles()]
    if roles:
        in_team = Q(Exists(team_owner)) | Q(Exists(team_member))
        allowed |= Q(approver_kind=ApproverKind.ROLE, role__in=roles) & (Q(team_scoped=False) | in_team)
    return allowed


def _approved_elsewhere_q(person_ids: Iterable[int]) -> Q:
    """Stages of requests where another stage stands approved by (or on behalf of) one of ``person_ids``.

    An approved stage's current approval is its latest Decision: nothing is decided on a stage
    once it is approved, and a resubmission that resets it takes it out of APPROVED, so the
    approvals of a reset stage no longer count.
    """
    ids = list(person_ids)
    # "No later decision on its stage" rather than "pk = (latest on its stage)": PostgreSQL estimates
    # the equality at one row and then compares every inbox stage with every approval the person
    # ever gave; the NOT EXISTS is planned as an anti-join on the stage index instead.
    later_on_its_stage = Decision.objects.filter(stage_id=OuterRef("stage_id"), pk__gt=OuterRef("pk"))
    current_approvals = (
        Decision.objects.filter(request_id=OuterRef("request_id"), stage__status=StageStatus.APPROVED)
        .exclude(stage_id=OuterRef("pk"))
        .filter(Q(decided_by_id__in=ids) | Q(on_behalf_of_id__in=ids))
        .filter(~Exists(later_on_its_stage))
    )
    return Q(Exists(current_approvals))


def _approved_by_q(person_ids: Iterable[int]) -> Q:
    """For waiting stages, the same as ``_approved_elsewhere_q``: their request has a stage that
    stands approved by (or on behalf of) one of ``person_ids``.

    A waiting stage is never the approved one, so "another stage" needs no comparison with the
    stage itself, and the approvals are read once, not once per stage. An approved stage records
    who decided it (``decided_by``, its latest decision's maker); only approvals given on someone's
    behalf need the decisions themselves.
    """
    ids = list(person_ids)
    decided = RequestStage.objects.filter(status=StageStatus.APPROVED, decided_by_id__in=ids).values("request_id")
    later_on_its_stage = Decision.objects.filter(stage_id=OuterRef("stage_id"), pk__gt=OuterRef("pk"))
    for_them = (
        Decision.objects.filter(on_behalf_of_id__in=ids, stage__status=StageStatus.APPROVED)
        .filter(~Exists(later_on_its_stage))
        .values("request_id")
    )
    return Q(request_id__in=decided) | Q(request_id__in=for_them)


def _eligible_q(user: User, people: list[User]) -> Q:
    """Waiting stages ``user`` may decide, acting for ``people`` (``user`` first, then delegators)."""
    if not can_decide_approvals(user):
        return Q(pk__in=[])
    by_authority = _approver_q(user)
    for delegator in people[1:]:
        by_authority |= _approver_q(delegator) & ~_approved_by_q([delegator.pk])
    return (
        Q(status=StageStatus.WAITING)
        & ~Q(request__requester_id__in=[person.pk for person in people])
        & ~_approved_by_q([user.pk])
        & by_authority
    )


def _inbox_queryset(user: User, people: list[User]) -> QuerySet[RequestStage]:
    """Waiting stages ``user`` may decide, oldest first, annotated with ``on_behalf_of_id``."""
    if len(people) > 1:
        on_behalf = [When(_approver_q(user), then=Value(None))]
        on_behalf += [
            When(_approver_q(delegator) & ~_approved_by_q([delegator.pk]), then=Value(delegator.pk))
            for delegator in people[1:]
        ]
        on_behalf_of_id = Case(*on_behalf, default=Value(None), output_field=IntegerField())
    else:
        # Standing in for nobody, every stage is decided in their own right; building the
        # conditions twice would cost more than the query itself.
        on_behalf_of_id = Value(None, output_field=IntegerField())
    return (
        RequestStage.objects.filter(_eligible_q(user, people))
        .annotate(on_behalf_of_id=on_behalf_of_id)
        .order_by("waiting_since", "pk")
    )


def stages_awaiting(
    user: User, *, now: dt.datetime | None = None, people: list[User] | None = None
) -> QuerySet[RequestStage]:
    """The approver's inbox: stages they may decide now, oldest first.

    Annotated with ``is_overdue`` and ``on_behalf_of_id`` (the delegator whose authority the
    user would decide with, or ``None`` when they may decide in their own right). ``people`` is
    ``acting_for(user)`` when the caller has already read it.
    """
    now = now or timezone.now()
    people = people if people is not None else acting_for(user, on=timezone.localdate(now))
    return (
        _inbox_queryset(user, people)
        .select_related("request", "request__requester", "request__team")
        .annotate(
            is_overdue=Case(When(due_at__lt=now, then=Value(True)), default=Value(False), output_field=BooleanField())
        )
    )


@dataclass(frozen=True)
class Eligibility:
    allowed: bool
    on_behalf_of: User | None = None  # the delegator, when the person decides as a delegate
    reason: str = ""


def _matches(stage: RequestStage, condition: Q) -> bool:
    return RequestStage.objects.filter(condition, pk=stage.pk).exists()


def decision_eligibility(
    user: User, stage: RequestStage, *, now: dt.datetime | None = None, assume_waiting: bool = False
) -> Eligibility:
    """Whether ``user`` may decide ``stage`` now, and for whom; ``reason`` says why not in plain English.

    ``assume_waiting`` answers as if the stage were waiting: whether the person is one of those
    the stage is (or was) for — used to tell them what became of a stage they could decide.
    """
    now = now or timezone.now()
    request = stage.request
    if not can_decide_approvals(user):
        return Eligibility(False, reason="You do not have permission to decide approvals.")
    if not assume_waiting and stage.status != StageStatus.WAITING:
        return Eligibility(False, reason="This stage is not waiting for a decision.")
    if request.requester_id == user.pk:
        return Eligibility(False, reason="You cannot decide on a request you made.")
    people = acting_for(user, on=timezone.localdate(now))
    if any(person.pk == request.requester_id for person in people[1:]):
        return Eligibility(False, reason="You cannot decide on a request made by someone you are standing in for.")
    if _matches(stage, _approved_elsewhere_q([user.pk])):
        return Eligibility(False, reason="You have already approved another stage of this request.")
    if _matches(stage, _approver_q(user)):
        return Eligibility(True)
    refusal = ""
    for delegator in people[1:]:
        if not _matches(stage, _approver_q(delegator)):
            continue
        if _matches(stage, _approved_elsewhere_q([delegator.pk])):
            refusal = f"{delegator.display_name}, whom you are standing in for, has already approved another stage."
            continue
        return Eligibility(True, on_behalf_of=delegator)
    if refusal:
        return Eligibility(False, reason=refusal)
    if stage.escalated_at is None and stage.fallback_approvers.filter(pk__in=[p.pk for p in people]).exists():
        return Eligibility(False, reason="You are a fallback approver: you can decide this stage once it is overdue.")
    return Eligibility(False, reason="You are not an approver for this stage.")


def stage_approvers(stage: RequestStage) -> list[User]:
    """Everyone who may decide ``stage`` in their own right, excluding the requester.

    Only active people holding ``decide_approvals``; fallback approvers once the stage has
    escalated. Separation of duties across stages is not applied here (see
    ``stage_decision_recipients``).
    """
    team_id = stage.request.team_id
    if stage.approver_kind == ApproverKind.TEAM_OWNER:
        chosen = Q(owned_teams=team_id) if team_id else Q(pk__in=[])
    elif stage.approver_kind == ApproverKind.NAMED:
        chosen = Q(pk__in=stage.approvers.values("pk"))
    elif stage.role:
        chosen = Q(groups__name=ROLE_GROUP_NAMES[Role(stage.role)])
        if stage.team_scoped:
            chosen &= (Q(teams=team_id) | Q(owned_teams=team_id)) if team_id else Q(pk__in=[])
    else:
        chosen = Q(pk__in=[])
    if stage.escalated_at:
        chosen |= Q(pk__in=stage.fallback_approvers.values("pk"))
    return list(
        User.objects.filter(pk__in=User.objects.filter(chosen).values("pk"))
        .filter(pk__in=people_who_can_decide().values("pk"))
        .exclude(pk=stage.request.requester_id)
        .order_by("username")
    )


def stage_decision_recipients(stage: RequestStage, *, now: dt.datetime | None = None) -> list[User]:
    """Who to tell that ``stage`` waits: its approvers and whoever stands in for them, if they may decide it."""
    now = now or timezone.now()
    approvers = stage_approvers(stage)
    candidates = {person.pk: person for person in approvers}
    for delegate in delegates_of(approvers, on=timezone.localdate(now)):
        candidates.setdefault(delegate.pk, delegate)
    return [person for person in candidates.values() if decision_eligibility(person, stage, now=now).allowed]


def stage_fallback_recipients(stage: RequestStage, *, now: dt.datetime | None = None) -> list[User]:
    """The fallback approvers an escalated ``stage`` now lets decide."""
    return [
        person
        for person in stage.fallback_approvers.filter(is_active=True).order_by("username")
        if decision_eligibility(person, stage, now=now).allowed
    ]


# --- what the pages show -------------------------------------------------------------------------


@dataclass(frozen=True)
class InboxItem:
    stage: RequestStage
    request: MailboxRequest
    on_behalf_of: User | None
    is_overdue: bool
    overdue_by: dt.timedelta | None


def inbox_items(
    user: User,
    stages: Iterable[RequestStage],
    *,
    now: dt.datetime | None = None,
    people: list[User] | None = None,
) -> list[InboxItem]:
    """Stages from ``stages_awaiting`` (or a page of them) with the people behind ``on_behalf_of_id``."""
    now = now or timezone.now()
    acting = people if people is not None else acting_for(user, on=timezone.localdate(now))
    people_by_id = {person.pk: person for person in acting}
    return [
        InboxItem(
            stage=stage,
            request=stage.request,
            on_behalf_of=people_by_id.get(stage.on_behalf_of_id) if stage.on_behalf_of_id else None,
            is_overdue=stage.is_overdue,
            overdue_by=(now - stage.due_at) if stage.is_overdue and stage.due_at else None,
        )
        for stage in stages
    ]


def inbox_keys(
    user: User, *, now: dt.datetime | None = None, people: list[User] | None = None
) -> list[tuple[int, int | None]]:
    """The whole inbox in order as (stage id, on behalf of whom) pairs, for paging without a second
    pass of the eligibility query: its length is the count, a slice is a page.

    The same rows as ``stages_awaiting``. Its SQL depends only on who the person is, whom they
    stand in for and the roles each holds, so it is built once for each such shape (see
    ``portal.compiled_sql``); the query itself runs every time.
    """
    now = now or timezone.now()
    people = people if people is not None else acting_for(user, on=timezone.localdate(now))
    if not can_decide_approvals(user):
        return []
    shape = ("inbox", *((person.pk, tuple(role.value for role in person.roles())) for person in people))
    query = compiled_sql.compiled(shape, lambda: _inbox_queryset(user, people).values_list("pk", "on_behalf_of_id"))
    return [(pk, on_behalf_of_id) for pk, on_behalf_of_id in compiled_sql.rows(query)]


@dataclass(frozen=True)
class InboxRow:
    """One line of the approvals page: what it shows of a waiting stage and its request."""

    stage_id: int
    stage_name: str
    reference: str
    display_name: str
    address: str
    team_name: str
    requester_name: str
    waiting_since: dt.datetime | None
    due_at: dt.datetime | None
    escalated: bool
    is_overdue: bool
    due_in: str  # how long until the decision is due or, when overdue, how long ago it was due
    on_behalf_of_name: str  # the delegator's name when deciding for them, else ""


_ROW_COLUMNS = (
    "pk",
    "name",
    "waiting_since",
    "due_at",
    "escalated_at",
    "request__reference",
    "request__display_name",
    "request__local_part",
    "request__domain",
    "request__team__name",
    "request__requester__first_name",
    "request__requester__last_name",
    "request__requester__username",
)


def inbox_rows(
    keys: Iterable[tuple[int, int | None]], *, people: list[User], now: dt.datetime | None = None
) -> list[InboxRow]:
    """The lines for a page of ``inbox_keys``, in that order; ``people`` is ``acting_for`` the approver.

    Read as plain values, one query whose SQL is built once per page length: fifty lines of
    model objects and their related objects cost more to make than the page takes to draw.
    """
    now = now or timezone.now()
    keys = list(keys)
    ids = [pk for pk, _ in keys]
    if not ids:
        return []
    query = compiled_sql.compiled(
        ("inbox rows", len(ids)), lambda: RequestStage.objects.filter(pk__in=ids).order_by().values_list(*_ROW_COLUMNS)
    )
    found = {row[0]: row for row in compiled_sql.rows(query, ids)}
    names = {person.pk: person.display_name for person in people}
    page = []
    for pk, on_behalf_of_id in keys:
        row = found.get(pk)
        if row is None:  # decided or withdrawn between the two reads
            continue
        _, name, waiting_since, due_at, escalated_at, reference, display_name, local_part, domain, team, *person = row
        page.append(
            InboxRow(
                stage_id=pk,
                stage_name=name,
                reference=reference,
                display_name=display_name,
                address=mailbox_address(local_part, domain),
                team_name=team or "",
                requester_name=display_name_of(*person),
                waiting_since=waiting_since,
                due_at=due_at,
                escalated=escalated_at is not None,
                is_overdue=bool(due_at and due_at < now),
                due_in=since(due_at, now) if due_at and due_at < now else until(due_at, now),
                on_behalf_of_name=names.get(on_behalf_of_id, "") if on_behalf_of_id else "",
            )
        )
    return page


def approval_inbox(user: User, *, now: dt.datetime | None = None) -> list[InboxItem]:
    """Everything waiting for ``user``, oldest first, in a constant number of queries."""
    now = now or timezone.now()
    return inbox_items(user, stages_awaiting(user, now=now), now=now)


_RECENTLY = dt.timedelta(minutes=10)


def stage_closed_message(stage: RequestStage, *, now: dt.datetime | None = None) -> str:
    """Why a stage cannot be decided any more (or yet), for someone who expected to decide it."""
    now = now or timezone.now()
    if stage.status in (StageStatus.APPROVED, StageStatus.REJECTED, StageStatus.RETURNED) and stage.decided_by:
        moment = stage.decided_at or now
        when = (
            "a moment ago"
            if now - moment < _RECENTLY
            else "on " + formats.date_format(timezone.localtime(moment), "j F Y \\a\\t H:i")
        )
        outcome = StageStatus(stage.status).label.lower()
        return f"This stage was decided by {stage.decided_by.display_name} {when} ({outcome})."
    if stage.status == StageStatus.CANCELLED:
        status = RequestStatus(stage.request.status).label.lower()
        return f"This stage no longer needs a decision: the request is {status}."
    if stage.status == StageStatus.WAITING:
        return f"The request is {RequestStatus(stage.request.status).label.lower()}."
    return "This stage is not waiting for a decision yet."


def decisions_by(user: User) -> QuerySet[Decision]:
    """Decisions ``user`` made (for themselves or for someone else), newest first; ``decided_rows``
    reads a page of them as the approvals page shows them."""
    return Decision.objects.filter(decided_by=user).order_by("-decided_at", "-pk")


_DECIDED_FIELDS = (
    "id",
    "outcome",
    "reason",
    "decided_at",
    "request__reference",
    "request__display_name",
    "stage__name",
    "on_behalf_of_id",
    "on_behalf_of__first_name",
    "on_behalf_of__last_name",
    "on_behalf_of__username",
)


def decided_rows(decisions: QuerySet[Decision]) -> list[dict[str, Any]]:
    """A page of ``decisions_by`` as plain values, with the name of whoever a decision was made for.

    Counting the decisions for the pages needs none of the joins the lines do.
    """
    return [
        {**decision, "on_behalf_of_name": display_name_in(decision, "on_behalf_of")}
        for decision in decisions.values(*_DECIDED_FIELDS)
    ]


def request_route(request: MailboxRequest) -> list[RequestStage]:
    """A request's stages in order, with who decided each, for the route-so-far display."""
    return list(
        request.stages.select_related("decided_by")
        .prefetch_related(
            Prefetch(
                "decisions",
                queryset=Decision.objects.select_related("decided_by", "on_behalf_of").order_by("decided_at", "pk"),
            )
        )
        .order_by("order")
    )


@dataclass(frozen=True)
class StageEstimate:
    stage: RequestStage
    expected_by: dt.datetime | None  # when the stage should be decided, from its SLA
    is_overdue: bool


def route_estimates(request: MailboxRequest, *, now: dt.datetime | None = None) -> list[StageEstimate]:
    """Each stage with when it should be decided: the waiting stage's due time, then each later SLA in turn."""
    now = now or timezone.now()
    estimates: list[StageEstimate] = []
    running: dt.datetime | None = None
    for stage in request.stages.order_by("order"):
        expected: dt.datetime | None = None
        overdue = False
        if stage.status == StageStatus.WAITING and stage.due_at:
            expected = stage.due_at
            overdue = stage.due_at < now
            running = max(stage.due_at, now)
        elif stage.status == StageStatus.PENDING and running is not None:
            expected = running + dt.timedelta(hours=stage.sla_hours)
            running = expected
        estimates.append(StageEstimate(stage=stage, expected_by=expected, is_overdue=overdue))
    return estimates


def approval_stages_configured() -> QuerySet[ApprovalStage]:
    """The configured route, active and inactive, in order, with named and fallback approvers."""
    return ApprovalStage.objects.prefetch_related(
        Prefetch("approvers", queryset=User.objects.order_by("email")),
        Prefetch("fallback_approvers", queryset=User.objects.order_by("email")),
    ).order_by("order")
