"""Shared fixtures: one persona per role, an outsider, and a clean Redis for queue tests."""

from __future__ import annotations

import django_rq
import msal
import pytest
import redis
from django.test import Client

from portal.accounts import throttle
from portal.accounts.roles import Role
from portal.m365.config import load_m365_config
from portal.m365.simulator.protection import DEFAULT_LIMITS
from tests.factories import UserFactory
from tests.simulator import RunningSimulator, _TrustingSession, run_simulator

# More than one Dataverse page (5,000 rows) of mailboxes, so paging is exercised for real.
SIMULATOR_SEED = "6000"


@pytest.fixture
def requester(db):
    return UserFactory(username="riya", first_name="Riya", last_name="Patel", roles=[Role.REQUESTER])


@pytest.fixture
def approver(db):
    return UserFactory(username="owen", first_name="Owen", last_name="Hughes", roles=[Role.APPROVER])


@pytest.fixture
def platform_admin(db):
    return UserFactory(username="grace", first_name="Grace", last_name="Okafor", roles=[Role.PLATFORM_ADMIN])


@pytest.fixture
def migration_lead(db):
    return UserFactory(username="tom", first_name="Tom", last_name="Fletcher", roles=[Role.MIGRATION_LEAD])


@pytest.fixture
def auditor(db):
    return UserFactory(username="aisha", first_name="Aisha", last_name="Khan", roles=[Role.AUDITOR])


@pytest.fixture
def outsider(db):
    return UserFactory(username="sam", first_name="Sam", last_name="Doyle", roles=[])


@pytest.fixture
def client_for():
    """A test client signed in as the given user (session login, no audit event)."""

    def make(user) -> Client:
        client = Client()
        client.force_login(user)
        return client

    return make


@pytest.fixture(autouse=True)
def _no_sign_in_failures_counted(settings):
    """Failed sign-ins are counted in Redis, outside the test database: each test starts with none."""
    connection = redis.Redis.from_url(settings.REDIS_URL)
    try:
        keys = list(connection.scan_iter(match=f"{throttle.KEY_PREFIX}:*", count=1000))
        if keys:
            connection.delete(*keys)
    finally:
        connection.close()


@pytest.fixture
def redis_queue():
    """The real default RQ queue on the test Redis database, emptied before and after."""
    queue = django_rq.get_queue("default")
    queue.connection.flushdb()
    yield queue
    queue.connection.flushdb()


@pytest.fixture(scope="session")
def sim(tmp_path_factory) -> RunningSimulator:
    """One tenant simulator per test session, a real HTTPS server in its own process."""
    with run_simulator(tmp_path_factory.mktemp("m365sim"), seed=SIMULATOR_SEED) as running:
        yield running


@pytest.fixture
def fresh_sim(sim):
    """The shared simulator with default faults, limits and settings, restored after the test."""
    sim.control("DELETE", "faults")
    sim.control("PUT", "limits", DEFAULT_LIMITS)
    yield sim
    sim.control("DELETE", "faults")
    sim.control("PUT", "limits", DEFAULT_LIMITS)
    sim.control("PUT", "settings", {"test_enable_delay_seconds": 2.0, "deny_address_approval": False})


@pytest.fixture
def m365_settings(fresh_sim, settings):
    """Point the portal at the simulator exactly as its printed environment would."""
    settings.M365 = load_m365_config(fresh_sim.portal_env())
    return settings.M365


def app_token(sim: RunningSimulator, surface: str, *, app: int = 1) -> str:
    """A client-credentials token for ``surface`` from MSAL, exactly as the portal obtains one."""
    tail = "" if app == 1 else f"_{app}"
    session = _TrustingSession()
    session.verify = sim.env["M365_CA_BUNDLE"]
    client = msal.ConfidentialClientApplication(
        sim.env[f"M365_CLIENT_ID{tail}"],
        client_credential=sim.env[f"M365_CLIENT_SECRET{tail}"],
        authority=f"{sim.env['M365_AUTHORITY_HOST']}/{sim.env['M365_TENANT_ID']}",
        instance_discovery=False,
        http_client=session,
    )
    result = client.acquire_token_for_client([f"{sim.base_url}/{surface}/.default"])
    assert "access_token" in result, result
    return result["access_token"]
