"""Users' personal options (``usersettingscollection``): one row per user, keyed by the user's id."""

from __future__ import annotations

import pytest

from portal.m365.simulator import tables
from tests.m365.simulator.dataverse_support import DataverseClient, make_simulator, seed_organisation


@pytest.fixture
def sim():
    simulator = make_simulator()
    seed_organisation(simulator.store)
    yield simulator
    simulator.scheduler.stop()


@pytest.fixture
def client(sim):
    return DataverseClient(sim)


def _user(sim) -> dict:
    return tables.insert(sim.store, "systemusers", {"firstname": "Ada", "lastname": "Lovelace"})


def test_a_new_user_gets_options_with_the_user_default_tracking(sim, client):
    user = _user(sim)

    response = client.get(
        f"usersettingscollection({user['systemuserid']})", query="$select=systemuserid,incomingemailfilteringmethod"
    )

    assert response.status == 200
    body = response.payload()
    assert body["systemuserid"] == user["systemuserid"]
    assert body["incomingemailfilteringmethod"] == 2  # from Dynamics 365 leads, contacts and accounts
    assert body["@odata.etag"].startswith('W/"')


def test_the_tracking_option_is_updated_only_if_unchanged_since_read(sim, client):
    user = _user(sim)
    path = f"usersettingscollection({user['systemuserid']})"
    etag = client.get(path, query="$select=incomingemailfilteringmethod").payload()["@odata.etag"]

    changed = client.patch(path, {"incomingemailfilteringmethod": 4}, headers={"If-Match": etag})
    stale = client.patch(path, {"incomingemailfilteringmethod": 0}, headers={"If-Match": etag})

    assert changed.status == 204
    assert stale.status == 412
    assert client.get(path, query="$select=incomingemailfilteringmethod").payload()["incomingemailfilteringmethod"] == 4


def test_options_cannot_be_created_or_deleted_through_the_api(sim, client):
    user = _user(sim)

    assert client.post("usersettingscollection", {"incomingemailfilteringmethod": 1}).status >= 400
    assert client.delete(f"usersettingscollection({user['systemuserid']})").status >= 400


def test_options_go_with_their_user(sim):
    user = _user(sim)

    tables.delete(sim.store, "systemusers", user["systemuserid"])

    assert user["systemuserid"] not in sim.store.table("usersettingscollection")
