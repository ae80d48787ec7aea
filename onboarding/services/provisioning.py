"""Provisioning an approved request in Exchange Online and Dataverse as checkpointed steps.

(Interface fixed; bodies to be written.)
"""

from __future__ import annotations

from onboarding.models import MailboxRequest, ProvisioningRun, ProvisioningStep
from portal.accounts.models import User


def provisioning_start(*, request: MailboxRequest, actor: User) -> ProvisioningRun:
    """Called by the final approval inside its transaction, with ``request`` locked and set to PROVISIONING.

    Creates the run and its steps (one run per request, ever) and queues the job after commit.
    """
    raise NotImplementedError


def provisioning_advance(*, run_id: int) -> None:
    """The job's work: claim the run, then do its steps in order until done, waiting or failed."""
    raise NotImplementedError


def provisioning_recover(*, run_id: int) -> None:
    """The watchdog: a run whose lease expired (its worker died) is queued again."""
    raise NotImplementedError


def provisioning_retry_from_step(*, actor: User, run_id: int, step_order: int) -> ProvisioningRun:
    """A platform admin restarts a run that needs attention from one of its steps."""
    raise NotImplementedError


def provisioning_mark_step_done(*, actor: User, step_id: int, note: str) -> ProvisioningStep:
    """A platform admin records a step as done by hand (e.g. approval in the Exchange admin centre)."""
    raise NotImplementedError
