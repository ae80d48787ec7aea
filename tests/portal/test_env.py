"""Configuration from the environment: typed values, and clear errors for bad ones."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from portal.env import Env, parse_database_url


def test_booleans_accept_the_usual_spellings():
    env = Env({"A": "yes", "B": "0", "C": "ON"})
    assert env.bool("A", default=False) is True
    assert env.bool("B", default=True) is False
    assert env.bool("C", default=False) is True
    assert env.bool("UNSET", default=True) is True


def test_a_malformed_boolean_names_the_variable():
    with pytest.raises(ImproperlyConfigured, match="DEBUG must be true or false"):
        Env({"DEBUG": "maybe"}).bool("DEBUG", default=False)


def test_integers_are_checked_against_their_bounds():
    assert Env({"N": "25"}).int("N", default=1, minimum=1, maximum=65535) == 25
    with pytest.raises(ImproperlyConfigured, match="EMAIL_PORT must be a whole number"):
        Env({"EMAIL_PORT": "twenty-five"}).int("EMAIL_PORT", default=25)
    with pytest.raises(ImproperlyConfigured, match="at most 65535"):
        Env({"EMAIL_PORT": "70000"}).int("EMAIL_PORT", default=25, maximum=65535)


def test_a_required_value_that_is_missing_says_what_to_set():
    with pytest.raises(ImproperlyConfigured, match="SECRET_KEY is required"):
        Env({}).str("SECRET_KEY")
    with pytest.raises(ImproperlyConfigured, match="SECRET_KEY is required"):
        Env({"SECRET_KEY": "   "}).str("SECRET_KEY")


def test_lists_and_origins():
    env = Env({"HOSTS": "a.example, b.example,,", "ORIGINS": "https://portal.example.gov.uk"})
    assert env.list("HOSTS") == ["a.example", "b.example"]
    assert env.origins("ORIGINS") == ["https://portal.example.gov.uk"]
    with pytest.raises(ImproperlyConfigured, match="CSRF_TRUSTED_ORIGINS must list origins"):
        Env({"CSRF_TRUSTED_ORIGINS": "portal.example.gov.uk"}).origins("CSRF_TRUSTED_ORIGINS")


def test_choice_refuses_values_outside_the_list():
    with pytest.raises(ImproperlyConfigured, match="LOG_LEVEL must be one of"):
        Env({"LOG_LEVEL": "LOUD"}).choice("LOG_LEVEL", choices=("INFO", "DEBUG"))


def test_postgres_urls_become_django_settings():
    config = parse_database_url("postgres://portal:s%40cret@db.internal:6543/portal?sslmode=require")
    assert config["ENGINE"] == "django.db.backends.postgresql"
    assert (config["USER"], config["PASSWORD"], config["HOST"], config["PORT"], config["NAME"]) == (
        "portal",
        "s@cret",
        "db.internal",
        "6543",
        "portal",
    )
    assert config["OPTIONS"] == {"connect_timeout": 5, "sslmode": "require"}


def test_unset_database_url_means_the_embedded_sqlite_file(tmp_path: Path):
    config = Env({}).database("DATABASE_URL", sqlite_path=tmp_path / "portal.sqlite3")
    assert config["ENGINE"] == "django.db.backends.sqlite3"
    assert config["NAME"] == str(tmp_path / "portal.sqlite3")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://root@localhost/portal", "must look like postgres://"),
        ("postgres://portal@db.internal:5432/", "must name the database"),
        ("postgres://portal@db.internal:notaport/portal", "invalid port"),
        ("postgres://portal@db.internal/portal?pool=yes", "unsupported options: pool"),
        ("sqlite://", "needs a file path"),
    ],
)
def test_malformed_database_urls_are_refused_clearly(url, message):
    with pytest.raises(ImproperlyConfigured, match=message):
        parse_database_url(url)


def test_passwords_are_not_echoed_in_errors():
    with pytest.raises(ImproperlyConfigured) as excinfo:
        parse_database_url("mysql://root:hunter2@localhost/portal")
    assert "hunter2" not in str(excinfo.value)


def test_redis_url_must_be_a_redis_url():
    with pytest.raises(ImproperlyConfigured, match="REDIS_URL must be a URL starting with redis://"):
        Env({"REDIS_URL": "localhost:6379"}).url("REDIS_URL", schemes=("redis", "rediss", "unix"))
