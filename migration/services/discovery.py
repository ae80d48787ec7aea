"""Discovery: read every Dataverse mailbox (and Graph presence), classify, and keep the inventory current.

(Interface fixed; bodies to be written.)
"""

from __future__ import annotations

from collections.abc import Iterable

from migration.models import InventorySync
from portal.accounts.models import User


def inventory_sync_request(*, actor: User | None, kind: str) -> InventorySync:
    """Queue a discovery run ("full" or "incremental"); one at a time — a second request returns the running one."""
    raise NotImplementedError


def inventory_sync_run(*, sync_id: int) -> InventorySync | None:
    """The job's work: claim the run, then discover, classify and record; progress saved as it goes."""
    raise NotImplementedError


def inventory_reclassify(*, mailbox_ids: Iterable[int]) -> int:
    """Classify these inventory mailboxes again from their stored facts (e.g. after a router import)."""
    raise NotImplementedError
