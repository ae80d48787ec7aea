"""The burn-down: mailboxes by state per day."""

from __future__ import annotations

from migration.models import MigrationProgressDay


def progress_record_today() -> MigrationProgressDay:
    """Count the inventory's mailboxes by state now and store them as today's row (overwriting it)."""
    raise NotImplementedError
