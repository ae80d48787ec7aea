"""The approval route of a request: stages, decisions, delegation, escalation, and the route's configuration.

Lock order, everywhere: the request row, then its stage rows. Every function that changes
a request's route locks the request first, so two approvers deciding the same stage at the
same moment are serialised and the second finds the stage already decided. Configuration
changes lock the configured stages; delegation changes lock the delegator's user row.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from django.db import transaction
from django.db.models import Max
from django.utils import formats, timezone

from onboarding.models import (
    ApprovalStage,
    ApproverKind,
    Decision,
    DecisionOutcome,
    Delegation,
    MailboxRequest,
    NotificationEvent,
    RequestStage,
    RequestStatus,
    StageStatus,
)
from onboarding.selectors.approvals import (
    can_decide_approvals,
    decision_eligibility,
    stage_closed_message,
    stage_decision_recipients,
    stage_fallback_recipients,
)
from onboarding.services import provisioning
from onboarding.services.notifications import notify
from portal.accounts.models import User
from portal.accounts.roles import ROLE_PERMISSIONS, Role
from portal.audit.models import Outcome
from portal.audit.services import audit_record
from portal.exceptions import ConfigurationError, InvalidStateError, PermissionDeniedError, PortalError

REASON_MAX_LENGTH = 2000
STAGE_NAME_MAX_LENGTH = 100
SLA_MAX_HOURS = 24 * 90
DELEGATION_MAX_DAYS = 366
# Roles whose holders can decide approvals: the only roles a stage can be given.
DECIDING_ROLES: tuple[Role, ...] = tuple(
    role for role, codenames in ROLE_PERMISSIONS.items() if "decide_approvals" in codenames
)


# --- audit snapshots -----------------------------------------------------------------------------


def _stage_state(stage: RequestStage) -> dict[str, Any]:
    return {
        "status": stage.status,
        "waiting_since": stage.waiting_since,
        "due_at": stage.due_at,
        "escalated_at": stage.escalated_at,
        "decided_by": stage.decided_by_id,
        "decided_at": stage.decided_at,
        "reason": stage.reason,
        "approved_facts_hash": stage.approved_facts_hash,
    }


def _route_state(stages: Iterable[RequestStage]) -> list[dict[str, Any]]:
    return [{"stage": stage.pk, "order": stage.order, "name": stage.name, "status": stage.status} for stage in stages]


def _lock_request(request_id: int) -> MailboxRequest:
    return MailboxRequest.objects.select_for_update().get(pk=request_id)


def _set_request_status(request: MailboxRequest, *, status: str, actor: User | None, now: dt.datetime) -> None:
    before = {"status": request.status, "decided_at": request.decided_at}
    request.status = status
    request.updated_at = now
    fields = ["status", "updated_at"]
    if status in (RequestStatus.REJECTED, RequestStatus.PROVISIONING):
        request.decided_at = now
        fields.append("decided_at")
    request.save(update_fields=fields)
    audit_record(
        actor=actor,
        action="mailbox_request.status_changed",
        object_type="mailbox_request",
        object_id=request.pk,
        before=before,
        after={"status": request.status, "decided_at": request.decided_at},
    )


# --- the route -----------------------------------------------------------------------------------


def _route_snapshot(request: MailboxRequest) -> list[RequestStage]:
    configured = list(
        ApprovalStage.objects.filter(is_active=True)
        .prefetch_related("approvers", "fallback_approvers")
        .order_by("order")
    )
    if not configured:
        raise ConfigurationError("No approval stages are set up, so the request cannot be submitted yet.")
    stages = []
    for position, source in enumerate(configured, start=1):
        stage = RequestStage.objects.create(
            request=request,
            stage=source,
            order=position,
            name=source.name,
            approver_kind=source.approver_kind,
            role=source.role,
            team_scoped=source.team_scoped,
            sla_hours=source.sla_hours,
            reason_required=source.reason_required,
        )
        stage.approvers.set(source.approvers.all())
        stage.fallback_approvers.set(source.fallback_approvers.all())
        stages.append(stage)
    return stages


def _stage_reset(stage: RequestStage) -> None:
    stage.status = StageStatus.PENDING
    stage.waiting_since = None
    stage.due_at = None
    stage.escalated_at = None
    stage.decided_by = None
    stage.decided_at = None
    stage.reason = ""
    stage.approved_facts_hash = ""
    stage.save(
        update_fields=[
            "status",
            "waiting_since",
            "due_at",
            "escalated_at",
            "decided_by",
            "decided_at",
            "reason",
            "approved_facts_hash",
        ]
    )


def _stage_open(stage: RequestStage, *, actor: User | None, now: dt.datetime) -> None:
    """The stage starts waiting for a decision; its approvers (and their stand-ins) are told."""
    before = _stage_state(stage)
    stage.status = StageStatus.WAITING
    stage.waiting_since = now
    stage.due_at = now + dt.timedelta(hours=stage.sla_hours)
    stage.escalated_at = None
    stage.save(update_fields=["status", "waiting_since", "due_at", "escalated_at"])
    audit_record(
        actor=actor,
        action="approval.stage_opened",
        object_type="request_stage",
        object_id=stage.pk,
        before=before,
        after=_stage_state(stage),
    )
    notify(
        request=stage.request,
        event=NotificationEvent.DECISION_NEEDED,
        recipients=stage_decision_recipients(stage, now=now),
        context={"stage": stage.name, "due_at": stage.due_at.isoformat()},
    )


def approval_route_start(*, request: MailboxRequest, actor: User) -> None:
    """Called by submission inside its transaction, with ``request`` locked and just set to SUBMITTED.

    First submission: snapshot the active configured stages into RequestStages. Resubmission
    after a return: keep approved stages whose ``approved_facts_hash`` equals the request's
    current ``facts_hash()``, reset the others to PENDING. Then the first stage not approved
    becomes WAITING (waiting_since, due_at from its SLA) and its approvers are notified.
    """
    with transaction.atomic():
        _lock_request(request.pk)  # already held by the caller; taken again so the lock order holds regardless
        if request.status != RequestStatus.SUBMITTED:
            raise InvalidStateError("The request must be submitted before its approval route starts.")
        now = timezone.now()
        stages = list(request.stages.select_for_update().order_by("order"))
        if any(stage.status == StageStatus.WAITING for stage in stages):
            raise InvalidStateError("This request is already waiting for a decision.")
        if not stages:
            stages = _route_snapshot(request)
            audit_record(
                actor=actor,
                action="approval.route_started",
                object_type="mailbox_request",
                object_id=request.pk,
                after={"stages": _route_state(stages)},
            )
        else:
            before = _route_state(stages)
            facts_hash = request.facts_hash()
            kept = []
            for stage in stages:
                if stage.status == StageStatus.APPROVED and stage.approved_facts_hash == facts_hash:
                    kept.append(stage.pk)
                else:
                    _stage_reset(stage)
            audit_record(
                actor=actor,
                action="approval.route_restarted",
                object_type="mailbox_request",
                object_id=request.pk,
                before={"stages": before},
                after={"stages": _route_state(stages), "approvals_kept": kept},
                reason="Resubmitted after a return; approvals of changed facts are reset.",
            )
        first = next((stage for stage in stages if stage.status != StageStatus.APPROVED), None)
        if first is None:
            # Every return leaves its own stage RETURNED, so a resubmission always has one to decide.
            raise InvalidStateError("Every stage of this request is already approved.")
        _stage_open(first, actor=actor, now=now)


def approval_route_cancel(*, request: MailboxRequest, actor: User) -> None:
    """Called by withdrawal inside its transaction: waiting and pending stages become CANCELLED.

    The people the waiting stage was waiting for are told it was withdrawn.
    """
    with transaction.atomic():
        _lock_request(request.pk)
        now = timezone.now()
        stages = list(
            request.stages.select_for_update()
            .filter(status__in=[StageStatus.WAITING, StageStatus.PENDING])
            .order_by("order")
        )
        if not stages:
            return
        waiting = [stage for stage in stages if stage.status == StageStatus.WAITING]
        recipients = stage_decision_recipients(waiting[0], now=now) if waiting else []
        before = _route_state(stages)
        for stage in stages:
            stage.status = StageStatus.CANCELLED
            stage.save(update_fields=["status"])
        audit_record(
            actor=actor,
            action="approval.route_cancelled",
            object_type="mailbox_request",
            object_id=request.pk,
            before={"stages": before},
            after={"stages": _route_state(stages)},
        )
        if waiting:
            notify(
                request=request,
                event=NotificationEvent.WITHDRAWN,
                recipients=recipients,
                context={"stage": waiting[0].name},
            )


# --- decisions -----------------------------------------------------------------------------------


def _check_reason(stage: RequestStage, outcome: DecisionOutcome, reason: str) -> None:
    if outcome == DecisionOutcome.REJECT and not reason:
        raise PortalError("Enter why you are rejecting the request", field="reason")
    if outcome == DecisionOutcome.RETURN and not reason:
        raise PortalError("Enter what the requester needs to add or change", field="reason")
    if outcome == DecisionOutcome.APPROVE and stage.reason_required and not reason:
        raise PortalError("Enter why you are approving the request", field="reason")


def approval_decide(*, actor: User, stage_id: int, outcome: str, reason: str = "") -> Decision:
    """Approve, reject (reason required) or return (reason required) a waiting stage.

    Raises InvalidStateError when the stage is no longer waiting (for the slower of two
    approvers: "This stage was decided by … a moment ago"), PermissionDeniedError when the
    actor may not decide it (recorded in the audit trail as denied), and PortalError with
    ``field="reason"`` when a reason is missing or too long.
    """
    if outcome not in DecisionOutcome.values:
        raise PortalError("Select whether to approve, reject or return the request", field="outcome")
    decided = DecisionOutcome(outcome)
    reason = (reason or "").strip()
    if len(reason) > REASON_MAX_LENGTH:
        raise PortalError(f"The reason must be {REASON_MAX_LENGTH:,} characters or fewer", field="reason")
    try:
        with transaction.atomic():
            request_id = RequestStage.objects.filter(pk=stage_id).values_list("request_id", flat=True).first()
            if request_id is None:
                raise InvalidStateError("This stage does not exist.")
            request = _lock_request(request_id)
            stage = RequestStage.objects.select_for_update().get(pk=stage_id)
            stage.request = request
            now = timezone.now()
            if stage.status != StageStatus.WAITING or request.status != RequestStatus.SUBMITTED:
                raise InvalidStateError(stage_closed_message(stage, now=now))
            eligibility = decision_eligibility(actor, stage, now=now)
            if not eligibility.allowed:
                raise PermissionDeniedError(eligibility.reason)
            _check_reason(stage, decided, reason)
            return _decision_record(
                request=request,
                stage=stage,
                actor=actor,
                on_behalf_of=eligibility.on_behalf_of,
                outcome=decided,
                reason=reason,
                now=now,
            )
    except PermissionDeniedError as refusal:
        audit_record(
            actor=actor,
            action="approval.decision_refused",
            object_type="request_stage",
            object_id=stage_id,
            after={"outcome": decided.value},
            outcome=Outcome.DENIED,
            reason=refusal.message,
        )
        raise


def _decision_record(
    *,
    request: MailboxRequest,
    stage: RequestStage,
    actor: User,
    on_behalf_of: User | None,
    outcome: DecisionOutcome,
    reason: str,
    now: dt.datetime,
) -> Decision:
    before = _stage_state(stage)
    stage.status = {
        DecisionOutcome.APPROVE: StageStatus.APPROVED,
        DecisionOutcome.REJECT: StageStatus.REJECTED,
        DecisionOutcome.RETURN: StageStatus.RETURNED,
    }[outcome]
    stage.decided_by = actor
    stage.decided_at = now
    stage.reason = reason
    stage.approved_facts_hash = request.facts_hash() if outcome == DecisionOutcome.APPROVE else ""
    stage.save(update_fields=["status", "decided_by", "decided_at", "reason", "approved_facts_hash"])
    decision = Decision.objects.create(
        request=request,
        stage=stage,
        decided_by=actor,
        on_behalf_of=on_behalf_of,
        outcome=outcome,
        reason=reason,
        decided_at=now,
    )
    audit_record(
        actor=actor,
        action="approval.decided",
        object_type="request_stage",
        object_id=stage.pk,
        before=before,
        after={
            **_stage_state(stage),
            "decision": decision.pk,
            "outcome": outcome.value,
            "on_behalf_of": on_behalf_of.pk if on_behalf_of else None,
        },
        reason=reason,
    )
    context = {"stage": stage.name, "reason": reason}
    if outcome == DecisionOutcome.APPROVE:
        notify(request=request, event=NotificationEvent.APPROVED, recipients=[request.requester], context=context)
        following = (
            request.stages.select_for_update()
            .filter(order__gt=stage.order)
            .exclude(status=StageStatus.APPROVED)
            .order_by("order")
            .first()
        )
        if following is not None:
            following.request = request
            _stage_open(following, actor=actor, now=now)
        else:
            _set_request_status(request, status=RequestStatus.PROVISIONING, actor=actor, now=now)
            provisioning.provisioning_start(request=request, actor=actor)
    elif outcome == DecisionOutcome.REJECT:
        later = list(
            request.stages.select_for_update()
            .filter(order__gt=stage.order, status__in=[StageStatus.PENDING, StageStatus.WAITING])
            .order_by("order")
        )
        if later:
            before_later = _route_state(later)
            for other in later:
                other.status = StageStatus.CANCELLED
                other.save(update_fields=["status"])
            audit_record(
                actor=actor,
                action="approval.route_cancelled",
                object_type="mailbox_request",
                object_id=request.pk,
                before={"stages": before_later},
                after={"stages": _route_state(later)},
                reason="The request was rejected.",
            )
        _set_request_status(request, status=RequestStatus.REJECTED, actor=actor, now=now)
        notify(request=request, event=NotificationEvent.REJECTED, recipients=[request.requester], context=context)
    else:
        _set_request_status(request, status=RequestStatus.RETURNED, actor=actor, now=now)
        notify(request=request, event=NotificationEvent.RETURNED, recipients=[request.requester], context=context)
    return decision


# --- escalation ----------------------------------------------------------------------------------


def approval_stages_escalate_overdue(*, now: dt.datetime | None = None) -> int:
    """Mark waiting stages past their due time as escalated and notify their fallback approvers.

    Each stage escalates once: the check is repeated under the row locks, so overlapping runs
    (a duplicated job, two workers) escalate and notify nothing twice. Returns how many stages
    this run escalated.
    """
    now = now or timezone.now()
    overdue = list(
        RequestStage.objects.filter(status=StageStatus.WAITING, escalated_at__isnull=True, due_at__lt=now)
        .order_by("due_at", "pk")
        .values_list("pk", "request_id")
    )
    return sum(1 for stage_id, request_id in overdue if _stage_escalate(stage_id, request_id, now=now))


def _stage_escalate(stage_id: int, request_id: int, *, now: dt.datetime) -> bool:
    with transaction.atomic():
        request = _lock_request(request_id)
        stage = RequestStage.objects.select_for_update().filter(pk=stage_id).first()
        if (
            stage is None
            or stage.status != StageStatus.WAITING
            or stage.escalated_at is not None
            or stage.due_at is None
            or stage.due_at >= now
        ):
            return False
        stage.request = request
        before = _stage_state(stage)
        stage.escalated_at = now
        stage.save(update_fields=["escalated_at"])
        # Recorded against the request, so the requester's timeline can show it.
        audit_record(
            actor=None,
            action="approval.stage_escalated",
            object_type="mailbox_request",
            object_id=request.pk,
            before={"stage": stage.pk, **before},
            after={"stage": stage.pk, **_stage_state(stage)},
            reason=f"The {stage.name} decision is overdue; its fallback approvers may now decide.",
        )
        notify(
            request=request,
            event=NotificationEvent.ESCALATED,
            recipients=stage_fallback_recipients(stage, now=now),
            context={"stage": stage.name},
        )
    return True


# --- out of office -------------------------------------------------------------------------------


def _delegation_state(delegation: Delegation) -> dict[str, Any]:
    return {
        "delegator": delegation.delegator_id,
        "delegate": delegation.delegate_id,
        "starts_on": delegation.starts_on,
        "ends_on": delegation.ends_on,
        "cancelled_at": delegation.cancelled_at,
    }


def delegation_create(*, actor: User, delegate: User, starts_on: dt.date, ends_on: dt.date) -> Delegation:
    """Out-of-office: let ``delegate`` decide for ``actor`` between the dates (inclusive).

    One person has at most one active delegation on any day; it cannot be to themselves or
    to someone who cannot decide approvals, and cannot start in the past.
    """
    if not can_decide_approvals(actor):
        raise PermissionDeniedError("Only people who decide approvals can arrange out of office cover.")
    if delegate.pk == actor.pk:
        raise PortalError("Choose someone other than yourself", field="delegate")
    if not can_decide_approvals(delegate):
        raise PortalError(f"{delegate.display_name} cannot decide approvals. Choose someone who can", field="delegate")
    today = timezone.localdate()
    if starts_on < today:
        raise PortalError("The start date must be today or in the future", field="starts_on")
    if ends_on < starts_on:
        raise PortalError("The end date must be the same as or after the start date", field="ends_on")
    if (ends_on - starts_on).days >= DELEGATION_MAX_DAYS:
        raise PortalError("Out of office cover can last at most a year", field="ends_on")
    with transaction.atomic():
        # One delegation change per person at a time, so two overlapping requests cannot both pass the check.
        User.objects.select_for_update().filter(pk=actor.pk).values_list("pk").get()
        overlapping = (
            Delegation.objects.filter(
                delegator=actor, cancelled_at__isnull=True, starts_on__lte=ends_on, ends_on__gte=starts_on
            )
            .order_by("starts_on")
            .first()
        )
        if overlapping is not None:
            raise PortalError(
                f"You already have cover from {_date(overlapping.starts_on)} to {_date(overlapping.ends_on)}. "
                "Choose dates that do not overlap, or cancel that cover first",
                field="starts_on",
            )
        delegation = Delegation.objects.create(
            delegator=actor, delegate=delegate, starts_on=starts_on, ends_on=ends_on, created_at=timezone.now()
        )
        audit_record(
            actor=actor,
            action="approval.delegation_created",
            object_type="delegation",
            object_id=delegation.pk,
            after=_delegation_state(delegation),
        )
    return delegation


def delegation_cancel(*, actor: User, delegation_id: int) -> Delegation:
    """The delegator ends their out-of-office cover early (or before it starts)."""
    with transaction.atomic():
        User.objects.select_for_update().filter(pk=actor.pk).values_list("pk").get()
        delegation = Delegation.objects.select_for_update().filter(pk=delegation_id, delegator=actor).first()
        if delegation is None:
            raise PermissionDeniedError("This out of office cover is not yours to cancel.")
        if delegation.cancelled_at is not None:
            raise InvalidStateError("This out of office cover was already cancelled.")
        if delegation.ends_on < timezone.localdate():
            raise InvalidStateError("This out of office cover has already ended.")
        before = _delegation_state(delegation)
        delegation.cancelled_at = timezone.now()
        delegation.save(update_fields=["cancelled_at"])
        audit_record(
            actor=actor,
            action="approval.delegation_cancelled",
            object_type="delegation",
            object_id=delegation.pk,
            before=before,
            after=_delegation_state(delegation),
        )
    return delegation


def _date(value: dt.date) -> str:
    return formats.date_format(value, "j F Y")


# --- configuring the route -----------------------------------------------------------------------


def _config_state(stage: ApprovalStage) -> dict[str, Any]:
    return {
        "order": stage.order,
        "name": stage.name,
        "approver_kind": stage.approver_kind,
        "role": stage.role,
        "team_scoped": stage.team_scoped,
        "approvers": sorted(person.email.lower() for person in stage.approvers.all()),
        "fallback_approvers": sorted(person.email.lower() for person in stage.fallback_approvers.all()),
        "sla_hours": stage.sla_hours,
        "reason_required": stage.reason_required,
        "is_active": stage.is_active,
    }


def _lock_configuration() -> list[ApprovalStage]:
    """Every configured stage, locked: configuration changes happen one at a time."""
    return list(ApprovalStage.objects.select_for_update().order_by("order"))


def _require_admin(actor: User) -> None:
    if not actor.is_active or not actor.has_perm("accounts.administer_platform"):
        raise PermissionDeniedError("Only platform admins can change the approval stages.")


def _clean_settings(
    *,
    name: str,
    approver_kind: str,
    role: str,
    team_scoped: bool,
    approvers: Iterable[User],
    fallback_approvers: Iterable[User],
    sla_hours: int,
    reason_required: bool,
) -> dict[str, Any]:
    name = (name or "").strip()
    if not name:
        raise PortalError("Enter the stage name", field="name")
    if len(name) > STAGE_NAME_MAX_LENGTH:
        raise PortalError(f"The stage name must be {STAGE_NAME_MAX_LENGTH} characters or fewer", field="name")
    if approver_kind not in ApproverKind.values:
        raise PortalError("Select who decides this stage", field="approver_kind")
    named = list(dict.fromkeys(approvers))
    fallback = list(dict.fromkeys(fallback_approvers))
    if approver_kind == ApproverKind.ROLE:
        if role not in [deciding.value for deciding in DECIDING_ROLES]:
            raise PortalError("Select a role whose holders can decide approvals", field="role")
    else:
        role, team_scoped = "", False
    if approver_kind == ApproverKind.NAMED:
        if not named:
            raise PortalError("Enter the email address of at least one approver", field="approvers")
    else:
        named = []
    for field, people in (("approvers", named), ("fallback_approvers", fallback)):
        for person in people:
            if not can_decide_approvals(person):
                raise PortalError(
                    f"{person.email} cannot decide approvals. Give them the Approver role first", field=field
                )
    if not 1 <= int(sla_hours) <= SLA_MAX_HOURS:
        raise PortalError(f"The time to decide must be between 1 and {SLA_MAX_HOURS} hours", field="sla_hours")
    return {
        "name": name,
        "approver_kind": approver_kind,
        "role": role,
        "team_scoped": bool(team_scoped),
        "sla_hours": int(sla_hours),
        "reason_required": bool(reason_required),
        "approvers": named,
        "fallback_approvers": fallback,
    }


def _apply_settings(stage: ApprovalStage, values: dict[str, Any]) -> None:
    for field in ("name", "approver_kind", "role", "team_scoped", "sla_hours", "reason_required"):
        setattr(stage, field, values[field])


def approval_stage_create(
    *,
    actor: User,
    name: str,
    approver_kind: str,
    role: str = "",
    team_scoped: bool = False,
    approvers: Iterable[User] = (),
    fallback_approvers: Iterable[User] = (),
    sla_hours: int = 48,
    reason_required: bool = False,
) -> ApprovalStage:
    """Add a stage at the end of the route. Requests already submitted keep the route they had."""
    _require_admin(actor)
    values = _clean_settings(
        name=name,
        approver_kind=approver_kind,
        role=role,
        team_scoped=team_scoped,
        approvers=approvers,
        fallback_approvers=fallback_approvers,
        sla_hours=sla_hours,
        reason_required=reason_required,
    )
    with transaction.atomic():
        _lock_configuration()
        last = ApprovalStage.objects.aggregate(last=Max("order"))["last"] or 0
        stage = ApprovalStage(order=last + 1, is_active=True)
        _apply_settings(stage, values)
        stage.save()
        stage.approvers.set(values["approvers"])
        stage.fallback_approvers.set(values["fallback_approvers"])
        audit_record(
            actor=actor,
            action="approval_stage.created",
            object_type="approval_stage",
            object_id=stage.pk,
            after=_config_state(stage),
        )
    return stage


def approval_stage_update(
    *,
    actor: User,
    stage_id: int,
    name: str,
    approver_kind: str,
    role: str = "",
    team_scoped: bool = False,
    approvers: Iterable[User] = (),
    fallback_approvers: Iterable[User] = (),
    sla_hours: int = 48,
    reason_required: bool = False,
) -> ApprovalStage:
    """Change a configured stage; audited with before and after."""
    _require_admin(actor)
    values = _clean_settings(
        name=name,
        approver_kind=approver_kind,
        role=role,
        team_scoped=team_scoped,
        approvers=approvers,
        fallback_approvers=fallback_approvers,
        sla_hours=sla_hours,
        reason_required=reason_required,
    )
    with transaction.atomic():
        stages = {stage.pk: stage for stage in _lock_configuration()}
        stage = stages.get(stage_id)
        if stage is None:
            raise InvalidStateError("This approval stage no longer exists.")
        before = _config_state(stage)
        _apply_settings(stage, values)
        stage.save(update_fields=["name", "approver_kind", "role", "team_scoped", "sla_hours", "reason_required"])
        stage.approvers.set(values["approvers"])
        stage.fallback_approvers.set(values["fallback_approvers"])
        after = _config_state(stage)
        if after != before:
            audit_record(
                actor=actor,
                action="approval_stage.updated",
                object_type="approval_stage",
                object_id=stage.pk,
                before=before,
                after=after,
            )
    return stage


def approval_stage_move(*, actor: User, stage_id: int, direction: str) -> ApprovalStage:
    """Swap a stage with the one before (``up``) or after (``down``) it."""
    _require_admin(actor)
    if direction not in ("up", "down"):
        raise PortalError("Choose whether to move the stage up or down")
    with transaction.atomic():
        stages = _lock_configuration()
        position = next((index for index, stage in enumerate(stages) if stage.pk == stage_id), None)
        if position is None:
            raise InvalidStateError("This approval stage no longer exists.")
        other_position = position - 1 if direction == "up" else position + 1
        if not 0 <= other_position < len(stages):
            raise InvalidStateError(f"This stage is already {'first' if direction == 'up' else 'last'}.")
        stage, other = stages[position], stages[other_position]
        before = [{"stage": s.pk, "order": s.order} for s in (stage, other)]
        # ``order`` is unique, so the swap goes through a free number.
        stage_order, other_order = stage.order, other.order
        stage.order = stages[-1].order + 1
        stage.save(update_fields=["order"])
        other.order = stage_order
        other.save(update_fields=["order"])
        stage.order = other_order
        stage.save(update_fields=["order"])
        audit_record(
            actor=actor,
            action="approval_stage.moved",
            object_type="approval_stage",
            object_id=stage.pk,
            before=before,
            after=[{"stage": s.pk, "order": s.order} for s in (stage, other)],
        )
    return stage


def _stage_set_active(*, actor: User, stage_id: int, active: bool) -> ApprovalStage:
    _require_admin(actor)
    with transaction.atomic():
        stages = _lock_configuration()
        stage = next((candidate for candidate in stages if candidate.pk == stage_id), None)
        if stage is None:
            raise InvalidStateError("This approval stage no longer exists.")
        if stage.is_active == active:
            raise InvalidStateError(f"This stage is already {'active' if active else 'inactive'}.")
        if not active and sum(1 for candidate in stages if candidate.is_active) <= 1:
            raise InvalidStateError("At least one stage must stay active, so this stage cannot be deactivated.")
        before = _config_state(stage)
        stage.is_active = active
        stage.save(update_fields=["is_active"])
        audit_record(
            actor=actor,
            action="approval_stage.activated" if active else "approval_stage.deactivated",
            object_type="approval_stage",
            object_id=stage.pk,
            before=before,
            after=_config_state(stage),
        )
    return stage


def approval_stage_deactivate(*, actor: User, stage_id: int) -> ApprovalStage:
    """Take a stage out of the route for requests submitted from now on; one active stage must remain."""
    return _stage_set_active(actor=actor, stage_id=stage_id, active=False)


def approval_stage_activate(*, actor: User, stage_id: int) -> ApprovalStage:
    """Put a deactivated stage back into the route for requests submitted from now on."""
    return _stage_set_active(actor=actor, stage_id=stage_id, active=True)
