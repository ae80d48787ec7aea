"""Make sure the portal's periodic background jobs are scheduled. Safe to run at every start."""

from __future__ import annotations

import datetime as dt

import redis
from django.core.management.base import BaseCommand, CommandError

from governance.jobs import (
    DIGEST_JOB_ID,
    HEALTH_SYNC_INTERVAL,
    HEALTH_SYNC_JOB_ID,
    digest_schedule,
    health_sync_schedule,
)
from migration.jobs import NIGHTLY_DISCOVERY_AT, NIGHTLY_DISCOVERY_JOB_ID, inventory_nightly_discovery_schedule
from onboarding.jobs import ESCALATION_INTERVAL, ESCALATION_JOB_ID, approvals_escalation_schedule


class Command(BaseCommand):
    help = (
        "Schedule the periodic jobs (escalating overdue approval stages, the nightly inventory discovery, "
        "the mailbox health sync and the owners' weekly digest) "
        "unless they already are. Run it whenever the portal starts; running it again changes nothing. "
        "The jobs run on an RQ worker started with --with-scheduler."
    )

    def handle(self, *args, **options):
        try:
            scheduled = approvals_escalation_schedule(delay=dt.timedelta(0), only_if_missing=True)
            nightly = inventory_nightly_discovery_schedule(only_if_missing=True)
            health = health_sync_schedule(delay=dt.timedelta(minutes=1), only_if_missing=True)
            digest = digest_schedule(only_if_missing=True)
        except redis.RedisError as error:
            raise CommandError(f"Could not reach the job queue to schedule the periodic jobs: {error}") from error
        minutes = int(ESCALATION_INTERVAL.total_seconds() // 60)
        if scheduled:
            self.stdout.write(
                self.style.SUCCESS(f"Scheduled {ESCALATION_JOB_ID}: it runs now, then every {minutes} minutes.")
            )
        else:
            self.stdout.write(f"{ESCALATION_JOB_ID} is already scheduled (every {minutes} minutes).")
        at = NIGHTLY_DISCOVERY_AT.strftime("%H:%M")
        if nightly:
            self.stdout.write(
                self.style.SUCCESS(
                    f"Scheduled {NIGHTLY_DISCOVERY_JOB_ID}: it runs every night at {at} London time, "
                    f"next at {nightly:%Y-%m-%d %H:%M} UTC."
                )
            )
        else:
            self.stdout.write(f"{NIGHTLY_DISCOVERY_JOB_ID} is already scheduled (every night at {at} London time).")
        every = int(HEALTH_SYNC_INTERVAL.total_seconds() // 60)
        if health:
            self.stdout.write(
                self.style.SUCCESS(f"Scheduled {HEALTH_SYNC_JOB_ID}: it runs in a minute, then every {every} minutes.")
            )
        else:
            self.stdout.write(f"{HEALTH_SYNC_JOB_ID} is already scheduled (every {every} minutes).")
        if digest:
            self.stdout.write(
                self.style.SUCCESS(
                    f"Scheduled {DIGEST_JOB_ID}: every Monday at 07:00 London time, "
                    f"next at {digest:%Y-%m-%d %H:%M} UTC."
                )
            )
        else:
            self.stdout.write(f"{DIGEST_JOB_ID} is already scheduled (every Monday at 07:00 London time).")
