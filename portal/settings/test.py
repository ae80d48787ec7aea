"""Settings for the test suite: PostgreSQL and Redis, as in production."""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured

from .base import *  # noqa: F403
from .base import DATABASES, env

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
