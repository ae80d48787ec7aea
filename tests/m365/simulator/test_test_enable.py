"""Test & Enable on the simulated Dataverse: asynchronous, and visible only through the mailbox and its alerts."""

from __future__ import annotations

import pytest

from portal.m365.simulator import dataverse, tables
from tests.m365.simulator.dataverse_support import (
    DataverseClient,
    add_graph_user,
    make_simulator,
    seed_organisation,
    wait_until,
)

ADDRESS = "sales@contoso.com"


@pytest.fixture
def sim():
    simulator = make_simulator()
    yield simulator
    simulator.scheduler.stop()


@pytest.fixture
def org(sim):
    return seed_organisation(sim.store)


@pytest.fixture
def client(sim):
    return DataverseClient(sim)


def queue_mailbox(sim, *, approved: bool = True, address: str = ADDRESS, **mailbox: object) -> str:
    """A queue with an Exchange Online server-side sync mailbox, ready to test."""
    queue = tables.insert(sim.store, "queues", {"name": "Sales", "emailaddress": address})
    if approved:
        tables.update(sim.store, "queues", queue["queueid"], {"emailrouteraccessapproval": 1})
    mailbox_id = queue["_defaultmailbox_value"]
    tables.update(
        sim.store,
        "mailboxes",
        mailbox_id,
        {"incomingemaildeliverymethod": 2, "outgoingemaildeliverymethod": 2, **mailbox},
    )
    return mailbox_id


def schedule_test(client, mailbox_id: str) -> None:
    """What the portal does to Test & Enable: PATCH the mailbox's schedule flag."""
    response = client.patch(f"mailboxes({mailbox_id})", {"testemailconfigurationscheduled": True})
    assert response.status == 204


def finished(sim, mailbox_id: str) -> dict:
    mailboxes = sim.store.table("mailboxes")
    wait_until(lambda: mailboxes[mailbox_id]["testemailconfigurationscheduled"] is False)
    return mailboxes[mailbox_id]


def alerts(sim, mailbox_id: str) -> list[dict]:
    return [row for row in sim.store.table("tracelogs").values() if row["_regardingobjectid_value"] == mailbox_id]


def test_a_mailbox_in_exchange_online_passes(sim, client, org):
    add_graph_user(sim.store, ADDRESS)
    mailbox_id = queue_mailbox(sim)
    sim.settings["test_enable_delay_seconds"] = 0.3
    schedule_test(client, mailbox_id)

    pending = client.get(
        f"mailboxes({mailbox_id})",
        query="$select=testemailconfigurationscheduled,incomingemailstatus,outgoingemailstatus,mailboxstatus",
    ).payload()
    assert pending["testemailconfigurationscheduled"] is True
    assert (pending["incomingemailstatus"], pending["outgoingemailstatus"], pending["mailboxstatus"]) == (0, 0, 0)

    mailbox = finished(sim, mailbox_id)
    assert (mailbox["incomingemailstatus"], mailbox["outgoingemailstatus"], mailbox["mailboxstatus"]) == (1, 1, 1)
    assert mailbox["actstatus"] == 0  # appointments, contacts and tasks are not on server-side sync here
    assert mailbox["enabledforincomingemail"] is True
    assert mailbox["enabledforoutgoingemail"] is True
    assert mailbox["testmailboxaccesscompletedon"] is not None
    assert alerts(sim, mailbox_id) == []


def test_act_is_tested_when_it_synchronises_through_server_side_sync(sim, client, org):
    add_graph_user(sim.store, ADDRESS)
    mailbox_id = queue_mailbox(sim, actdeliverymethod=1, enabledforact=True)
    schedule_test(client, mailbox_id)
    assert finished(sim, mailbox_id)["actstatus"] == 1


def test_an_unapproved_address_fails_at_once_with_an_alert(sim, client, org):
    add_graph_user(sim.store, ADDRESS)
    mailbox_id = queue_mailbox(sim, approved=False)
    schedule_test(client, mailbox_id)
    mailbox = finished(sim, mailbox_id)
    assert (mailbox["incomingemailstatus"], mailbox["outgoingemailstatus"], mailbox["mailboxstatus"]) == (2, 2, 2)
    (alert,) = alerts(sim, mailbox_id)
    assert alert["level"] == 3
    assert alert["tracecode"] == dataverse.TRACECODE_ADDRESS_NOT_APPROVED
    assert ADDRESS in alert["text"]
    listed = client.get(
        "tracelogs", query=f"$filter=_regardingobjectid_value eq {mailbox_id} and level eq 3"
    ).payload()["value"]
    assert [row["tracelogid"] for row in listed] == [alert["tracelogid"]]


