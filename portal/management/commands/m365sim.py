"""Serve the tenant simulator: Entra ID, Dataverse, Graph and Exchange admin over HTTPS (docs/simulator.md)."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from portal.m365.simulator.server import build_server


class Command(BaseCommand):
    help = "Run the Microsoft 365 tenant simulator and print the environment that points the portal at it."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8444, help="0 picks a free port.")
        parser.add_argument("--state-dir", default=str(Path(settings.VAR_DIR) / "m365sim"))
        parser.add_argument("--seed", default="demo", help="'demo' or a number of mailboxes.")
        parser.add_argument("--apps", type=int, default=2, help="Application registrations (Dataverse app users).")

    def handle(self, *args, host: str, port: int, state_dir: str, seed: str, apps: int, **options):
        if seed != "demo" and not seed.isdigit():
            raise CommandError("--seed must be 'demo' or a number of mailboxes.")
        if not 1 <= apps <= 9:
            raise CommandError("--apps must be between 1 and 9.")
        directory = Path(state_dir).resolve()
        try:
            server = build_server(host=host, port=port, state_dir=directory, seed=seed, app_count=apps)
        except OSError as error:
            raise CommandError(f"Cannot listen on {host}:{port}: {error.strerror}.") from None
        except ValueError as error:
            raise CommandError(str(error)) from None
        env_path = server.app.write_environment()
        counts = {name: len(rows) for name, rows in server.app.store.tables.items()}
        self.stdout.write(self.style.SUCCESS(f"Tenant simulator listening on {server.base_url} (seed {seed})"))
        self.stdout.write(
            f"{counts.get('mailboxes', 0)} mailboxes, {counts.get('systemusers', 0)} users, "
            f"{counts.get('queues', 0)} queues. State in {directory}"
        )
        self.stdout.write(f"Point the portal at it with these environment variables (also in {env_path}):\n")
        for line in server.app.environment():
            self.stdout.write(line)
        self.stdout.flush()

        stop = threading.Event()

        def _stop(signum, frame):
            stop.set()
            threading.Thread(target=server.shutdown, daemon=True).start()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        try:
            server.serve_forever(poll_interval=0.2)
        finally:
            server.server_close()
            self.stdout.write("Tenant simulator stopped; state saved.")
