"""Random journeys through the approval route, checked against a small model of the rules.

Hypothesis drives submit / decide (approve, reject, return — by eligible and ineligible people,
with and without a reason) / change the answers / resubmit / withdraw / out-of-office cover /
escalate (by moving a fake clock) over three requests and a two- or three-stage route. Every
action goes through the real services. Before each decision the model says what the rules allow
(who may decide, and for whom); the service must agree, and after every step the database must
agree with the model and with the invariants the rules promise.
"""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass, field
from unittest import mock

import pytest
from django.db import transaction
from django.utils import timezone
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from onboarding.models import (
    ApproverKind,
    Decision,
    DecisionOutcome,
    Delegation,
    MailboxRequest,
    ProvisioningRun,
    RequestStage,
    RequestStatus,
    StageStatus,
)
from onboarding.selectors.approvals import decision_eligibility, stages_awaiting
from onboarding.services.approvals import (
    approval_decide,
    approval_stages_escalate_overdue,
    delegation_cancel,
    delegation_create,
)
from onboarding.services.mailbox_requests import (
    mailbox_request_submit,
    mailbox_request_update,
    mailbox_request_withdraw,
)
from portal.accounts.models import Team, User
from portal.accounts.roles import Role
from portal.exceptions import InvalidStateError, PermissionDeniedError, PortalError
from tests.factories import UserFactory
from tests.onboarding.approval_helpers import configure_route
from tests.onboarding.factories import MailboxRequestFactory, TeamFactory

# name: (roles, relationship to the Finance team)
PEOPLE: dict[str, tuple[tuple[Role, ...], str]] = {
    "rhian": ((Role.REQUESTER,), "member"),  # requests only
    "quinn": ((Role.REQUESTER, Role.APPROVER), "owner"),  # requests, and owns the team
    "ada": ((Role.REQUESTER, Role.PLATFORM_ADMIN), "member"),  # requests, and is a platform admin
    "olu": ((Role.APPROVER,), "owner"),
    "omar": ((Role.APPROVER, Role.PLATFORM_ADMIN), "owner"),  # could approve either stage, not both
    "bea": ((Role.PLATFORM_ADMIN,), ""),
    "fiona": ((Role.APPROVER,), ""),  # fallback approver
    "dev": ((Role.APPROVER,), "member"),  # stands in for olu when olu is away
    "xena": ((), ""),  # holds no role
}
REQUESTERS = ("rhian", "quinn", "ada")
DECIDING_ROLES = {Role.APPROVER, Role.PLATFORM_ADMIN}

# Each stage: (kind, role, team_scoped, named, fallback, sla_hours, reason_required)
ROUTES = {
    "owner then admin": [
        (ApproverKind.TEAM_OWNER, "", False, (), ("fiona",), 48, False),
        (ApproverKind.ROLE, Role.PLATFORM_ADMIN, False, (), (), 24, False),
    ],
    "owner, team approver, admin": [
        (ApproverKind.TEAM_OWNER, "", False, (), ("fiona",), 48, True),
        (ApproverKind.ROLE, Role.APPROVER, True, (), ("bea",), 8, False),
        (ApproverKind.ROLE, Role.PLATFORM_ADMIN, False, (), (), 24, False),
    ],
    "named then admin": [
        (ApproverKind.NAMED, "", False, ("olu", "omar"), ("fiona",), 12, False),
        (ApproverKind.ROLE, Role.PLATFORM_ADMIN, False, (), ("fiona",), 24, True),
    ],
}
OUTCOMES = st.sampled_from(
    [DecisionOutcome.APPROVE] * 3 + [DecisionOutcome.REJECT, DecisionOutcome.RETURN] + [DecisionOutcome.RETURN]
)
TERMINAL = (RequestStatus.REJECTED, RequestStatus.WITHDRAWN, RequestStatus.PROVISIONING)


@dataclass
class ModelStage:
    status: str = StageStatus.PENDING
    decided_by: str = ""
    on_behalf_of: str = ""
    approved_version: int = -1
    due_at: dt.datetime | None = None
    escalated: bool = False


@dataclass
class ModelRequest:
    requester: str
    status: str = RequestStatus.DRAFT
    facts_version: int = 0
    stages: list[ModelStage] = field(default_factory=list)


@dataclass
class ModelDelegation:
    pk: int
    starts_on: dt.date
    ends_on: dt.date
    cancelled: bool = False