def test_approval_is_not_needed_when_the_organisation_does_not_require_it(sim, client):
    seed_organisation(sim.store, requireapprovalforqueueemail=False)
    add_graph_user(sim.store, ADDRESS)
    mailbox_id = queue_mailbox(sim, approved=False)
    schedule_test(client, mailbox_id)
    assert finished(sim, mailbox_id)["mailboxstatus"] == 1


@pytest.mark.parametrize("location", ["on_premises", "none", None])
def test_a_mailbox_not_in_exchange_online_fails(sim, client, org, location):
    if location:
        add_graph_user(sim.store, ADDRESS.upper(), location=location)
    mailbox_id = queue_mailbox(sim)
    schedule_test(client, mailbox_id)
    assert finished(sim, mailbox_id)["mailboxstatus"] == 2
    (alert,) = alerts(sim, mailbox_id)
    assert alert["tracecode"] == dataverse.TRACECODE_MAILBOX_NOT_IN_EXCHANGE_ONLINE


def test_the_address_is_matched_case_insensitively(sim, client, org):
    add_graph_user(sim.store, "Sales@Contoso.com")
    mailbox_id = queue_mailbox(sim)
    schedule_test(client, mailbox_id)
    assert finished(sim, mailbox_id)["mailboxstatus"] == 1


def test_a_mailbox_without_a_server_profile_fails(sim, client, org):
    add_graph_user(sim.store, ADDRESS)
    mailbox_id = queue_mailbox(sim)
    assert client.delete(f"mailboxes({mailbox_id})/emailserverprofile/$ref").status == 204
    schedule_test(client, mailbox_id)
    assert finished(sim, mailbox_id)["mailboxstatus"] == 2
    (alert,) = alerts(sim, mailbox_id)
    assert alert["tracecode"] == dataverse.TRACECODE_NO_SERVER_PROFILE


def test_a_recurring_alert_updates_its_existing_record(sim, client, org):
    mailbox_id = queue_mailbox(sim, approved=False)
    schedule_test(client, mailbox_id)
    finished(sim, mailbox_id)
    (first,) = alerts(sim, mailbox_id)
    tables.update(sim.store, "tracelogs", first["tracelogid"], {"modifiedon": "2020-01-01T00:00:00Z"})
    aged_version = sim.store.table("tracelogs")[first["tracelogid"]]["versionnumber"]

    schedule_test(client, mailbox_id)
    finished(sim, mailbox_id)
    (again,) = alerts(sim, mailbox_id)
    assert again["tracelogid"] == first["tracelogid"]
    assert again["createdon"] == first["createdon"]
    assert again["modifiedon"] > "2020-01-01T00:00:00Z"
    assert again["versionnumber"] > aged_version


def test_a_different_cause_adds_its_own_alert(sim, client, org):
    mailbox_id = queue_mailbox(sim, approved=False)
    schedule_test(client, mailbox_id)
    finished(sim, mailbox_id)
    tables.update(
        sim.store,
        "queues",
        tables.find_row(sim.store, "mailboxes", mailbox_id)["_regardingobjectid_value"],
        {"emailrouteraccessapproval": 1},
    )
    schedule_test(client, mailbox_id)
    finished(sim, mailbox_id)
    codes = sorted(alert["tracecode"] for alert in alerts(sim, mailbox_id))
    assert codes == [dataverse.TRACECODE_MAILBOX_NOT_IN_EXCHANGE_ONLINE, dataverse.TRACECODE_ADDRESS_NOT_APPROVED]


def test_a_withdrawn_schedule_is_not_run(sim, client, org):
    add_graph_user(sim.store, ADDRESS)
    mailbox_id = queue_mailbox(sim)
    sim.settings["test_enable_delay_seconds"] = 0.2
    schedule_test(client, mailbox_id)
    client.patch(f"mailboxes({mailbox_id})", {"testemailconfigurationscheduled": False})
    wait_until(lambda: sim.scheduler.pending() == 0)
    mailbox = sim.store.table("mailboxes")[mailbox_id]
    assert mailbox["mailboxstatus"] == 0
