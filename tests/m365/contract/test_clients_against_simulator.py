"""Contract tests: the portal's real clients, over HTTPS, against the tenant simulator.

The simulator runs as its own process; the clients are configured with nothing
but the environment it printed (``portal.env``), exactly as the portal is.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from portal.m365.budget import redis_connection
from portal.m365.config import load_m365_config
from portal.m365.dataverse import BatchOperation, ChangeSet, DataverseClient, DataverseClientPool
from portal.m365.errors import ConcurrencyError, ValidationError
from portal.m365.exchange import ExchangeAdminClient
from portal.m365.graph import GraphClient
from portal.m365.rows import Mailbox
from portal.m365.simulator.tls import certificate_thumbprint


@pytest.fixture
def config(fresh_sim):
    return load_m365_config(fresh_sim.portal_env())


@pytest.fixture
def dataverse(config):
    return DataverseClient(config, config.registrations[0])


def _calls(sim, since, *, surface=None, app=None):
    return [
        entry
        for entry in sim.ledger(since)
        if (surface is None or entry["surface"] == surface) and (app is None or entry["app"] == app)
    ]


def test_configuration_from_the_printed_environment_alone(fresh_sim, config):
    assert config.enabled
    assert config.dataverse_url == f"{fresh_sim.base_url}/dataverse"
    assert [r.client_id for r in config.registrations] == [
        fresh_sim.env["M365_CLIENT_ID"],
        fresh_sim.env["M365_CLIENT_ID_2"],
    ]


def test_whoami(dataverse, fresh_sim):
    who = dataverse.who_am_i()
    assert who.user_id and who.business_unit_id and who.organization_id


def test_paging_reads_every_row_through_next_links(fresh_sim, dataverse):
    since = fresh_sim.last_seq()
    ids = [row["mailboxid"] for row in dataverse.iter_rows("mailboxes", select=["mailboxid"], page_size=5000)]
    # Other tests add mailboxes to the shared simulator, so compare with what it holds now.
    stored = fresh_sim.control("GET", "state")["counts"]["mailboxes"]
    assert len(ids) == len(set(ids)) == stored > 5000
    pages = _calls(fresh_sim, since, surface="dataverse")
    assert len(pages) == 2
    assert "$skiptoken" in pages[1]["query"]
    assert all("$skip=" not in page["query"] for page in pages)


def test_typed_rows_parse_what_the_simulator_serves(dataverse):
    mailboxes = list(dataverse.iter_typed(Mailbox, filter="incomingemaildeliverymethod eq 2", page_size=500))
    assert mailboxes
    assert all(mailbox.etag for mailbox in mailboxes)


def test_a_throttling_storm_is_waited_out_exactly_as_retry_after_says(fresh_sim, config):
    client = DataverseClient(config, config.registrations[1])
    client.who_am_i()  # the token, outside the measured calls
    fresh_sim.control("PUT", "limits", {"max_requests": 4, "window_seconds": 3})
    since = fresh_sim.last_seq()
    for _ in range(10):
        client.who_am_i()
    calls = _calls(fresh_sim, since, surface="dataverse", app=config.registrations[1].client_id)
    throttled = [call for call in calls if call["status"] == 429]
    assert throttled, "the limits should have been hit"
    assert sum(call["status"] == 200 for call in calls) == 10
    for call in throttled:
        later = [other for other in calls if other["seq"] > call["seq"]]
        assert later, "every 429 was followed by a retry"
        assert later[0]["at"] >= call["at"] + call["retry_after"] - 0.05, (call, later[0])


def test_injected_429s_on_reads_are_retried_after_retry_after(fresh_sim, config):
    client = DataverseClient(config, config.registrations[0])
    client.who_am_i()
    fresh_sim.control("PUT", "faults", {"rate_429": 0.4, "retry_after": 1, "seed": 1, "surfaces": ["dataverse"]})
    since = fresh_sim.last_seq()
    for _ in range(6):
        client.who_am_i()
    calls = _calls(fresh_sim, since, surface="dataverse", app=config.registrations[0].client_id)
    assert any(call["status"] == 429 for call in calls)
    for index, call in enumerate(calls[:-1]):
        if call["status"] == 429:
            assert calls[index + 1]["at"] >= call["at"] + call["retry_after"] - 0.05


def test_a_stale_etag_is_a_concurrency_error_and_changes_nothing(fresh_sim, dataverse):
    row = next(dataverse.iter_rows("mailboxes", select=["mailboxid", "emailaddress"], page_size=1))
    mailbox = dataverse.get_typed(Mailbox, row["mailboxid"])
    # Someone changes the mailbox in Dynamics after we read it.
    fresh_sim.control("PATCH", f"state/mailboxes/{mailbox.id}", {"name": "Changed in Dynamics"})
    with pytest.raises(ConcurrencyError) as caught:
        dataverse.update("mailboxes", mailbox.id, {"incomingemaildeliverymethod": 0}, etag=mailbox.etag)
    assert caught.value.status == 412
    assert caught.value.code == "0x80060882"
    assert fresh_sim.row("mailboxes", mailbox.id)["incomingemaildeliverymethod"] == (mailbox.incoming_delivery_method)


def test_create_answers_with_the_new_id_in_odata_entity_id(fresh_sim, dataverse):
    name = f"Contract queue {uuid.uuid4().hex[:6]}"
    queue_id = dataverse.create("queues", {"name": name, "emailaddress": f"{uuid.uuid4().hex[:8]}@example.gov.uk"})
    stored = fresh_sim.row("queues", queue_id)
    assert stored["name"] == name
    # Creating the queue created its mailbox, as Dataverse does.
    assert fresh_sim.row("mailboxes", stored["_defaultmailbox_value"])["_regardingobjectid_value"] == queue_id


def test_a_failing_change_set_rolls_back_as_a_whole(fresh_sim, dataverse):
    rows = list(dataverse.iter_rows("queues", select=["queueid", "description"], page_size=2))[:2]
    first, second = rows
    results = dataverse.batch(
        [
            ChangeSet(
                [
                    BatchOperation.update("queues", first["queueid"], {"description": "changed by the batch"}),
                    BatchOperation.update("queues", second["queueid"], {"nosuchcolumn": 1}),
                ]
            )
        ]
    )
    assert any(result.error is not None for result in results)
    failed = next(result for result in results if result.status is not None and result.status >= 400)
    assert isinstance(failed.error, ValidationError)
    assert fresh_sim.row("queues", first["queueid"])["description"] == first["description"]


def test_work_spreads_across_application_users(fresh_sim, config):
    # Start both application users with empty budgets, so neither has more room than the other.
    connection = redis_connection()
    for registration in config.registrations:
        for key in connection.scan_iter(f"*{registration.client_id}*"):
            connection.delete(key)
    # Every application user is allowed; the policy that narrows them is tested in tests/policy.
    pool = DataverseClientPool(config, allowed_names=lambda: ())
    assert len(pool.clients) == 2
    since = fresh_sim.last_seq()
    for _ in range(6):
        pool.client().who_am_i()
    apps = {call["app"] for call in _calls(fresh_sim, since, surface="dataverse")}
    assert apps == {r.client_id for r in config.registrations}


def test_certificate_credential_and_one_token_for_many_calls(fresh_sim, config):
    cert_path = Path(fresh_sim.state_dir) / "app1-cert.pem"
    registration = replace(
        config.registrations[0],
        client_secret="",
        cert_path=str(cert_path),
        cert_thumbprint=certificate_thumbprint(cert_path),
    )
    since = fresh_sim.last_seq()
    client = DataverseClient(config, registration)
    for _ in range(12):
        client.who_am_i()
    token_requests = [
        call for call in _calls(fresh_sim, since, surface="entra") if call["path"].endswith("/oauth2/v2.0/token")
    ]
    assert len(token_requests) == 1
    assert len(_calls(fresh_sim, since, surface="dataverse")) == 12


def test_graph_presence_tells_exchange_online_from_on_premises(fresh_sim, config):
    users = fresh_sim.control("GET", "rows/graph_users")["value"]
    on_prem = next(u for u in users if u["mailbox_location"] == "on_premises")
    online = next(u for u in users if u["mailbox_location"] == "exchange_online" and u["userPurpose"] == "user")
    graph = GraphClient(config)
    absent = graph.mailbox_presence(on_prem["userPrincipalName"])
    assert not absent.in_exchange_online
    assert absent.reason.value == "mailbox_not_enabled_for_rest_api"
    present = graph.mailbox_presence(online["userPrincipalName"])
    assert present.in_exchange_online and present.user_purpose == "user"
    assert graph.get_user("nobody-here@example.gov.uk") is None


def test_exchange_admin_creates_a_shared_mailbox_once(fresh_sim, config):
    exchange = ExchangeAdminClient(config)
    address = f"contract-{uuid.uuid4().hex[:8]}@example.gov.uk"
    assert exchange.get_mailbox(address) is None
    created = exchange.new_shared_mailbox(
        name=address.split("@")[0], display_name="Contract team", primary_smtp_address=address
    )
    assert created["RecipientTypeDetails"] == "SharedMailbox"
    assert exchange.get_mailbox(address)["PrimarySmtpAddress"] == address
    assert GraphClient(config).mailbox_presence(address).user_purpose == "shared"


def test_transient_faults_on_reads_are_survived(fresh_sim, dataverse):
    fresh_sim.control("PUT", "faults", {"rate_5xx": 0.3, "rate_drop": 0.1, "seed": 3, "surfaces": ["dataverse"]})
    started = time.monotonic()
    for _ in range(5):
        assert dataverse.who_am_i().user_id
    assert time.monotonic() - started < 60
