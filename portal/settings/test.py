"""Settings for the test suite: PostgreSQL and Redis, as in production."""

from __future__ import annotations

import os
import re

from django.core.exceptions import ImproperlyConfigured


def _redis_url_for_this_worker(url: str, worker: str) -> str:
    """Under pytest-xdist, worker ``gwN`` uses the Redis database N below the configured one.

    The test database already gets a name per worker; this does the same for Redis, so one
    worker emptying its queue never touches another's.
    """
    match = re.fullmatch(r"gw(\d+)", worker)
    database = re.search(r"/(\d+)$", url)
    if not match or not database:
        return url
    number = int(database.group(1)) - int(match.group(1))
    if number < 0:
        raise ImproperlyConfigured(f"REDIS_URL {url} leaves no Redis database for xdist worker {worker}.")
    return url[: database.start(1)] + str(number)


# Worked out once, in the xdist worker: the processes the tests start (RQ workers, servers) inherit
# the worker's name with the changed REDIS_URL, or are handed a URL of their own, and keep it.
if os.environ.get("PYTEST_XDIST_WORKER") and os.environ.get("REDIS_URL"):
    _configured = os.environ.setdefault("PORTAL_TEST_REDIS_URL", os.environ["REDIS_URL"])
    if os.environ["REDIS_URL"] == _configured:
        os.environ["REDIS_URL"] = _redis_url_for_this_worker(_configured, os.environ["PYTEST_XDIST_WORKER"])

from .base import *  # noqa: E402, F403
from .base import DATABASES, env  # noqa: E402

PORTAL_ENVIRONMENT = "test"

if DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
    raise ImproperlyConfigured(
        "The tests run against PostgreSQL: set DATABASE_URL=postgres://user@host:5432/name "
        "(the Makefile's test target does this for a local server)."
    )
if not env.is_set("REDIS_URL"):
    raise ImproperlyConfigured(
        "The tests run against Redis: set REDIS_URL=redis://host:6379/15 "
        "(the Makefile's test target does this for a local server)."
    )

SECRET_KEY = "test-only-key-not-used-anywhere-else-0123456789-abcdefghijklmnop"  # noqa: S105
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
WHITENOISE_USE_FINDERS = True
# Static files come from the finders; no collected directory is expected.
STATIC_ROOT = env.str("STATIC_ROOT", default=None)
# Each test builds its own data inside a transaction that is rolled back, while the cache outlives
# it: figures are worked out on every request unless a test sets a time (see portal/figures.py).
DASHBOARD_FIGURES_SECONDS = 0
