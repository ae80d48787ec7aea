"""/healthz and /readyz: answers within the budget, and never a version or stack trace."""

from __future__ import annotations

import time

import pytest
import requests

from tests.servers import clean_env, gunicorn, silent_listener


@pytest.mark.django_db
def test_healthz_answers_without_touching_dependencies(client, settings, django_assert_num_queries):
    settings.ALLOWED_HOSTS = ["portal.example.gov.uk"]
    with django_assert_num_queries(0):
        response = client.get("/healthz", HTTP_HOST="10.0.0.7:8000")  # any address a probe uses
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response["Cache-Control"] == "no-store"


@pytest.mark.django_db(transaction=True)
def test_readyz_is_200_when_database_and_redis_answer(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"database": "ok", "redis": "ok"}}


@pytest.mark.django_db(transaction=True)
def test_readyz_fails_fast_when_redis_hangs(client, settings):
    with silent_listener() as port:
        settings.REDIS_URL = f"redis://127.0.0.1:{port}/0"
        started = time.monotonic()
        response = client.get("/readyz")
        elapsed = time.monotonic() - started
    assert response.status_code == 503
    assert response.json()["checks"] == {"database": "ok", "redis": "timeout"}
    assert elapsed < 2.0


@pytest.mark.django_db(transaction=True)
def test_readyz_fails_when_redis_refuses(client, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["redis"] == "unavailable"
    assert "Traceback" not in response.content.decode()


@pytest.mark.slow
def test_readyz_in_a_real_server_when_the_database_hangs_or_is_down(tmp_path):
    import os

    redis_url = os.environ["REDIS_URL"]
    with silent_listener() as hung_port:
        env = clean_env(
            DJANGO_SETTINGS_MODULE="portal.settings.local",
            PORTAL_VAR_DIR=str(tmp_path),
            DATABASE_URL=f"postgres://portal@127.0.0.1:{hung_port}/portal",
            REDIS_URL=redis_url,
        )
        with gunicorn(env) as base:
            started = time.monotonic()
            response = requests.get(f"{base}/readyz", timeout=5)
            elapsed = time.monotonic() - started
    assert response.status_code == 503
    assert response.json()["checks"] == {"database": "timeout", "redis": "ok"}
    assert elapsed < 2.0

    env["DATABASE_URL"] = "postgres://portal@127.0.0.1:1/portal"
    with gunicorn(env) as base:
        started = time.monotonic()
        response = requests.get(f"{base}/readyz", timeout=5)
        elapsed = time.monotonic() - started
    assert response.status_code == 503
    assert response.json()["checks"]["database"] == "unavailable"
    assert elapsed < 2.0


@pytest.mark.slow
def test_readyz_in_a_real_server_when_everything_answers(tmp_path):
    import os

    env = clean_env(
        DJANGO_SETTINGS_MODULE="portal.settings.local",
        PORTAL_VAR_DIR=str(tmp_path),
        DATABASE_URL=os.environ["DATABASE_URL"],
        REDIS_URL=os.environ["REDIS_URL"],
    )
    with gunicorn(env) as base:
        response = requests.get(f"{base}/readyz", timeout=5)
        assert response.status_code == 200
        # The probe works whatever host name the orchestrator uses.
        response = requests.get(f"{base}/healthz", headers={"Host": "10.1.2.3"}, timeout=5)
        assert response.status_code == 200
