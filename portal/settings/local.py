"""Settings for the run command and local development: embedded defaults, no setup."""

from __future__ import annotations

import secrets

from .base import *  # noqa: F403
from .base import VAR_DIR, env

PORTAL_ENVIRONMENT = "local"


def _local_secret_key() -> str:
    """A random key kept in VAR_DIR, so sessions survive restarts without a default in code."""
    path = VAR_DIR / "secret-key"
    if not path.exists():
        VAR_DIR.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(64))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = env.str("SECRET_KEY", default=None) or _local_secret_key()

# Serve static files straight from the finders, so the run command needs no
# collectstatic step and edits to templates' assets show up at once.
WHITENOISE_USE_FINDERS = True
# Static files come from the finders; no collected directory is expected.
STATIC_ROOT = env.str("STATIC_ROOT", default=None)
