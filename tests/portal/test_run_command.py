"""The README's run command on an empty directory: embedded SQLite and Redis, a real worker, demo data.

This drives `manage.py runportal` (what `make run` calls after installing) as a
user would: every demo role signs in over HTTP and sees its own navigation,
the audit page lists the sign-ins, and an integrity check runs on the worker.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager

import pytest
import redis
import requests

from portal.accounts.management.commands.seed_demo import DEFAULT_DEMO_PASSWORD
from tests.accounts.test_navigation import nav_labels
from tests.servers import ROOT, clean_env, free_port, wait_for_http

EXPECTED_NAV = {
    "requester": ["Home", "Requests", "Mailbox health"],
    "approver": ["Home", "Requests", "Approvals", "Mailbox health"],
    "admin": ["Home", "Approvals", "Platform", "Policy", "Migration", "Mailbox health", "Audit"],
    "migration": ["Home", "Migration", "Mailbox health"],
    "auditor": ["Home", "Mailbox health", "Audit"],
    "outsider": ["Home", "Mailbox health"],
}


def sign_in(base: str, username: str) -> requests.Session:
    session = requests.Session()
    page = session.get(f"{base}/accounts/sign-in/", timeout=10).text
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    response = session.post(
        f"{base}/accounts/sign-in/",
        data={"csrfmiddlewaretoken": token, "username": username, "password": DEFAULT_DEMO_PASSWORD},
        headers={"Referer": f"{base}/accounts/sign-in/"},
        timeout=10,
    )
    assert response.url == f"{base}/", f"{username} could not sign in"
    return session


@pytest.fixture
def running_portal(tmp_path):
    with run_portal(tmp_path) as running:
        yield running


@contextmanager
def run_portal(tmp_path):
    """The README's run command in ``tmp_path``: yields (base URL, process, tmp_path)."""
    port = free_port()
    env = clean_env(DJANGO_SETTINGS_MODULE="portal.settings.local", PORTAL_VAR_DIR=str(tmp_path / "var"))
    log = (tmp_path / "runportal.log").open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            "manage.py",
            "runportal",
            "--port",
            str(port),
            "--web-workers",
            "1",
            "--sim-port",
            str(free_port()),
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{base}/healthz", timeout=90, process=process)
        yield base, process, tmp_path
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        log.close()


@pytest.mark.slow
def test_run_command_brings_up_a_working_portal(running_portal):
    base, _, _ = running_portal
    assert requests.get(f"{base}/readyz", timeout=5).json()["checks"] == {"database": "ok", "redis": "ok"}
    assert requests.get(f"{base}/static/portal/portal.css", timeout=5).status_code == 200
    # With no tenant configured, the run command points the portal at its tenant simulator.
    assert "Sign in with Microsoft" in requests.get(f"{base}/accounts/sign-in/", timeout=10).text

    for username, expected in EXPECTED_NAV.items():
        session = sign_in(base, username)
        assert nav_labels(session.get(f"{base}/", timeout=10).text) == expected, username

    auditor = sign_in(base, "auditor")
    audit_page = auditor.get(f"{base}/audit/?action=auth.sign_in", timeout=10).text
    for name in ("Riya Patel", "Owen Hughes", "Grace Okafor", "Tom Fletcher", "Aisha Khan", "Sam Doyle"):
        assert name in audit_page, name

    # The integrity check goes through the embedded Redis to the real worker and back.
    page = auditor.get(f"{base}/audit/", timeout=10).text
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    auditor.post(
        f"{base}/audit/verify/",
        data={"csrfmiddlewaretoken": token},
        headers={"Referer": f"{base}/audit/"},
        timeout=10,
    )
    deadline = time.monotonic() + 30
    while "Chain intact" not in (page := auditor.get(f"{base}/audit/", timeout=10).text):
        assert time.monotonic() < deadline, "the worker did not finish the integrity check"
        time.sleep(0.5)

    # The first discovery was queued at start-up: the demo tenant's mailboxes fill the inventory.
    lead = sign_in(base, "migration")
    deadline = time.monotonic() + 60
    while 'govuk-tag--green">Finished' not in lead.get(f"{base}/migration/discovery/", timeout=10).text:
        assert time.monotonic() < deadline, "the first discovery did not finish"
        time.sleep(1)
    inventory = lead.get(f"{base}/migration/inventory/?classification=email_router", timeout=10).text
    assert len(set(re.findall(r'href="/migration/inventory/(\d+)/"', inventory))) >= 5


@pytest.mark.slow
def test_run_command_stops_everything_it_started(running_portal):
    base, process, tmp_path = running_portal
    socket_path = tmp_path / "var" / "redis" / "redis.sock"
    assert redis.Redis(unix_socket_path=str(socket_path)).ping()

    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=30) == 0
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{base}/healthz", timeout=2)
    with pytest.raises(redis.ConnectionError):
        redis.Redis(unix_socket_path=str(socket_path), socket_connect_timeout=1).ping()
