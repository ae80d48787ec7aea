"""``/_sim/`` control endpoints: ledger, faults, limits, settings, state, reset, truth, alerts, activity.

They carry no token: the simulator listens on loopback, and these exist for
tests, benchmarks and demos to observe and steer it.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import TYPE_CHECKING, Any

from .core import DEFAULT_SETTINGS, SimResponse, utcnow
from .entra import APP_ROLES

if TYPE_CHECKING:
    from .server import SimulatorApp

_GUID = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
ALERT_FIELDS = frozenset({"regarding", "level", "tracecode", "text", "errordetails"})
ACTIVITY_FIELDS = frozenset({"mailbox", "direction", "count", "day", "attachments"})
MAX_ACTIVITY_EMAILS = 10_000
MAX_ACTIVITY_ATTACHMENTS = 10_000
INT32_MAX = 2**31 - 1


def _bad(message: str, status: int = 400) -> SimResponse:
    return SimResponse.json(status, {"error": {"code": "BadRequest", "message": message}})


def _body(raw: bytes) -> Any:
    try:
        return json.loads(raw.decode("utf-8")) if raw else {}
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"the body is not JSON: {error}") from None


def handle_control(app: SimulatorApp, method: str, path: str, query: dict[str, str], raw: bytes) -> SimResponse:
    from .tables import DataverseError

    try:
        return _route(app, method, path.rstrip("/") or "/", query, raw)
    except ValueError as error:
        return _bad(str(error))
    except DataverseError as error:
        return SimResponse.odata_error(error.status, error.code, error.message)


def _route(app: SimulatorApp, method: str, path: str, query: dict[str, str], raw: bytes) -> SimResponse:
    segments = [segment for segment in path.split("/") if segment]
    head = segments[0] if segments else ""
    if head == "health":
        return SimResponse.json(200, {"status": "ok"})
    if head == "env":
        return SimResponse.json(200, {"lines": app.environment()})
    if head == "ledger":
        if method == "DELETE":
            app.ledger.clear()
            return SimResponse.empty()
        since = int(query.get("since", "0") or 0)
        limit = int(query["limit"]) if query.get("limit") else None
        return SimResponse.json(200, {"last_seq": app.ledger.last_seq(), "entries": app.ledger.since(since, limit)})
    if head == "faults":
        if method == "PUT":
            return SimResponse.json(200, app.faults.configure(_body(raw)))
        if method == "DELETE":
            return SimResponse.json(200, app.faults.reset())
        return SimResponse.json(200, app.faults.config)
    if head == "limits":
        if method == "PUT":
            limits = app.protection.configure(_body(raw))
            app.save_settings()
            return SimResponse.json(200, limits)
        return SimResponse.json(200, app.protection.limits)
    if head == "settings":
        if method == "PUT":
            changes = _body(raw)
            unknown = set(changes) - set(DEFAULT_SETTINGS)
            if unknown:
                raise ValueError(f"unknown settings: {', '.join(sorted(unknown))}")
            app.sim.settings.update(changes)
            app.save_settings()
        return SimResponse.json(200, app.sim.settings)
    if head == "reset" and method == "POST":
        app.reseed()
        app.ledger.clear()
        app.faults.reset()
        return SimResponse.json(200, {"status": "reseeded", "seed": app.seed_spec})
    if head == "truth":
        with app.store.lock:
            return SimResponse.json(200, app.store.meta.get("truth", {}))
    if head == "identities" and len(segments) == 2 and method == "PUT":
        return _set_roles(app, segments[1], _body(raw))
    if head == "identities" and method == "GET":
        with app.store.lock:
            return SimResponse.json(200, {"value": list(app.store.table("entra_identities").values())})
    if head == "rows" and len(segments) == 2:
        limit = int(query.get("limit", "0") or 0)
        with app.store.lock:
            rows = list(app.store.tables.get(segments[1], {}).values())
        return SimResponse.json(200, {"value": rows[:limit] if limit else rows})
    if head == "state":
        return _state(app, method, segments[1:], raw)
    if head == "alerts" and len(segments) == 1 and method == "POST":
        return _raise_alert(app, _body(raw))
    if head == "activity" and len(segments) == 1 and method == "POST":
        return _record_activity(app, _body(raw))
    return _bad(f"unknown control endpoint {method} /_sim{path}", status=404)


def _set_roles(app: SimulatorApp, username: str, body: dict[str, Any]) -> SimResponse:
    roles = body.get("roles")
    if not isinstance(roles, list) or any(role not in APP_ROLES for role in roles):
        raise ValueError(f"roles must be a list drawn from {', '.join(APP_ROLES)}")
    with app.store.lock:
        for row in app.store.table("entra_identities").values():
            if row["username"].lower() == username.lower():
                row["roles"] = list(roles)
                app.store.touch()
                return SimResponse.json(200, row)
    return _bad(f"no identity {username}", status=404)


def _state(app: SimulatorApp, method: str, segments: list[str], raw: bytes) -> SimResponse:
    from . import tables

    store = app.store
    if not segments:
        with store.lock:
            counts = {name: len(rows) for name, rows in sorted(store.tables.items())}
        return SimResponse.json(200, {"counts": counts, "seed": store.meta.get("seed")})
    entity_set = segments[0]
    with store.lock:
        rows = store.tables.get(entity_set)
        if rows is None:
            return _bad(f"no table {entity_set}", status=404)
        if len(segments) == 1:
            return SimResponse.json(200, {"count": len(rows)})
        row_id = segments[1].lower()
        if row_id not in rows:
            return _bad(f"no row {row_id} in {entity_set}", status=404)
        if method == "PATCH":
            changes = _body(raw)
            if entity_set in tables.ENTITY_SETS:
                row = tables.update(store, entity_set, row_id, changes)
            else:
                rows[row_id].update(changes)
                store.touch()
                row = rows[row_id]
            return SimResponse.json(200, row)
        if method == "DELETE":
            if entity_set in tables.ENTITY_SETS:
                tables.delete(store, entity_set, row_id)
            else:
                del rows[row_id]
                store.touch()
            return SimResponse.empty()
        return SimResponse.json(200, rows[row_id])


# -- alerts and activity -------------------------------------------------------------------------


def _object(body: Any, fields: frozenset[str]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    unknown = set(body) - fields
    if unknown:
        raise ValueError(f"unknown fields: {', '.join(sorted(unknown))}; expected {', '.join(sorted(fields))}")
    return body


def _guid_field(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not _GUID.fullmatch(value.strip()):
        raise ValueError(f"{name} must be a GUID")
    return value.strip().lower()


def _int_field(body: dict[str, Any], name: str, low: int, high: int) -> int:
    value = body.get(name)
    # JSON true/false arrive as bool, which Python also counts as int.
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be a whole number from {low} to {high}")
    return value


def _raise_alert(app: SimulatorApp, raw_body: Any) -> SimResponse:
    """Raise a mailbox or server profile alert as the platform does (a recurrence updates the same row)."""
    from .dataverse import Alert, raise_alert

    body = _object(raw_body, ALERT_FIELDS)
    regarding = _guid_field(body, "regarding")
    level = _int_field(body, "level", 1, 3)
    tracecode = _int_field(body, "tracecode", -INT32_MAX - 1, INT32_MAX)
    text = body.get("text")
    if not isinstance(text, str) or not text.strip():
        raise ValueError("text must be a non-empty string")
    details = body.get("errordetails")
    if details is not None and not isinstance(details, str):
        raise ValueError("errordetails must be a string when given")
    row = raise_alert(app.store, regarding, Alert(tracecode, text, details, level))
    return SimResponse.json(200, row)


def _record_activity(app: SimulatorApp, raw_body: Any) -> SimResponse:
    """Record ``count`` tracked emails for a mailbox on one day, and attachments spread over them."""
    from . import tables
    from .dataverse import record_emails

    body = _object(raw_body, ACTIVITY_FIELDS)
    mailbox = _guid_field(body, "mailbox")
    direction = body.get("direction")
    if direction not in ("incoming", "outgoing"):
        raise ValueError("direction must be 'incoming' or 'outgoing'")
    count = _int_field(body, "count", 1, MAX_ACTIVITY_EMAILS)
    now = utcnow()
    moments = _moments_on(_day_field(body, now), count, now)
    with app.store.lock:
        organization = tables.organization_row(app.store) or {}
        sizes = _attachment_sizes(body, int(organization.get("maxuploadfilesize") or 5_242_880))
        # Round-robin: attachment i goes to email i mod count.
        per_email: list[list[int]] = [[] for _ in range(min(count, len(sizes)))]
        for index, size in enumerate(sizes):
            per_email[index % count].append(size)
        emails, attachments = record_emails(
            app.store, mailbox, outgoing=direction == "outgoing", moments=moments, attachments=per_email
        )
    return SimResponse.json(200, {"emails": emails, "attachments": attachments})


def _day_field(body: dict[str, Any], now: dt.datetime) -> dt.date:
    raw = body.get("day")
    if raw is None:
        return now.date()
    if not isinstance(raw, str) or not _DAY.fullmatch(raw):
        raise ValueError("day must be a date written YYYY-MM-DD")
    try:
        day = dt.date.fromisoformat(raw)
    except ValueError:
        raise ValueError(f"day {raw} is not a real date") from None
    if day > now.date():
        raise ValueError(f"day {raw} is in the future (today is {now.date().isoformat()} UTC)")
    return day


def _moments_on(day: dt.date, count: int, now: dt.datetime) -> list[dt.datetime]:
    """``count`` moments spread evenly over an earlier day; for today, now.

    Dataverse stamps ``createdon`` when server-side sync creates the row, so email tracked today
    appears now, never in the past where an incremental reader has already been.
    """
    if day == now.date():
        return [now] * count
    start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
    span = min(86_400.0, (now - start).total_seconds())
    return [start + dt.timedelta(seconds=span * (index + 0.5) / count) for index in range(count)]


def _attachment_sizes(body: dict[str, Any], max_size: int) -> list[int]:
    sizes = body.get("attachments", [])
    if not isinstance(sizes, list) or len(sizes) > MAX_ACTIVITY_ATTACHMENTS:
        raise ValueError(f"attachments must be a list of at most {MAX_ACTIVITY_ATTACHMENTS:,} sizes in bytes")
    for size in sizes:
        # Dataverse refuses files above the organisation's maxuploadfilesize, so none can be stored.
        if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= max_size:
            raise ValueError(
                f"each attachment size must be a whole number of bytes from 0 to the organisation's "
                f"maxuploadfilesize ({max_size:,}), not {size!r}"
            )
    return sizes
