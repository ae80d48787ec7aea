"""RQ entry points for migration: ids in, one service call, log and re-raise."""

from __future__ import annotations

import logging

from portal import correlation

logger = logging.getLogger(__name__)


def inventory_sync_job(sync_id: int, *, correlation_id: str = "") -> None:
    from migration.services.discovery import inventory_sync_run

    with correlation.bound(correlation_id or correlation.new_id()):
        try:
            inventory_sync_run(sync_id=sync_id)
        except Exception:
            logger.exception("inventory discovery %s failed", sync_id)
            raise


def router_import_job(import_id: int, *, correlation_id: str = "") -> None:
    from migration.services.router_import import router_import_run

    with correlation.bound(correlation_id or correlation.new_id()):
        try:
            router_import_run(import_id=import_id)
        except Exception:
            logger.exception("router configuration import %s failed", import_id)
            raise
