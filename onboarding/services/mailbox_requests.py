"""Requests for new shared and queue mailboxes: drafts, answers, submission, withdrawal.

(Interface fixed; bodies to be written.)
"""

from __future__ import annotations

from typing import Any

from onboarding.models import MailboxRequest
from portal.accounts.models import User


def mailbox_request_create_draft(*, actor: User) -> MailboxRequest:
    """A new draft owned by ``actor`` with its reference (``MBX-000123``); audited."""
    raise NotImplementedError


def mailbox_request_update(
    *, actor: User, request_id: int, changes: dict[str, Any], members: list[dict[str, Any]] | None = None
) -> MailboxRequest:
    """Change a draft's or returned request's answers (and optionally its members); audited with before/after."""
    raise NotImplementedError


def mailbox_request_submit(*, actor: User, request_id: int) -> MailboxRequest:
    """Submit (or resubmit after a return): checks every answer and the address, then starts the approval route."""
    raise NotImplementedError


def mailbox_request_withdraw(*, actor: User, request_id: int, reason: str = "") -> MailboxRequest:
    """The requester withdraws before provisioning starts; waiting stages are cancelled."""
    raise NotImplementedError
