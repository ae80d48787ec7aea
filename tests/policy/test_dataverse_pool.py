"""The Dataverse client pool picks only the application users the policy allows."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator

import pytest
import redis
from django.conf import settings
from django.db import OperationalError, ProgrammingError

from portal.m365.budget import BudgetLimits, RateBudget
from portal.m365.config import M365Config
from portal.m365.dataverse import APPLICATION_USERS_CACHE_SECONDS, DataverseClientPool
from portal.policy.models import PolicySettings
from portal.policy.services import policy_update
from tests.policy.conftest import make_registrations


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def budget() -> Iterator[RateBudget]:
    """A rate budget on the test Redis under a prefix of this test's own, removed afterwards."""
    connection = redis.Redis.from_url(settings.REDIS_URL)
    prefix = f"test:policy:{uuid.uuid4().hex}"
    yield RateBudget(
        redis_client=connection, limits=BudgetLimits(max_concurrent=10), service="dataverse", prefix=prefix
    )
    keys = list(connection.scan_iter(match=f"{prefix}:*", count=500))
    if keys:
        connection.delete(*keys)
    connection.close()


def make_pool(budget: RateBudget, clock: Clock, *names: str, **kwargs) -> DataverseClientPool:
    config = M365Config(
        enabled=True,
        tenant_id="6f1c3a52-8d4b-4a0e-9a55-2b7de3f0c001",
        authority_host="https://login.example.test",
        registrations=make_registrations(*names),
        dataverse_url="https://contoso.crm11.example.test",
    )
    return DataverseClientPool(config, budget=budget, clock=clock, **kwargs)


def chosen(pool: DataverseClientPool, times: int = 6) -> set[str]:
    return {pool.client().registration.name for _ in range(times)}


@pytest.mark.django_db
def test_only_allowed_application_users_are_picked(budget, platform_admin, registrations):
    policy_update(actor=platform_admin, changes={"application_users": ["1", "3"]})
    pool = make_pool(budget, Clock(), "1", "2", "3")

    assert chosen(pool) == {"1", "3"}


@pytest.mark.django_db
def test_an_empty_list_allows_every_application_user(budget):
    PolicySettings.objects.create(pk=1, application_users=[])
    assert chosen(make_pool(budget, Clock(), "1", "2", "3"), times=9) == {"1", "2", "3"}


@pytest.mark.django_db
def test_the_policy_is_read_at_most_every_30_seconds(budget, django_assert_num_queries):
    PolicySettings.objects.create(pk=1, application_users=["2"])
    clock = Clock()
    pool = make_pool(budget, clock, "1", "2", "3")

    with django_assert_num_queries(1):
        for _ in range(20):
            assert pool.client().registration.name == "2"

    PolicySettings.objects.filter(pk=1).update(application_users=["3"])
    clock.now += APPLICATION_USERS_CACHE_SECONDS - 1
    with django_assert_num_queries(0):
        assert pool.client().registration.name == "2"

    clock.now += 1
    with django_assert_num_queries(1):
        assert pool.client().registration.name == "3"
    assert APPLICATION_USERS_CACHE_SECONDS == 30


@pytest.mark.django_db
def test_a_policy_allowing_no_configured_application_user_falls_back_to_all(budget, caplog):
    PolicySettings.objects.create(pk=1, application_users=["7", "8"])
    pool = make_pool(budget, Clock(), "1", "2")

    with caplog.at_level(logging.WARNING, logger="portal.m365.dataverse"):
        assert chosen(pool) == {"1", "2"}

    assert [record.getMessage() for record in caplog.records] == [
        "The policy allows application users 7, 8, none of them configured; every configured one is used"
    ]


@pytest.mark.parametrize(
    "error",
    [OperationalError("database unreachable"), ProgrammingError('relation "policy_policysettings" does not exist')],
)
def test_an_unreadable_policy_falls_back_to_all(budget, caplog, error):
    def broken() -> list[str]:
        raise error

    pool = make_pool(budget, Clock(), "1", "2", allowed_names=broken)

    with caplog.at_level(logging.WARNING, logger="portal.m365.dataverse"):
        assert chosen(pool) == {"1", "2"}
    assert "Could not read the policy's application users" in caplog.text


def test_other_errors_reading_the_policy_are_not_swallowed(budget):
    def broken() -> list[str]:
        raise TypeError("a bug in the reader")

    pool = make_pool(budget, Clock(), "1", "2", allowed_names=broken)

    with pytest.raises(TypeError, match="a bug in the reader"):
        pool.client()


def test_a_single_registration_never_reads_the_policy(budget):
    def unexpected() -> list[str]:
        raise AssertionError("read the policy")

    pool = make_pool(budget, Clock(), "2", allowed_names=unexpected)
    assert pool.client().registration.name == "2"
