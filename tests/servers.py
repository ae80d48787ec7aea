"""Helpers for tests that run the portal as real processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
PORTAL_ENV_KEYS = ("DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE", "PORTAL_VAR_DIR", "SECRET_KEY", "DEBUG")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


PORTAL_ENV_PREFIXES = ("M365_", "ENTRA_", "DATAVERSE_", "GRAPH_", "EXCHANGE_")


def clean_env(**overrides: str) -> dict[str, str]:
    """The current environment without the portal's own settings, plus ``overrides``."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in PORTAL_ENV_KEYS and not key.startswith(PORTAL_ENV_PREFIXES)
    }
    env.update(overrides)
    return env


@contextmanager
def silent_listener() -> Iterator[int]:
    """A TCP port that accepts connections and never says a word: a hung dependency."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                held.append(conn)
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        server.close()


def wait_for_http(url: str, *, timeout: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before {url} answered")
        try:
            requests.get(url, timeout=1)
            return
        except requests.RequestException:
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


@contextmanager
def gunicorn(env: dict[str, str], *, workers: int = 1) -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "portal.wsgi",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(workers),
            "--no-control-socket",
            "--timeout",
            "30",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{base}/healthz", timeout=30, process=process)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
