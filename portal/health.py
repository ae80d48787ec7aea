"""Liveness and readiness probes.

``/healthz`` says only that the process answers. ``/readyz`` checks that the
database and Redis answer within the readiness budget. Neither says which
versions run or why a check failed beyond the name of the dependency; details
go to the log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

import redis
from django.conf import settings
from django.db import connections
from django.http import HttpRequest, HttpResponse, JsonResponse

logger = logging.getLogger(__name__)

# Threads outlive a hung check (a connect that never completes), so they are
# shared and bounded rather than created per request.
_executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="readyz")


def _check_database() -> None:
    connection = connections.create_connection("default")
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    finally:
        connection.close()


def _check_redis() -> None:
    budget = settings.READINESS_TIMEOUT_SECONDS
    client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=budget, socket_timeout=budget)
    try:
        client.ping()
    finally:
        client.close()


CHECKS: dict[str, Callable[[], None]] = {"database": _check_database, "redis": _check_redis}


def readiness() -> tuple[bool, dict[str, str]]:
    deadline = time.monotonic() + settings.READINESS_TIMEOUT_SECONDS
    futures = {name: _executor.submit(check) for name, check in CHECKS.items()}
    results: dict[str, str] = {}
    for name, future in futures.items():
        try:
            future.result(timeout=max(0.0, deadline - time.monotonic()))
            results[name] = "ok"
        except FutureTimeout:
            logger.warning("readiness check %s timed out", name)
            results[name] = "timeout"
        except Exception:
            logger.warning("readiness check %s failed", name, exc_info=True)
            results[name] = "unavailable"
    return all(value == "ok" for value in results.values()), results


class HealthCheckMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path == "/healthz":
            return _no_store(JsonResponse({"status": "ok"}))
        if request.path == "/readyz":
            ready, checks = readiness()
            body = {"status": "ok" if ready else "unavailable", "checks": checks}
            return _no_store(JsonResponse(body, status=200 if ready else 503))
        return self.get_response(request)


def _no_store(response: HttpResponse) -> HttpResponse:
    response["Cache-Control"] = "no-store"
    return response
