"""Service protection limits, fault injection and the call ledger.

Limits follow Dataverse's documented service protection API limits: per
application user, over a sliding window, a number of requests, a combined
execution time and a number of concurrent requests. Exceeding one answers 429
with ``Retry-After`` in whole seconds. Graph's Outlook limits are per
application per mailbox: 4 concurrent requests and 10,000 per 10 minutes.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

DEFAULT_LIMITS: dict[str, Any] = {
    "window_seconds": 300,
    "max_requests": 6000,
    "max_concurrent": 52,
    "max_execution_seconds": 1200,
    "graph_max_concurrent_per_mailbox": 4,
    "graph_max_requests_per_mailbox": 10000,
    "graph_window_seconds": 600,
}

DEFAULT_FAULTS: dict[str, Any] = {
    "rate_429": 0.0,
    "rate_5xx": 0.0,
    "rate_timeout": 0.0,
    "rate_drop": 0.0,
    "rate_lost_response": 0.0,
    "slow_ms": 0,
    "retry_after": 2,
    "timeout_hold_seconds": 30,
    "surfaces": ["dataverse", "graph", "exchange"],
    # Only these operations misbehave (as the ledger names them: "New-Mailbox", "POST queues"); empty: all.
    "operations": [],
    # Stop misbehaving after this many faults (None: never stop), e.g. to lose exactly one response.
    "max_faults": None,
    "seed": None,
}


@dataclass(frozen=True)
class Refusal:
    code: str
    message: str
    retry_after: int


@dataclass
class _Budget:
    arrivals: deque = field(default_factory=deque)  # monotonic arrival times
    executions: deque = field(default_factory=deque)  # (finished_at, seconds)
    concurrent: int = 0


class ServiceProtection:
    """Dataverse limits per application user (the token's ``oid``), thread-safe."""

    def __init__(self, limits: dict[str, Any] | None = None) -> None:
        self.limits = {**DEFAULT_LIMITS, **(limits or {})}
        self._lock = threading.Lock()
        self._budgets: dict[str, _Budget] = {}
        self._graph: dict[tuple[str, str], _Budget] = {}

    def configure(self, changes: dict[str, Any]) -> dict[str, Any]:
        unknown = set(changes) - set(DEFAULT_LIMITS)
        if unknown:
            raise ValueError(f"unknown limits: {', '.join(sorted(unknown))}")
        for key, value in changes.items():
            if not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"{key} must be a positive number")
        with self._lock:
            self.limits.update(changes)
            self._budgets.clear()
            self._graph.clear()
        return dict(self.limits)

    def admit(self, oid: str) -> Refusal | None:
        now = time.monotonic()
        window = self.limits["window_seconds"]
        with self._lock:
            budget = self._budgets.setdefault(oid, _Budget())
            while budget.arrivals and budget.arrivals[0] <= now - window:
                budget.arrivals.popleft()
            while budget.executions and budget.executions[0][0] <= now - window:
                budget.executions.popleft()
            if len(budget.arrivals) >= self.limits["max_requests"]:
                wait = budget.arrivals[0] + window - now
                return Refusal(
                    "0x80072322",
                    f"Number of requests exceeded the limit of {self.limits['max_requests']} over time window of "
                    f"{window} seconds.",
                    max(1, math.ceil(wait)),
                )
            spent = sum(seconds for _, seconds in budget.executions)
            if spent >= self.limits["max_execution_seconds"]:
                wait = budget.executions[0][0] + window - now
                return Refusal(
                    "0x80072321",
                    f"Combined execution time of incoming requests exceeded limit of "
                    f"{int(self.limits['max_execution_seconds'] * 1000)} milliseconds over time window of "
                    f"{window} seconds. Decrease number of concurrent requests or reduce the duration of requests "
                    "and try again later.",
                    max(1, math.ceil(wait)),
                )
            if budget.concurrent >= self.limits["max_concurrent"]:
                return Refusal(
                    "0x80072326",
                    f"Number of concurrent requests exceeded the limit of {self.limits['max_concurrent']}.",
                    1,
                )
            budget.arrivals.append(now)
            budget.concurrent += 1
        return None

    def release(self, oid: str, seconds: float) -> None:
        with self._lock:
            budget = self._budgets.setdefault(oid, _Budget())
            budget.concurrent = max(0, budget.concurrent - 1)
            budget.executions.append((time.monotonic(), seconds))

    def admit_graph(self, client_id: str, mailbox: str) -> Refusal | None:
        now = time.monotonic()
        window = self.limits["graph_window_seconds"]
        with self._lock:
            budget = self._graph.setdefault((client_id, mailbox), _Budget())
            while budget.arrivals and budget.arrivals[0] <= now - window:
                budget.arrivals.popleft()
            if len(budget.arrivals) >= self.limits["graph_max_requests_per_mailbox"]:
                wait = budget.arrivals[0] + window - now
                return Refusal(
                    "ApplicationThrottled", "Application is over its MailboxConcurrency limit.", max(1, math.ceil(wait))
                )
            if budget.concurrent >= self.limits["graph_max_concurrent_per_mailbox"]:
                return Refusal("ApplicationThrottled", "Application is over its MailboxConcurrency limit.", 1)
            budget.arrivals.append(now)
            budget.concurrent += 1
        return None

    def release_graph(self, client_id: str, mailbox: str) -> None:
        with self._lock:
            budget = self._graph.setdefault((client_id, mailbox), _Budget())
            budget.concurrent = max(0, budget.concurrent - 1)


