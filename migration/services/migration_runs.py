"""Migrating one wave mailbox to server-side sync as checkpointed steps, and rolling it back.

The waves service calls only the functions below; their bodies are the migration engine.
"""

from __future__ import annotations

from collections.abc import Iterable

from portal.accounts.models import User


def wave_dispatch(*, wave_id: int) -> int:
    """Queue the runs of a running wave's mailboxes that may start now (within the Test & Enable cap and
    outside blackout windows); schedule the next dispatch for the rest. Returns how many were queued.
    Safe to call any number of times: a mailbox already claimed or finished is not queued again."""
    raise NotImplementedError


def migration_rollback(*, actor: User, entry_ids: Iterable[int]) -> int:
    """Queue the rollback of these wave mailboxes (migrated or needing attention) to their snapshot."""
    raise NotImplementedError


def migration_retry_failed(*, actor: User, wave_id: int) -> int:
    """Queue a new run for just the wave's mailboxes that need attention. Returns how many."""
    raise NotImplementedError