def people_and_team() -> tuple[dict[str, User], Team]:
    """The cast every example shares: made once per test run, outside the examples' savepoints."""
    people = {
        name: UserFactory(username=name, first_name=name.title(), last_name="Tester", roles=roles)
        for name, (roles, _) in PEOPLE.items()
    }
    team = TeamFactory(
        name="Finance",
        business_owners=[people[n] for n, (_, rel) in PEOPLE.items() if rel == "owner"],
        members=[people[n] for n, (_, rel) in PEOPLE.items() if rel == "member"],
    )
    return people, team


class ApprovalRouteMachine(RuleBasedStateMachine):
    people: dict[str, User]
    team: Team

    def __init__(self) -> None:
        super().__init__()
        # Each example runs inside a savepoint of the test's transaction and is rolled back after.
        self.savepoint = transaction.savepoint()
        self.clock = timezone.now().replace(microsecond=0)
        self.clock_patch = mock.patch("django.utils.timezone.now", side_effect=lambda: self.clock)
        self.clock_patch.start()
        self.requests: list[MailboxRequest] = []
        self.model: list[ModelRequest] = []
        self.delegations: list[ModelDelegation] = []  # olu → dev
        self.decisions_made = 0
        self.seen_terminal: dict[int, str] = {}

    def teardown(self) -> None:
        self.clock_patch.stop()
        transaction.savepoint_rollback(self.savepoint)

    # --- set-up ----------------------------------------------------------------------------------

    @initialize(route=st.sampled_from(sorted(ROUTES)), submitted=st.integers(0, 3))
    def configure(self, route: str, submitted: int) -> None:
        """Configure the route, draft a request for each requester, and submit some of them."""
        self.route = ROUTES[route]
        configure_route(
            *(
                {
                    "name": f"Stage {order}",
                    "approver_kind": kind,
                    "role": role,
                    "team_scoped": scoped,
                    "approvers": [self.people[n] for n in named],
                    "fallback_approvers": [self.people[n] for n in fallback],
                    "sla_hours": sla,
                    "reason_required": reason,
                }
                for order, (kind, role, scoped, named, fallback, sla, reason) in enumerate(self.route, start=1)
            )
        )
        for requester in REQUESTERS:
            self.requests.append(
                MailboxRequestFactory(
                    requester=self.people[requester],
                    team=self.team,
                    owner=self.people["rhian"],
                    backup_owner=self.people["xena"],
                )
            )
            self.model.append(ModelRequest(requester=requester))
        for index in range(submitted):
            self.submit(index)

    # --- the model's reading of the rules ----------------------------------------------------------

    def today(self) -> dt.date:
        return timezone.localdate(self.clock)

    def can_decide(self, name: str) -> bool:
        return bool(DECIDING_ROLES & set(PEOPLE[name][0]))

    def acting_for(self, name: str) -> list[str]:
        today = self.today()
        covering = name == "dev" and any(
            not d.cancelled and d.starts_on <= today <= d.ends_on for d in self.delegations
        )
        return [name, "olu"] if covering else [name]

    def approver_in_own_right(self, name: str, order: int, stage: ModelStage) -> bool:
        kind, role, scoped, named, fallback, _, _ = self.route[order]
        roles, relationship = PEOPLE[name]
        if stage.escalated and name in fallback:
            return True
        if kind == ApproverKind.TEAM_OWNER:
            return relationship == "owner"
        if kind == ApproverKind.NAMED:
            return name in named
        return Role(role) in roles and (not scoped or relationship in ("owner", "member"))

    def expected_eligibility(self, name: str, index: int, order: int) -> tuple[bool, str]:
        """Whether ``name`` may decide stage ``order`` of request ``index``, and for whom."""
        request = self.model[index]
        stage = request.stages[order]
        if not self.can_decide(name) or name == request.requester:
            return False, ""
        people = self.acting_for(name)
        if request.requester in people:
            return False, ""
        used = {
            person
            for other, s in enumerate(request.stages)
            if other != order and s.status == StageStatus.APPROVED
            for person in (s.decided_by, s.on_behalf_of)
            if person
        }
        if name in used:
            return False, ""
        if self.approver_in_own_right(name, order, stage):
            return True, ""
        for delegator in people[1:]:
            if delegator not in used and self.approver_in_own_right(delegator, order, stage):
                return True, delegator
        return False, ""

    def open_stage(self, stage: ModelStage, order: int) -> None:
        stage.status = StageStatus.WAITING
        stage.due_at = self.clock + dt.timedelta(hours=self.route[order][5])
        stage.escalated = False

    # --- rules -----------------------------------------------------------------------------------

    @rule(
        index=st.integers(0, 2),
        action=st.sampled_from(
            ["submit", "submit", "submit", "change answers", "change answers", "keep answers", "withdraw"]
        ),
    )
    def requester_acts(self, index: int, action: str) -> None:
        if action == "submit":
            self.submit(index)
        elif action == "withdraw":
            self.withdraw(index)
        else:
            self.change_answers(index, really_change=action == "change answers")

    def submit(self, index: int) -> None:
        request, model = self.requests[index], self.model[index]
        if model.status not in (RequestStatus.DRAFT, RequestStatus.RETURNED):
            with pytest.raises(InvalidStateError):
                mailbox_request_submit(actor=request.requester, request_id=request.pk)
            return
        mailbox_request_submit(actor=request.requester, request_id=request.pk)
        if not model.stages:
            model.stages = [ModelStage() for _ in self.route]
        else:
            for stage in model.stages:
                if not (stage.status == StageStatus.APPROVED and stage.approved_version == model.facts_version):
                    stage.__init__()
        model.status = RequestStatus.SUBMITTED
        order = next(order for order, stage in enumerate(model.stages) if stage.status != StageStatus.APPROVED)
        self.open_stage(model.stages[order], order)

    def waiting_stages(self) -> list[tuple[int, int]]:
        return [
            (index, order)
            for index, model in enumerate(self.model)
            for order, stage in enumerate(model.stages)
            if stage.status == StageStatus.WAITING
        ]

    @precondition(lambda self: self.waiting_stages())
    @rule(data=st.data(), outcome=OUTCOMES, with_reason=st.sampled_from([True, True, True, False]))
    def an_approver_decides(self, data, outcome: str, with_reason: bool) -> None:
        """Someone the model says may decide a waiting stage does (anyone, when nobody may)."""
        index, order = data.draw(st.sampled_from(self.waiting_stages()), label="stage")
        verdicts = {name: self.expected_eligibility(name, index, order) for name in sorted(PEOPLE)}
        # Stand-ins count twice, so decisions on someone's behalf come up often.
        eligible = [name for name, (may, on_behalf) in verdicts.items() if may for _ in range(2 if on_behalf else 1)]
        name = data.draw(st.sampled_from(eligible or sorted(PEOPLE)), label="decider")
        self.decide(index, order, name, outcome, with_reason)

    @precondition(lambda self: any(model.stages for model in self.model))
    @rule(data=st.data(), name=st.sampled_from(sorted(PEOPLE)), outcome=OUTCOMES, with_reason=st.booleans())
    def someone_tries_to_decide(self, data, name: str, outcome: str, with_reason: bool) -> None:
        """Anyone tries any stage of any submitted request: waiting, decided, pending or cancelled."""
        waiting = self.waiting_stages()
        if waiting and data.draw(st.booleans(), label="a waiting stage"):
            index, order = data.draw(st.sampled_from(waiting), label="stage")
        else:
            index = data.draw(st.sampled_from([i for i, m in enumerate(self.model) if m.stages]), label="request")
            order = data.draw(st.integers(0, len(self.model[index].stages) - 1), label="stage")
        self.decide(index, order, name, outcome, with_reason)

    def decide(self, index: int, order: int, name: str, outcome: str, with_reason: bool) -> None:
        model = self.model[index]
        stage = RequestStage.objects.get(request=self.requests[index], order=order + 1)
        modelled = model.stages[order]
        actor = self.people[name]
        reason = "Because of the retention period." if with_reason else ""
        may, on_behalf = (False, "")
        if modelled.status == StageStatus.WAITING:
            may, on_behalf = self.expected_eligibility(name, index, order)
            # The inbox and the single-stage check agree with the model, and with each other.
            assert decision_eligibility(actor, stage).allowed == may, (name, order, modelled)
            assert stages_awaiting(actor).filter(pk=stage.pk).exists() == may, (name, order)
        try:
            decision = approval_decide(actor=actor, stage_id=stage.pk, outcome=outcome, reason=reason)
        except InvalidStateError:
            assert modelled.status != StageStatus.WAITING
            return
        except PermissionDeniedError:
            assert modelled.status == StageStatus.WAITING and not may
            return
        except PortalError as error:
            needs_reason = outcome != DecisionOutcome.APPROVE or self.route[order][6]
            assert error.field == "reason" and may and needs_reason and not reason
            return
        assert modelled.status == StageStatus.WAITING and may, (name, order, modelled)
        assert decision.decided_by == actor
        assert (decision.on_behalf_of.username if decision.on_behalf_of else "") == on_behalf
        self.decisions_made += 1
        modelled.decided_by, modelled.on_behalf_of = name, on_behalf
        if outcome == DecisionOutcome.APPROVE:
            modelled.status = StageStatus.APPROVED
            modelled.approved_version = model.facts_version
            following = next(
                (o for o, s in enumerate(model.stages) if o > order and s.status != StageStatus.APPROVED), None
            )
            if following is None:
                model.status = RequestStatus.PROVISIONING
            else:
                self.open_stage(model.stages[following], following)
        elif outcome == DecisionOutcome.REJECT:
            modelled.status = StageStatus.REJECTED
            for later in model.stages[order + 1 :]:
                later.status = StageStatus.CANCELLED
            model.status = RequestStatus.REJECTED
        else:
            modelled.status = StageStatus.RETURNED
            model.status = RequestStatus.RETURNED

    def change_answers(self, index: int, really_change: bool) -> None:
        request, model = self.requests[index], self.model[index]
        justification = (
            f"Version {model.facts_version + 1} of why the team needs it."
            if really_change
            else MailboxRequest.objects.get(pk=request.pk).justification
        )
        if model.status not in (RequestStatus.DRAFT, RequestStatus.RETURNED):
            with pytest.raises(InvalidStateError):
                mailbox_request_update(
                    actor=request.requester, request_id=request.pk, changes={"justification": justification}
                )
            return
        mailbox_request_update(actor=request.requester, request_id=request.pk, changes={"justification": justification})
        if really_change:
            model.facts_version += 1

    def withdraw(self, index: int) -> None:
        request, model = self.requests[index], self.model[index]
        if model.status not in (RequestStatus.DRAFT, RequestStatus.SUBMITTED, RequestStatus.RETURNED):
            with pytest.raises(InvalidStateError):
                mailbox_request_withdraw(actor=request.requester, request_id=request.pk)
            return
        mailbox_request_withdraw(actor=request.requester, request_id=request.pk)
        model.status = RequestStatus.WITHDRAWN
        for stage in model.stages:
            if stage.status in (StageStatus.WAITING, StageStatus.PENDING):
                stage.status = StageStatus.CANCELLED

    @rule(hours=st.sampled_from([1, 6, 20, 30, 60]))
    def time_passes(self, hours: int) -> None:
        """The fake clock moves on and the escalation job runs (twice: it escalates once)."""
        self.clock += dt.timedelta(hours=hours)
        due = [
            stage
            for model in self.model
            for stage in model.stages
            if stage.status == StageStatus.WAITING and not stage.escalated and stage.due_at < self.clock
        ]
        assert approval_stages_escalate_overdue() == len(due)
        for stage in due:
            stage.escalated = True
        assert approval_stages_escalate_overdue() == 0  # once only

    @rule(action=st.sampled_from(["cover from today", "cover from the day after tomorrow", "cancel cover"]))
    def out_of_office(self, action: str) -> None:
        """Olu arranges or cancels cover by Dev."""
        if action == "cancel cover":
            current = [d for d in self.delegations if not d.cancelled and d.ends_on >= self.today()]
            if current:
                delegation_cancel(actor=self.people["olu"], delegation_id=current[0].pk)
                current[0].cancelled = True
            return
        starts_on = self.today() + dt.timedelta(days=0 if action == "cover from today" else 2)
        ends_on = starts_on + dt.timedelta(days=1)
        overlaps = any(not d.cancelled and d.starts_on <= ends_on and d.ends_on >= starts_on for d in self.delegations)
        if overlaps:
            with pytest.raises(PortalError, match="You already have cover"):
                delegation_create(
                    actor=self.people["olu"], delegate=self.people["dev"], starts_on=starts_on, ends_on=ends_on
                )
            return
        created = delegation_create(
            actor=self.people["olu"], delegate=self.people["dev"], starts_on=starts_on, ends_on=ends_on
        )
        self.delegations.append(ModelDelegation(created.pk, starts_on, ends_on))

    # --- invariants ------------------------------------------------------------------------------

    @invariant()
    def the_rules_hold(self) -> None:
        """Everything read in a handful of queries, then each promise checked against it."""
        if not self.requests:
            return
        ids = [request.pk for request in self.requests]
        requests = {r.pk: r for r in MailboxRequest.objects.filter(pk__in=ids).prefetch_related("members")}
        stages: dict[int, list[RequestStage]] = {pk: [] for pk in ids}
        for stage in RequestStage.objects.filter(request_id__in=ids).order_by("order"):
            stages[stage.request_id].append(stage)
        decisions = list(Decision.objects.filter(request_id__in=ids))
        runs = list(ProvisioningRun.objects.filter(request_id__in=ids).values_list("request_id", flat=True))
        for index, pk in enumerate(ids):
            request, route = requests[pk], stages[pk]
            own_decisions = [d for d in decisions if d.request_id == pk]
            self.check_model(self.model[index], request, route)
            self.check_status_agrees_with_stages(request, route, runs.count(pk))
            self.check_separation_of_duties(request, route, own_decisions)
            self.check_terminal_states_stay(request)
        assert len(decisions) == self.decisions_made
        self.check_delegations_never_overlap()

    def check_model(self, model: ModelRequest, request: MailboxRequest, route: list[RequestStage]) -> None:
        assert request.status == model.status, request.reference
        assert [s.status for s in route] == [m.status for m in model.stages], request.reference
        for stage, modelled in zip(route, model.stages, strict=True):
            if stage.status == StageStatus.WAITING:
                assert stage.due_at == modelled.due_at
                assert stage.due_at == stage.waiting_since + dt.timedelta(hours=stage.sla_hours)
                assert (stage.escalated_at is not None) == modelled.escalated
            if stage.escalated_at is not None:
                assert stage.due_at < stage.escalated_at
            if stage.status == StageStatus.APPROVED:
                assert stage.decided_by_id == self.people[modelled.decided_by].pk

    def check_status_agrees_with_stages(self, request: MailboxRequest, route: list[RequestStage], runs: int) -> None:
        statuses = [stage.status for stage in route]
        waiting = statuses.count(StageStatus.WAITING)
        if request.status == RequestStatus.DRAFT:
            assert statuses == []
        elif request.status == RequestStatus.SUBMITTED:
            assert waiting == 1
            at = statuses.index(StageStatus.WAITING)
            assert set(statuses[:at]) <= {StageStatus.APPROVED}
            assert set(statuses[at + 1 :]) <= {StageStatus.PENDING}
            facts = request.facts_hash()
            assert all(s.approved_facts_hash == facts for s in route if s.status == StageStatus.APPROVED)
        else:
            assert waiting == 0
        if request.status == RequestStatus.RETURNED:
            at = statuses.index(StageStatus.RETURNED)
            assert statuses.count(StageStatus.RETURNED) == 1
            assert set(statuses[:at]) <= {StageStatus.APPROVED}
            assert set(statuses[at + 1 :]) <= {StageStatus.PENDING}
        if request.status == RequestStatus.REJECTED:
            at = statuses.index(StageStatus.REJECTED)
            assert set(statuses[:at]) <= {StageStatus.APPROVED}
            assert set(statuses[at + 1 :]) <= {StageStatus.CANCELLED}
        if request.status == RequestStatus.WITHDRAWN:
            assert StageStatus.PENDING not in statuses
        if request.status == RequestStatus.PROVISIONING:
            assert set(statuses) == {StageStatus.APPROVED}
        # One provisioning run, only once every stage approved.
        assert runs == (1 if request.status == RequestStatus.PROVISIONING else 0)

    def check_separation_of_duties(
        self, request: MailboxRequest, route: list[RequestStage], decisions: list[Decision]
    ) -> None:
        for decision in decisions:
            assert request.requester_id not in (decision.decided_by_id, decision.on_behalf_of_id)
        authorities = []
        for stage in route:
            if stage.status == StageStatus.APPROVED:
                # Nothing is decided on an approved stage, so its latest decision is its approval.
                current = max((d for d in decisions if d.stage_id == stage.pk), key=lambda d: d.pk)
                assert current.outcome == DecisionOutcome.APPROVE and current.decided_at == stage.decided_at
                authorities.append({current.decided_by_id, current.on_behalf_of_id} - {None})
        for first, one in enumerate(authorities):
            for other in authorities[first + 1 :]:
                assert not one & other, f"one person approved two stages of {request.reference}"

    def check_terminal_states_stay(self, request: MailboxRequest) -> None:
        if request.pk in self.seen_terminal:
            assert request.status == self.seen_terminal[request.pk]
        elif request.status in TERMINAL:
            self.seen_terminal[request.pk] = request.status

    def check_delegations_never_overlap(self) -> None:
        active = sorted(
            Delegation.objects.filter(delegator=self.people["olu"], cancelled_at__isnull=True).values_list(
                "starts_on", "ends_on"
            )
        )
        for (_, end), (start, _) in itertools.pairwise(active):
            assert end < start


@pytest.mark.django_db
def test_random_journeys_never_reach_a_state_the_rules_forbid():
    ApprovalRouteMachine.people, ApprovalRouteMachine.team = people_and_team()
    run_state_machine_as_test(
        ApprovalRouteMachine,
        settings=settings(
            max_examples=20,
            stateful_step_count=25,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
