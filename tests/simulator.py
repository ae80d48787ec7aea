"""Run the tenant simulator as a real HTTPS server in its own process, for tests and benchmarks."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from tests.servers import ROOT, clean_env


class _TrustingSession(requests.Session):
    """A session that trusts only the simulator's CA, whatever REQUESTS_CA_BUNDLE says."""

    def merge_environment_settings(self, url, proxies, stream, verify, cert):
        merged = super().merge_environment_settings(url, proxies, stream, verify, cert)
        merged["verify"] = self.verify
        return merged


@dataclass
class RunningSimulator:
    base_url: str
    state_dir: Path
    env: dict[str, str]
    process: subprocess.Popen

    def __post_init__(self) -> None:
        self.http = _TrustingSession()
        self.http.verify = self.env["M365_CA_BUNDLE"]

    def control(self, method: str, path: str, payload: Any = None) -> Any:
        response = self.http.request(method, f"{self.base_url}/_sim/{path.lstrip('/')}", json=payload, timeout=60)
        response.raise_for_status()
        return response.json() if response.content else None

    def ledger(self, since: int = 0) -> list[dict[str, Any]]:
        return self.control("GET", f"ledger?since={since}")["entries"]

    def last_seq(self) -> int:
        return self.control("GET", "ledger?since=999999999")["last_seq"]

    def row(self, entity_set: str, row_id: str) -> dict[str, Any]:
        return self.control("GET", f"state/{entity_set}/{row_id}")

    def reset(self) -> None:
        self.control("POST", "reset")

    def portal_env(self) -> dict[str, str]:
        """The variables the simulator printed: all the portal needs to use it."""
        return {key: value for key, value in self.env.items() if not key.startswith("#")}


@contextmanager
def run_simulator(
    state_dir: Path, *, seed: str = "demo", apps: int = 2, timeout: float = 120
) -> Iterator[RunningSimulator]:
    state_dir.mkdir(parents=True, exist_ok=True)
    log_path = state_dir / "simulator.log"
    log = log_path.open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            "manage.py",
            "m365sim",
            "--port",
            "0",
            "--state-dir",
            str(state_dir),
            "--seed",
            seed,
            "--apps",
            str(apps),
        ],
        cwd=ROOT,
        env=clean_env(DJANGO_SETTINGS_MODULE="portal.settings.local", PORTAL_VAR_DIR=str(state_dir / "var")),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    env_file = state_dir / "portal.env"
    deadline = time.monotonic() + timeout
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"simulator exited early:\n{log_path.read_text()}")
            text = log_path.read_text()
            match = re.search(r"listening on (https://127\.0\.0\.1:\d+)", text)
            if match and env_file.exists():
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"simulator did not start:\n{text}")
            time.sleep(0.1)
        env = {}
        for line in env_file.read_text().splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.partition("=")
                env[key] = value
        yield RunningSimulator(base_url=match.group(1), state_dir=state_dir, env=env, process=process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
