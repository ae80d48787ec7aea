"""Shared set-up for the requester-journey tests: complete requests, and a recorded approval route.

``record_approval_route`` puts a stand-in for the approval route behind ``approval_route_start`` and
``approval_route_cancel`` (their own tests live with the approvals) for one test: it records each call,
with the request's status and whether it ran inside the caller's transaction, and does what
their docstrings promise to the stages, so the requester's pages have something to show.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from django.db import connection

from onboarding.models import MailboxRequest, RequestStatus
from onboarding.services import approvals
from portal.accounts.models import User
from portal.accounts.roles import Role
from tests.factories import UserFactory
from tests.onboarding.factories import MailboxRequestFactory, TeamFactory


@dataclass
class RouteCall:
    request_id: int
    status: str
    in_transaction: bool
    actor_id: int


@dataclass
class RecordedRoute:
    starts: list[RouteCall] = field(default_factory=list)
    cancels: list[RouteCall] = field(default_factory=list)


def record_approval_route(monkeypatch: pytest.MonkeyPatch) -> RecordedRoute:
    """Watch the hand-over to the real approval route: each call is recorded, then made for real."""
    route = RecordedRoute()
    real_start, real_cancel = approvals.approval_route_start, approvals.approval_route_cancel

    def start(*, request: MailboxRequest, actor: User) -> None:
        route.starts.append(RouteCall(request.pk, request.status, connection.in_atomic_block, actor.pk))
        real_start(request=request, actor=actor)

    def cancel(*, request: MailboxRequest, actor: User) -> None:
        route.cancels.append(RouteCall(request.pk, request.status, connection.in_atomic_block, actor.pk))
        real_cancel(request=request, actor=actor)

    monkeypatch.setattr(approvals, "approval_route_start", start)
    monkeypatch.setattr(approvals, "approval_route_cancel", cancel)
    return route


def person(username: str, **extra: Any) -> User:
    return UserFactory(username=username, **extra)


def complete_request(requester: User, **overrides: Any) -> MailboxRequest:
    """A request with every answer given, in a team the requester belongs to, owned by two active people."""
    team = overrides.pop("team", None) or TeamFactory(members=[requester])
    defaults = {
        "requester": requester,
        "team": team,
        "owner": person(f"owner-of-{requester.username}"),
        "backup_owner": person(f"backup-of-{requester.username}"),
    }
    request = MailboxRequestFactory(**{**defaults, **overrides})
    request.reference = f"MBX-{request.pk:06d}"
    request.save(update_fields=["reference"])
    return request


def another_requester(username: str = "priya") -> User:
    return UserFactory(username=username, roles=[Role.REQUESTER])


OPEN_OR_CLOSED = {
    "open": [
        RequestStatus.DRAFT,
        RequestStatus.SUBMITTED,
        RequestStatus.RETURNED,
        RequestStatus.PROVISIONING,
        RequestStatus.NEEDS_ATTENTION,
        RequestStatus.ACTIVE,
    ],
    "closed": [RequestStatus.WITHDRAWN, RequestStatus.REJECTED],
}
