"""Fixtures for the Microsoft 365 client tests: a test tenant's configuration, a stubbed Entra ID,
a fake clock that records every wait, and rate budgets on the real test Redis under their own prefix.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

import pytest
import redis
from django.conf import settings

from portal.m365.budget import BudgetLimits, RateBudget
from portal.m365.config import AppRegistration, M365Config

AUTHORITY_HOST = "https://login.example.test"
TENANT = "6f1c3a52-8d4b-4a0e-9a55-2b7de3f0c001"
AUTHORITY = f"{AUTHORITY_HOST}/{TENANT}"
TOKEN_URL = f"{AUTHORITY}/oauth2/v2.0/token"
DISCOVERY_URL = f"{AUTHORITY}/v2.0/.well-known/openid-configuration"
DATAVERSE = "https://contoso.crm11.example.test"
DATAVERSE_API = f"{DATAVERSE}/api/data/v9.2/"
GRAPH = "https://graph.example.test"
GRAPH_API = f"{GRAPH}/v1.0/"
EXCHANGE = "https://outlook.example.test"
INVOKE_URL = f"{EXCHANGE}/adminapi/beta/{TENANT}/InvokeCommand"


def registration(name: str = "1", **overrides) -> AppRegistration:
    """A registration with a client id of its own, so MSAL's per-process app cache starts empty."""
    values = {"name": name, "client_id": str(uuid.uuid4()), "client_secret": f"secret-{name}"}
    values.update(overrides)
    return AppRegistration(**values)


def make_config(*registrations: AppRegistration, **overrides) -> M365Config:
    values = {
        "enabled": True,
        "tenant_id": TENANT,
        "authority_host": AUTHORITY_HOST,
        "registrations": registrations or (registration(),),
        "dataverse_url": DATAVERSE,
        "graph_url": GRAPH,
        "exchange_admin_url": EXCHANGE,
        "timeout_seconds": 5.0,
    }
    values.update(overrides)
    return M365Config(**values)


@pytest.fixture
def config() -> M365Config:
    return make_config()


@dataclass
class FakeTime:
    """Wall and monotonic clock in one, moved only by ``sleep``, which records what it was asked."""

    now: float = 1_800_000_000.0
    sleeps: list[float] = field(default_factory=list)

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@dataclass
class Entra:
    """The stubbed Entra ID endpoints and the token requests they received."""

    token_requests: list = field(default_factory=list)

    def form(self, index: int = -1) -> dict[str, str]:
        return dict(parse_qsl(self.token_requests[index].text))


@pytest.fixture
def entra(requests_mock) -> Entra:
    stub = Entra()
    requests_mock.get(
        DISCOVERY_URL,
        json={
            "issuer": f"{AUTHORITY}/v2.0",
            "authorization_endpoint": f"{AUTHORITY}/oauth2/v2.0/authorize",
            "token_endpoint": TOKEN_URL,
            "jwks_uri": f"{AUTHORITY}/discovery/v2.0/keys",
        },
    )

    def issue(request, context):
        stub.token_requests.append(request)
        context.headers["x-ms-request-id"] = str(uuid.uuid4())
        return {
            "token_type": "Bearer",
            "expires_in": 3599,
            "ext_expires_in": 3599,
            "access_token": f"access-token-{len(stub.token_requests)}",
        }

    requests_mock.post(TOKEN_URL, json=issue)
    return stub


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(settings.REDIS_URL)
    yield connection
    connection.close()


@pytest.fixture
def budget_prefix(redis_client) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    prefix = f"test:m365:{uuid.uuid4().hex}"
    yield prefix
    keys = list(redis_client.scan_iter(match=f"{prefix}:*", count=500))
    if keys:
        redis_client.delete(*keys)


@pytest.fixture
def make_budget(redis_client, budget_prefix, fake_time) -> Callable[..., RateBudget]:
    def make(
        *,
        service: str = "dataverse",
        max_concurrent: int = 10,
        max_requests: int = 100,
        window_seconds: float = 300.0,
        max_execution_seconds: float = 0.0,
        lease_seconds: float = 60.0,
        max_wait_seconds: float = 60.0,
        redis_clock: bool = False,
        connection: redis.Redis | None = None,
    ) -> RateBudget:
        return RateBudget(
            redis_client=connection or redis_client,
            limits=BudgetLimits(
                max_concurrent=max_concurrent,
                max_requests=max_requests,
                window_seconds=window_seconds,
                max_execution_seconds=max_execution_seconds,
                lease_seconds=lease_seconds,
            ),
            service=service,
            prefix=budget_prefix,
            max_wait_seconds=max_wait_seconds,
            # The fake clock by default; the Redis server's own clock (and real sleeps) on request.
            clock=None if redis_clock else fake_time.time,
            sleep=time.sleep if redis_clock else fake_time.sleep,
        )

    return make
