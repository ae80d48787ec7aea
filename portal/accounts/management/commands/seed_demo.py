from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from portal.accounts.services import DEMO_PEOPLE, DEMO_TEAMS, demo_accounts_seed, demo_teams_seed
from portal.policy.services import policy_get, policy_update

DEMO_POLL_SECONDS = 5
DEFAULT_DEMO_PASSWORD = "demo-portal-2026"  # noqa: S105 - demo only; refused in production


class Command(BaseCommand):
    help = "Create one demo account per role (and an outsider with none) and print how to sign in."

    def add_arguments(self, parser):
        parser.add_argument(
            "--password",
            default=DEFAULT_DEMO_PASSWORD,
            help="Password for every demo account (default: %(default)s).",
        )
        parser.add_argument("--url", default="http://127.0.0.1:8000", help="Where the portal is served.")

    def handle(self, *args, password: str, url: str, **options):
        if settings.PORTAL_ENVIRONMENT == "production":
            raise CommandError("seed_demo creates accounts with a known password; it does not run in production.")
        results = demo_accounts_seed(password=password)
        demo_teams_seed()
        policy = policy_get()
        if policy.test_enable_poll_seconds > DEMO_POLL_SECONDS:
            # The tenant simulator finishes Test & Enable in seconds; a real tenant takes minutes.
            policy_update(
                actor=None,
                changes={"test_enable_poll_seconds": DEMO_POLL_SECONDS},
                reason="Demo: the tenant simulator tests mailboxes in seconds.",
            )
        created = sum(1 for _, was_created in results if was_created)
        self.stdout.write(self.style.SUCCESS(f"Demo accounts ready ({created} new, {len(results) - created} reset)."))
        self.stdout.write(f"Sign in at {url.rstrip('/')}/accounts/sign-in/ with password {password!r} as:")
        width = max(len(person.username) for person in DEMO_PEOPLE)
        for person in DEMO_PEOPLE:
            roles = ", ".join(role.label for role in person.roles) or "no role (sees only the home page)"
            self.stdout.write(f"  {person.username.ljust(width)}  {person.first_name} {person.last_name}: {roles}")
        self.stdout.write(
            "Teams: " + "; ".join(f"{name} (business owner: {', '.join(owners)})" for name, _, owners, _ in DEMO_TEAMS)
        )
