from __future__ import annotations

import sys

from django.core.management.base import BaseCommand

from portal.audit.services import audit_chain_verify


class Command(BaseCommand):
    help = (
        "Recompute the audit chain's hashes and links. Exits 0 when intact; "
        "exits 1 naming the first bad event when any event was altered, removed or reordered."
    )

    def handle(self, *args, **options):
        report = audit_chain_verify()
        if report.intact:
            self.stdout.write(self.style.SUCCESS(report.describe()))
            return
        self.stderr.write(self.style.ERROR(report.describe()))
        sys.exit(1)
