"""Shared pieces of the simulator: requests, responses, the state store.

Every surface (Entra, Dataverse, Graph, Exchange admin, control) is a handler
``handle(request: SimRequest, sim: Simulator) -> SimResponse``; the HTTP server
parses the wire into a :class:`SimRequest`, authenticates the caller, applies
limits and faults, calls the handler and writes the :class:`SimResponse` back.
Handlers never touch sockets, so they can be tested as plain functions.
"""

from __future__ import annotations

import copy
import datetime as dt
import heapq
import itertools
import json
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def odata_timestamp(value: dt.datetime | None = None) -> str:
    """Dataverse writes date-times as ``2026-11-26T18:37:25Z`` (UTC, whole seconds)."""
    return (value or utcnow()).astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_guid_source: ContextVar[random.Random | None] = ContextVar("guid_source", default=None)


def new_guid() -> str:
    """A new record id; reproducible inside :func:`deterministic_guids` (seeding)."""
    rng = _guid_source.get()
    if rng is None:
        return str(uuid.uuid4())
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


@contextmanager
def deterministic_guids(rng: random.Random) -> Iterator[None]:
    """Make every id created in this context come from ``rng``, so a seed rebuilds the same ids."""
    token = _guid_source.set(rng)
    try:
        yield
    finally:
        _guid_source.reset(token)


@dataclass(frozen=True)
class AppPrincipal:
    """The caller, from the bearer token: an application (client credentials) or a signed-in user."""

    client_id: str
    oid: str  # the service principal's (or user's) object id; limits are counted per oid
    name: str = ""
    roles: tuple[str, ...] = ()
    audience: str = ""


@dataclass
class SimRequest:
    method: str
    path: str  # the path below the surface prefix, e.g. "/api/data/v9.2/mailboxes(…)"
    query: dict[str, str]  # decoded query parameters, last value wins
    raw_query: str
    headers: dict[str, str]  # keys lower-cased
    body: bytes = b""
    base_url: str = ""  # the surface's base, e.g. "https://127.0.0.1:8443/dataverse"
    principal: AppPrincipal | None = None

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name.lower(), default)

    def json(self) -> Any:
        if not self.body:
            return None
        return json.loads(self.body.decode("utf-8"))


@dataclass
class SimResponse:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    applied: bool = False  # the request changed state (recorded in the ledger)

    @classmethod
    def json(
        cls, status: int, payload: Any, *, headers: dict[str, str] | None = None, applied: bool = False
    ) -> SimResponse:
        body = json.dumps(payload, separators=(",", ":"), default=str).encode("utf-8")
        merged = {"Content-Type": "application/json; odata.metadata=minimal; charset=utf-8", **(headers or {})}
        return cls(status=status, body=body, headers=merged, applied=applied)

    @classmethod
    def empty(cls, status: int = 204, *, headers: dict[str, str] | None = None, applied: bool = False) -> SimResponse:
        return cls(status=status, body=b"", headers=dict(headers or {}), applied=applied)

    @classmethod
    def odata_error(cls, status: int, code: str, message: str, *, headers: dict[str, str] | None = None) -> SimResponse:
        """Dataverse's error body: ``{"error": {"code": "0x…", "message": "…"}}``."""
        return cls.json(status, {"error": {"code": code, "message": message}}, headers=headers)

    def payload(self) -> Any:
        return json.loads(self.body.decode("utf-8")) if self.body else None


class Store:
    """All simulated state: ``tables[entity_set][primary id] -> row dict``.

    Rows use Dataverse's logical column names (``mailboxid``, ``emailaddress``,
    ``_emailserverprofile_value``, ``versionnumber``, ``createdon``, ``modifiedon``),
    so what a handler stores is what a GET returns. Graph and Exchange keep
    their own tables (``graph_users``, ``exchange_mailboxes``) in the same store.
    Every access happens under ``lock``; ``touch()`` marks the store for saving.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.lock = threading.RLock()
        self.tables: dict[str, dict[str, dict[str, Any]]] = {}
        self.meta: dict[str, Any] = {"version": 1000}
        self.path = path
        self._dirty = False

    # -- tables ----------------------------------------------------------------------
    def table(self, name: str) -> dict[str, dict[str, Any]]:
        return self.tables.setdefault(name, {})

    def next_version(self) -> int:
        """A store-wide increasing row version, as Dataverse's ``versionnumber``."""
        with self.lock:
            self.meta["version"] += 1
            return self.meta["version"]

    def touch(self) -> None:
        self._dirty = True

    # -- persistence -------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {"meta": copy.deepcopy(self.meta), "tables": copy.deepcopy(self.tables)}

    def save(self, force: bool = False) -> bool:
        if self.path is None or not (self._dirty or force):
            return False
        with self.lock:
            data = json.dumps({"meta": self.meta, "tables": self.tables}, separators=(",", ":"), default=str)
            self._dirty = False
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(data, encoding="utf-8")
        temporary.replace(self.path)
        return True

    def load(self) -> bool:
        if self.path is None or not self.path.exists():
            return False
        data = json.loads(self.path.read_text(encoding="utf-8"))
        with self.lock:
            self.meta = data["meta"]
            self.tables = data["tables"]
            self._dirty = False
        return True

    def replace(self, tables: dict[str, dict[str, dict[str, Any]]], meta: dict[str, Any]) -> None:
        with self.lock:
            self.tables = tables
            self.meta = meta
            self._dirty = True


class Scheduler:
    """Runs delayed work (asynchronous Test & Enable, alert recurrences) on one background thread."""

    def __init__(self) -> None:
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._counter = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="sim-scheduler", daemon=True)
        self._thread.start()

    def call_later(self, delay_seconds: float, func: Callable[[], None]) -> None:
        with self._cond:
            heapq.heappush(self._queue, (time.monotonic() + max(0.0, delay_seconds), next(self._counter), func))
            self._cond.notify()

    def pending(self) -> int:
        with self._cond:
            return len(self._queue)

    def clear(self) -> None:
        with self._cond:
            self._queue.clear()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (not self._queue or self._queue[0][0] > time.monotonic()):
                    timeout = self._queue[0][0] - time.monotonic() if self._queue else None
                    self._cond.wait(timeout=timeout)
                if self._stopped:
                    return
                _, _, func = heapq.heappop(self._queue)
            try:
                func()
            except Exception:  # a simulated background task failing must not stop the others
                import logging

                logging.getLogger(__name__).exception("simulator background task failed")


DEFAULT_SETTINGS: dict[str, Any] = {
    # Seconds between scheduling Test & Enable and its outcome.
    "test_enable_delay_seconds": 2.0,
    # Refuse emailrouteraccessapproval = 1 with 403, as a tenant without the privilege does.
    "deny_address_approval": False,
}


@dataclass
class Simulator:
    """What every handler gets: the store, the scheduler, the settings and the tenant's identity."""

    store: Store
    scheduler: Scheduler
    tenant_id: str
    base_url: str  # https://127.0.0.1:P
    settings: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_SETTINGS))

    def surface_url(self, surface: str) -> str:
        return f"{self.base_url}/{surface}"

    @contextmanager
    def locked(self) -> Iterator[Store]:
        with self.store.lock:
            yield self.store