class Faults:
    """Decides, per request, whether to misbehave, at the configured rates."""

    KINDS = ("rate_429", "rate_5xx", "rate_timeout", "rate_drop", "rate_lost_response")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.config: dict[str, Any] = dict(DEFAULT_FAULTS)
        self._random = random.Random()  # noqa: S311 - fault injection, not security
        self._injected = 0

    def configure(self, changes: dict[str, Any]) -> dict[str, Any]:
        unknown = set(changes) - set(DEFAULT_FAULTS)
        if unknown:
            raise ValueError(f"unknown fault settings: {', '.join(sorted(unknown))}")
        for kind in self.KINDS:
            if kind in changes and not (isinstance(changes[kind], int | float) and 0 <= changes[kind] <= 1):
                raise ValueError(f"{kind} must be a number between 0 and 1")
        operations = changes.get("operations", [])
        if not isinstance(operations, list) or not all(isinstance(name, str) for name in operations):
            raise ValueError("operations must be a list of operation names")
        max_faults = changes.get("max_faults")
        whole = isinstance(max_faults, int) and not isinstance(max_faults, bool)
        if max_faults is not None and (not whole or max_faults < 0):
            raise ValueError("max_faults must be a whole number of at least 0, or null")
        with self._lock:
            self.config.update(changes)
            total = sum(self.config[kind] for kind in self.KINDS)
            if total > 1:
                raise ValueError("the fault rates add up to more than 1")
            if "seed" in changes:
                self._random = random.Random(changes["seed"])  # noqa: S311
            self._injected = 0
        return dict(self.config)

    def reset(self) -> dict[str, Any]:
        with self._lock:
            self.config = dict(DEFAULT_FAULTS)
            self._injected = 0
        return dict(self.config)

    def decide(self, surface: str, operation: str = "") -> str | None:
        with self._lock:
            if surface not in self.config["surfaces"]:
                return None
            operations = self.config.get("operations") or []
            if operations and operation.lower() not in {name.lower() for name in operations}:
                return None
            limit = self.config.get("max_faults")
            if limit is not None and self._injected >= limit:
                return None
            roll = self._random.random()
            for kind in self.KINDS:
                rate = self.config[kind]
                if roll < rate:
                    self._injected += 1
                    return kind.removeprefix("rate_")
                roll -= rate
        return None


class Ledger:
    """Every call the simulator received, in order, for tests and benchmarks to read."""

    def __init__(self, capacity: int = 500_000) -> None:
        self._lock = threading.Lock()
        self._entries: deque[dict[str, Any]] = deque(maxlen=capacity)
        self._seq = 0

    def record(self, **entry: Any) -> int:
        with self._lock:
            self._seq += 1
            entry["seq"] = self._seq
            self._entries.append(entry)
            return self._seq

    def since(self, seq: int, limit: int | None = None) -> list[dict[str, Any]]:
        with self._lock:
            rows = [entry for entry in self._entries if entry["seq"] > seq]
        return rows[:limit] if limit else rows

    def last_seq(self) -> int:
        with self._lock:
            return self._seq

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
