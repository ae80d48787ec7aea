"""One tenant simulator per test session, started as a real HTTPS server in its own process."""

from __future__ import annotations

import msal
import pytest

from portal.m365.simulator.protection import DEFAULT_LIMITS
from tests.simulator import RunningSimulator, _TrustingSession, run_simulator

# More than one Dataverse page (5,000 rows) of mailboxes, so paging is exercised for real.
CONTRACT_SEED = "6000"


@pytest.fixture(scope="session")
def sim(tmp_path_factory) -> RunningSimulator:
    with run_simulator(tmp_path_factory.mktemp("m365sim"), seed=CONTRACT_SEED) as running:
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
