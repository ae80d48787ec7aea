"""``/_sim/`` control endpoints: ledger, faults, limits, settings, state, reset, truth.

They carry no token: the simulator listens on loopback, and these exist for
tests, benchmarks and demos to observe and steer it.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from .core import DEFAULT_SETTINGS, SimResponse
from .entra import APP_ROLES

if TYPE_CHECKING:
    from .server import SimulatorApp


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
