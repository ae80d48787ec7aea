"""Queue an inventory discovery run from the command line (the worker does the work)."""

from __future__ import annotations

import redis
from django.core.management.base import BaseCommand, CommandError

from migration.models import InventorySync, SyncKind, SyncStatus
from migration.services.discovery import inventory_sync_request
from portal.exceptions import PortalError


class Command(BaseCommand):
    help = (
        "Queue a discovery of every Dataverse mailbox into the legacy inventory. An incremental run "
        "reads only what changed since the last successful run (the first run is always full). "
        "An RQ worker must be running to do the work; follow it on the Discovery page."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--kind",
            choices=SyncKind.values,
            default=SyncKind.INCREMENTAL,
            help="full or incremental (default incremental)",
        )
        parser.add_argument(
            "--if-never-run",
            action="store_true",
            help="do nothing when a discovery run was ever requested (for start-up scripts)",
        )

    def handle(self, *args, kind: str, if_never_run: bool, **options):
        if if_never_run and InventorySync.objects.exists():
            self.stdout.write("The inventory has been discovered before; nothing queued.")
            return
        try:
            sync = inventory_sync_request(actor=None, kind=kind)
        except PortalError as error:
            raise CommandError(str(error)) from error
        except redis.RedisError as error:
            raise CommandError(f"Could not reach the job queue to queue the discovery: {error}") from error
        sync.refresh_from_db()
        if sync.status == SyncStatus.FAILED:
            raise CommandError(f"Discovery run {sync.pk} could not be queued: {sync.error}")
        self.stdout.write(
            self.style.SUCCESS(
                f"Discovery run {sync.pk} ({sync.get_kind_display().lower()}) is {sync.get_status_display().lower()}."
            )
        )
