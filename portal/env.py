"""Typed access to configuration held in environment variables.

Every setting the portal reads from the environment goes through :class:`Env`, so
a malformed value stops start-up with a message naming the variable and what was
expected, instead of surfacing later as a confusing failure.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


class Env:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ

    def _raw(self, name: str) -> str | None:
        value = self._environ.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def _missing(self, name: str, default: Any, hint: str) -> Any:
        if default is REQUIRED:
            raise ImproperlyConfigured(f"Environment variable {name} is required: {hint}.")
        return default

    def is_set(self, name: str) -> bool:
        return self._raw(name) is not None

    def str(self, name: str, *, default: Any = REQUIRED, hint: str = "set it to a value") -> Any:
        raw = self._raw(name)
        if raw is None:
            return self._missing(name, default, hint)
        return raw

    def bool(self, name: str, *, default: Any = REQUIRED) -> Any:
        raw = self._raw(name)
        if raw is None:
            return self._missing(name, default, "set it to true or false")
        lowered = raw.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ImproperlyConfigured(
            f"Environment variable {name} must be true or false (or 1/0, yes/no, on/off), not {raw!r}."
        )

    def int(
        self,
        name: str,
        *,
        default: Any = REQUIRED,
        minimum: int | None = None,
        maximum: int | None = None,
    ) -> Any:
        raw = self._raw(name)
        if raw is None:
            return self._missing(name, default, "set it to a whole number")
        try:
            value = int(raw)
        except ValueError:
            raise ImproperlyConfigured(f"Environment variable {name} must be a whole number, not {raw!r}.") from None
        if minimum is not None and value < minimum:
            raise ImproperlyConfigured(f"Environment variable {name} must be at least {minimum}.")
        if maximum is not None and value > maximum:
            raise ImproperlyConfigured(f"Environment variable {name} must be at most {maximum}.")
        return value

    def choice(self, name: str, *, choices: tuple[str, ...], default: Any = REQUIRED) -> Any:
        raw = self._raw(name)
        if raw is None:
            return self._missing(name, default, f"choose one of {', '.join(choices)}")
        if raw not in choices:
            raise ImproperlyConfigured(f"Environment variable {name} must be one of {', '.join(choices)}, not {raw!r}.")
        return raw

    def list(self, name: str, *, default: Any = REQUIRED, hint: str = "set it to a comma-separated list") -> Any:
        raw = self._raw(name)
        if raw is None:
            return self._missing(name, default, hint)
        return [item.strip() for item in raw.split(",") if item.strip()]

    def origins(self, name: str, *, default: Any = REQUIRED) -> Any:
        """A comma-separated list of origins such as ``https://portal.example.gov.uk``."""
        values = self.list(name, default=default)
        if values is default:
            return values
        for origin in values:
            parts = urlsplit(origin)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
                raise ImproperlyConfigured(
                    f"Environment variable {name} must list origins like https://portal.example.gov.uk, not {origin!r}."
                )
        return values

    def url(self, name: str, *, schemes: tuple[str, ...], default: Any = REQUIRED) -> Any:
        raw = self._raw(name)
        if raw is None:
            return self._missing(name, default, f"set it to a {'/'.join(schemes)} URL")
        parts = urlsplit(raw)
        if parts.scheme not in schemes or (parts.scheme not in ("unix", "sqlite") and not parts.hostname):
            raise ImproperlyConfigured(
                f"Environment variable {name} must be a URL starting with "
                f"{' or '.join(s + '://' for s in schemes)}, not {_redact(raw)!r}."
            )
        return raw

    def database(self, name: str, *, sqlite_path: Path) -> dict[str, Any]:
        """Parse ``DATABASE_URL`` into a Django DATABASES entry.

        Unset means the embedded SQLite file at ``sqlite_path``.
        """
        raw = self._raw(name)
        if raw is None:
            return _sqlite(sqlite_path)
        return parse_database_url(raw, name=name)


def _sqlite(path: Path) -> dict[str, Any]:
    return {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(path),
        # IMMEDIATE transactions take the write lock up front, so concurrent
        # writers queue instead of failing with "database is locked" mid-way.
        "OPTIONS": {
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        },
    }


def parse_database_url(raw: str, *, name: str = "DATABASE_URL") -> dict[str, Any]:
    parts = urlsplit(raw)
    if parts.scheme == "sqlite":
        # sqlite:///relative/path or sqlite:////absolute/path, as dj-database-url reads them.
        rest = raw[len("sqlite://") :]
        path = unquote(rest[1:]) if rest.startswith("/") else ""
        if not path:
            raise ImproperlyConfigured(
                f"Environment variable {name}: a sqlite URL needs a file path, e.g. sqlite:///var/portal.sqlite3."
            )
        return _sqlite(Path(path))
    if parts.scheme not in ("postgres", "postgresql"):
        raise ImproperlyConfigured(
            f"Environment variable {name} must look like postgres://user:password@host:5432/name "
            f"or sqlite:///path/to/file, not {_redact(raw)!r}."
        )
    try:
        port = parts.port
    except ValueError:
        raise ImproperlyConfigured(f"Environment variable {name} has an invalid port.") from None
    db_name = unquote(parts.path.lstrip("/"))
    if not db_name:
        raise ImproperlyConfigured(
            f"Environment variable {name} must name the database after the host, e.g. postgres://user@host:5432/portal."
        )
    query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    try:
        connect_timeout = int(query.pop("connect_timeout", "5"))
    except ValueError:
        raise ImproperlyConfigured(
            f"Environment variable {name}: connect_timeout must be a whole number of seconds."
        ) from None
    options: dict[str, Any] = {"connect_timeout": connect_timeout}
    if "sslmode" in query:
        options["sslmode"] = query.pop("sslmode")
    if query:
        raise ImproperlyConfigured(
            f"Environment variable {name} has unsupported options: {', '.join(sorted(query))} "
            "(supported: sslmode, connect_timeout)."
        )
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": db_name,
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "",
        "PORT": str(port or ""),
        "OPTIONS": options,
        "CONN_HEALTH_CHECKS": True,
    }


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url
