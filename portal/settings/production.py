"""Production settings: every secret and address comes from the environment.

Check with::

    DJANGO_SETTINGS_MODULE=portal.settings.production SECRET_KEY=... ALLOWED_HOSTS=... \
    DATABASE_URL=postgres://... REDIS_URL=redis://... \
    python manage.py check --deploy --fail-level WARNING
"""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured

from .base import *  # noqa: F403
from .base import DATABASES, env

PORTAL_ENVIRONMENT = "production"

if env.bool("DEBUG", default=False):
    raise ImproperlyConfigured("Environment variable DEBUG must not be true in production.")
DEBUG = False

SECRET_KEY = env.str(
    "SECRET_KEY",
    hint="a random string of at least 50 characters, e.g. from "
    "python -c 'import secrets; print(secrets.token_urlsafe(64))'",
)
if len(SECRET_KEY) < 50 or len(set(SECRET_KEY)) < 5:
    raise ImproperlyConfigured(
        "Environment variable SECRET_KEY is too weak: use a random string of at least 50 characters."
    )

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", hint="list the host names the portal is served on")

# Production never falls back to the embedded SQLite file or Redis socket.
env.str("DATABASE_URL", hint="point it at PostgreSQL, e.g. postgres://portal:secret@db:5432/portal")
if DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
    raise ImproperlyConfigured("Environment variable DATABASE_URL must point at PostgreSQL in production.")
env.str("REDIS_URL", hint="point it at Redis, e.g. redis://redis:6379/0")

SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# The TLS proxy that sends X-Forwarded-Proto also appends the client's address to X-Forwarded-For.
TRUSTED_PROXY_COUNT = env.int("TRUSTED_PROXY_COUNT", default=1, minimum=0, maximum=5)
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31_536_000, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = True
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True

STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}

EMAIL_BACKEND = env.str("EMAIL_BACKEND", default="django.core.mail.backends.smtp.EmailBackend")
