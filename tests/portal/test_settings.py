"""Start-up configuration, checked the way an operator runs it: as a separate process."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PRODUCTION = {
    "DJANGO_SETTINGS_MODULE": "portal.settings.production",
    "SECRET_KEY": secrets.token_urlsafe(64),
    "ALLOWED_HOSTS": "portal.example.gov.uk",
    "DATABASE_URL": "postgres://portal@db.example.gov.uk:5432/portal",
    "REDIS_URL": "redis://redis.example.gov.uk:6379/0",
}


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    base = {key: value for key, value in os.environ.items() if key not in PRODUCTION and key != "DEBUG"}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_production_settings_pass_the_deployment_checklist():
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=PRODUCTION)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_production_refuses_to_start_without_a_secret_key():
    env = {key: value for key, value in PRODUCTION.items() if key != "SECRET_KEY"}
    result = manage("check", env=env)
    assert result.returncode == 2
    assert "Configuration error: Environment variable SECRET_KEY is required" in result.stderr
    assert "Traceback" not in result.stderr


def test_production_refuses_a_weak_secret_key():
    result = manage("check", env={**PRODUCTION, "SECRET_KEY": "short"})
    assert result.returncode == 2
    assert "SECRET_KEY is too weak" in result.stderr


def test_production_refuses_debug():
    result = manage("check", env={**PRODUCTION, "DEBUG": "true"})
    assert result.returncode == 2
    assert "DEBUG must not be true in production" in result.stderr


def test_production_never_falls_back_to_sqlite():
    env = {key: value for key, value in PRODUCTION.items() if key != "DATABASE_URL"}
    result = manage("check", env=env)
    assert result.returncode == 2
    assert "DATABASE_URL is required" in result.stderr


def test_a_malformed_value_stops_start_up_with_its_name():
    result = manage("check", env={**PRODUCTION, "DATABASE_URL": "db.example.gov.uk/portal"})
    assert result.returncode == 2
    assert "Environment variable DATABASE_URL must look like postgres://" in result.stderr
    result = manage("check", env={**PRODUCTION, "LOG_LEVEL": "chatty"})
    assert result.returncode == 2
    assert "LOG_LEVEL must be one of" in result.stderr
