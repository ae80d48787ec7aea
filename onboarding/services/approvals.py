"""The approval route of a request: stages, decisions, delegation, escalation, and the route's configuration.

(Interface fixed; bodies to be written.)
"""

from __future__ import annotations

import datetime as dt

from onboarding.models import Decision, Delegation, MailboxRequest
from portal.accounts.models import User


def approval_route_start(*, request: MailboxRequest, actor: User) -> None:
    """Called by submission inside its transaction, with ``request`` locked and just set to SUBMITTED.

    First submission: snapshot the active configured stages into RequestStages. Resubmission
    after a return: keep approved stages whose ``approved_facts_hash`` equals the request's
    current ``facts_hash()``, reset the others to PENDING. Then the first stage not approved
    becomes WAITING (waiting_since, due_at from its SLA) and its approvers are notified.
    """
    raise NotImplementedError


def approval_route_cancel(*, request: MailboxRequest, actor: User) -> None:
    """Called by withdrawal inside its transaction: waiting and pending stages become CANCELLED."""
    raise NotImplementedError


def approval_decide(*, actor: User, stage_id: int, outcome: str, reason: str = "") -> Decision:
    """Approve, reject (reason required) or return (reason required) a waiting stage."""
    raise NotImplementedError


def approval_stages_escalate_overdue(*, now: dt.datetime | None = None) -> int:
    """Mark waiting stages past their due time as escalated and notify their fallback approvers."""
    raise NotImplementedError


def delegation_create(*, actor: User, delegate: User, starts_on: dt.date, ends_on: dt.date) -> Delegation:
    """Out-of-office: let ``delegate`` decide for ``actor`` between the dates (inclusive)."""
    raise NotImplementedError


def delegation_cancel(*, actor: User, delegation_id: int) -> Delegation:
    raise NotImplementedError
