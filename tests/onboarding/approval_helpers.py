"""Shared set-up for the approval tests: a configured route, people around a team, submission.

Requests are submitted, changed and withdrawn through the requester journey's own services
(``mailbox_request_submit``, ``mailbox_request_update``, ``mailbox_request_withdraw``), which
call the approval route. ``submit_directly`` is plain test set-up for the one case those
services rightly refuse (a request with no team): it does exactly what submission promises the
route — lock, SUBMITTED, ``approval_route_start`` in one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.utils import timezone

from onboarding.models import (
    ApprovalStage,
    ApproverKind,
    MailboxRequest,
    RequestStage,
    RequestStatus,
    StageStatus,
)
from onboarding.services.approvals import approval_route_start
from onboarding.services.mailbox_requests import (
    mailbox_request_submit,
    mailbox_request_update,
    mailbox_request_withdraw,
)
from portal.accounts.models import Team, User
from portal.accounts.roles import Role
from tests.factories import UserFactory
from tests.onboarding.factories import MailboxRequestFactory, TeamFactory


def configure_route(*stages: dict[str, Any]) -> list[ApprovalStage]:
    """Replace the configured route with ``stages`` (dicts of ApprovalStage fields), in order."""
    ApprovalStage.objects.all().delete()
    created = []
    for order, spec in enumerate(stages, start=1):
        spec = dict(spec)
        approvers = spec.pop("approvers", [])
        fallback = spec.pop("fallback_approvers", [])
        stage = ApprovalStage.objects.create(order=order, **{"sla_hours": 48, **spec})
        stage.approvers.set(approvers)
        stage.fallback_approvers.set(fallback)
        created.append(stage)
    return created


def owner_stage(**extra: Any) -> dict[str, Any]:
    return {"name": "Business owner", "approver_kind": ApproverKind.TEAM_OWNER, **extra}


def role_stage(role: Role = Role.PLATFORM_ADMIN, **extra: Any) -> dict[str, Any]:
    return {"name": role.label, "approver_kind": ApproverKind.ROLE, "role": role, **extra}


def named_stage(people: list[User], **extra: Any) -> dict[str, Any]:
    return {"name": "Named approvers", "approver_kind": ApproverKind.NAMED, "approvers": people, **extra}


def submit(request: MailboxRequest) -> MailboxRequest:
    """The requester submits (or resubmits) the request."""
    mailbox_request_submit(actor=request.requester, request_id=request.pk)
    request.refresh_from_db()
    return request


def submit_directly(request: MailboxRequest) -> MailboxRequest:
    """Test set-up: what submission does to the route, for a request submission itself would refuse."""
    with transaction.atomic():
        locked = MailboxRequest.objects.select_for_update().get(pk=request.pk)
        assert locked.status in (RequestStatus.DRAFT, RequestStatus.RETURNED), locked.status
        locked.status = RequestStatus.SUBMITTED
        locked.submitted_at = timezone.now()
        locked.updated_at = timezone.now()
        locked.save(update_fields=["status", "submitted_at", "updated_at"])
        approval_route_start(request=locked, actor=locked.requester)
    request.refresh_from_db()
    return request


def withdraw(request: MailboxRequest) -> MailboxRequest:
    """The requester withdraws the request."""
    mailbox_request_withdraw(actor=request.requester, request_id=request.pk)
    request.refresh_from_db()
    return request


def change_facts(request: MailboxRequest, *, members: list[dict[str, Any]] | None = None, **changes: Any) -> None:
    """The requester changes a returned request's answers."""
    mailbox_request_update(actor=request.requester, request_id=request.pk, changes=changes, members=members)
    request.refresh_from_db()


def stages_of(request: MailboxRequest) -> list[RequestStage]:
    return list(RequestStage.objects.filter(request=request).order_by("order"))


def statuses(request: MailboxRequest) -> list[str]:
    return [stage.status for stage in stages_of(request)]


def waiting_stage(request: MailboxRequest) -> RequestStage:
    return RequestStage.objects.select_related("request").get(request=request, status=StageStatus.WAITING)


@dataclass
class Cast:
    """The people around one team's request, each with one clear relationship to it."""

    requester: User
    owner: User  # the team's business owner, an approver
    second_owner: User  # another business owner of the same team
    admin: User  # a platform admin, decides the second stage
    other_admin: User
    fallback: User  # an approver named as fallback
    delegate: User  # an approver with no standing of their own
    outsider: User  # holds no role at all
    team: Team


def make_cast() -> Cast:
    requester = UserFactory(username="rhian", first_name="Rhian", last_name="Evans", roles=[Role.REQUESTER])
    owner = UserFactory(username="olu", first_name="Olu", last_name="Adeyemi", roles=[Role.APPROVER])
    second_owner = UserFactory(username="siobhan", first_name="Siobhan", last_name="Kelly", roles=[Role.APPROVER])
    admin = UserFactory(username="priya", first_name="Priya", last_name="Shah", roles=[Role.PLATFORM_ADMIN])
    other_admin = UserFactory(username="gareth", first_name="Gareth", last_name="Price", roles=[Role.PLATFORM_ADMIN])
    fallback = UserFactory(username="fiona", first_name="Fiona", last_name="Reid", roles=[Role.APPROVER])
    delegate = UserFactory(username="dev", first_name="Dev", last_name="Mistry", roles=[Role.APPROVER])
    outsider = UserFactory(username="nobody", first_name="Nia", last_name="Body", roles=[])
    team = TeamFactory(name="Finance", business_owners=[owner, second_owner], members=[requester])
    return Cast(requester, owner, second_owner, admin, other_admin, fallback, delegate, outsider, team)


def draft_for(cast: Cast, **extra: Any) -> MailboxRequest:
    return MailboxRequestFactory(requester=cast.requester, team=cast.team, **extra)


class ProvisioningStarts(list):
    """Calls the decision made to ``provisioning_start``: (request id, the request's status at the call)."""


def record_provisioning_starts(monkeypatch) -> ProvisioningStarts:
    """Record every hand-over to provisioning, then make it for real."""
    from onboarding.services import provisioning

    real = provisioning.provisioning_start
    calls = ProvisioningStarts()

    def recording(*, request, actor):
        calls.append((request.pk, request.status))
        return real(request=request, actor=actor)

    monkeypatch.setattr(provisioning, "provisioning_start", recording)
    return calls
