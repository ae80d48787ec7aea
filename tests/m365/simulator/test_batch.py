"""$batch on the simulated Dataverse Web API: multipart in and out, atomic change sets, continue-on-error."""

from __future__ import annotations

import pytest

from portal.m365.simulator import batch, tables
from tests.m365.simulator.dataverse_support import (
    API_URL,
    DataverseClient,
    batch_body,
    make_simulator,
    parse_batch_response,
    seed_organisation,
)

BOUNDARY = "batch_80dd1615-2a10-428a-bb6f-0e559792721f"
MISSING = "5f0c3b0e-1111-4222-8333-944455556666"


@pytest.fixture
def sim():
    simulator = make_simulator()
    seed_organisation(simulator.store)
    yield simulator
    simulator.scheduler.stop()


@pytest.fixture
def client(sim):
    return DataverseClient(sim)


def send(client: DataverseClient, items: list, *, prefer: str | None = None, newline: str = "\r\n"):
    headers = {"Content-Type": f'multipart/mixed; boundary="{BOUNDARY}"', "Accept": "application/json"}
    if prefer:
        headers["Prefer"] = prefer
    return client.request("POST", "$batch", headers=headers, body=batch_body(BOUNDARY, items, newline=newline))


def queue_names(sim) -> list[str]:
    return sorted(row["name"] for row in sim.store.table("queues").values())


def test_requests_run_in_order_and_answer_in_order(sim, client):
    response = send(
        client,
        [
            ("POST", "/api/data/v9.2/queues", {"name": "Sales"}, None),
            ("POST", f"{API_URL}queues", {"name": "Support"}, None),
            ("GET", "/api/data/v9.2/queues?$select=name&$orderby=name", None, None),
        ],
    )
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("multipart/mixed; boundary=batchresponse_")
    assert response.headers["OData-Version"] == "4.0"
    created_sales, created_support, listed = parse_batch_response(response)
    assert created_sales.status == 204
    assert created_sales.headers["OData-EntityId"].startswith(f"{API_URL}queues(")
    assert created_sales.headers["Location"] == created_sales.headers["OData-EntityId"]
    assert created_support.status == 204
    assert listed.status == 200
    assert [row["name"] for row in listed.payload()["value"]] == ["Sales", "Support"]
    assert response.applied


def test_change_set_with_content_id_references(sim, client):
    unit = next(iter(sim.store.table("businessunits")))
    response = send(
        client,
        [
            [
                ("POST", "/api/data/v9.2/queues", {"name": "Sales"}, "1"),
                ("PATCH", "$1", {"businessunitid@odata.bind": f"/businessunits({unit})"}, "2"),
                (
                    "POST",
                    "/api/data/v9.2/emails",
                    {"subject": "Hello", "regardingobjectid_queue@odata.bind": "$1"},
                    "3",
                ),
            ]
        ],
    )
    assert response.status == 200
    (change_set,) = parse_batch_response(response)
    assert [part.status for part in change_set] == [204, 204, 204]
    assert [part.content_id for part in change_set] == ["1", "2", "3"]
    queue_id = change_set[0].headers["OData-EntityId"].rsplit("(", 1)[1].rstrip(")")
    assert sim.store.table("queues")[queue_id]["_businessunitid_value"] == unit
    (email,) = sim.store.table("emails").values()
    assert email["_regardingobjectid_value"] == queue_id
    assert email["regardingobjecttypecode"] == "queue"


def test_a_failing_change_set_is_rolled_back_as_a_whole(sim, client):
    mailboxes_before = dict(sim.store.table("mailboxes"))
    response = send(
        client,
        [
            [
                ("POST", "/api/data/v9.2/queues", {"name": "Sales", "emailaddress": "sales@contoso.com"}, "1"),
                ("POST", "/api/data/v9.2/queues", {"name": "Support"}, "2"),
                ("PATCH", f"/api/data/v9.2/queues({MISSING})", {"name": "Nobody"}, "3"),
            ]
        ],
    )
    assert response.status == 404
    (failure,) = parse_batch_response(response)
    assert failure.status == 404
    assert failure.content_id == "3"
    assert failure.payload()["error"]["code"] == "0x80040217"
    assert queue_names(sim) == []
    assert sim.store.table("mailboxes") == mailboxes_before  # the queues' mailboxes went too
    assert not response.applied


def test_processing_stops_at_the_first_failure_without_continue_on_error(sim, client):
    response = send(
        client,
        [
            ("POST", "/api/data/v9.2/queues", {"name": "Sales"}, None),
            ("POST", "/api/data/v9.2/queues", {"Name": "Wrong"}, None),
            ("POST", "/api/data/v9.2/queues", {"name": "Support"}, None),
        ],
    )
    assert response.status == 400
    parts = parse_batch_response(response)
    assert [part.status for part in parts] == [204, 400]
    assert "REQ_ID" in parts[1].headers
    assert queue_names(sim) == ["Sales"]


def test_continue_on_error_runs_the_rest(sim, client):
    response = send(
        client,
        [
            ("POST", "/api/data/v9.2/queues", {"Name": "Wrong"}, None),
            [("PATCH", f"/api/data/v9.2/queues({MISSING})", {"name": "Nobody"}, "1")],
            ("POST", "/api/data/v9.2/queues", {"name": "Support"}, None),
        ],
        prefer="odata.continue-on-error",
    )
    assert response.status == 200
    assert response.headers["Preference-Applied"] == "odata.continue-on-error"
    parts = parse_batch_response(response)
    assert [part.status for part in parts] == [400, 404, 204]
    assert queue_names(sim) == ["Support"]


def test_get_is_not_allowed_in_a_change_set(sim, client):
    response = send(client, [[("GET", "/api/data/v9.2/queues", None, "1")]])
    assert response.status == 400
    assert "GET" in response.payload()["error"]["message"]


def test_at_most_1000_requests(sim, client):
    items = [("POST", "/api/data/v9.2/queues", {"name": f"Queue {number}"}, None) for number in range(1001)]
    response = send(client, items)
    assert response.status == 400
    assert "at most 1000" in response.payload()["error"]["message"]
    assert queue_names(sim) == []


def test_references_must_be_declared_earlier_in_the_change_set(sim, client):
    response = send(
        client,
        [
            [
                ("POST", "/api/data/v9.2/emails", {"subject": "x", "regardingobjectid_queue@odata.bind": "$2"}, "1"),
                ("POST", "/api/data/v9.2/queues", {"name": "Sales"}, "2"),
            ]
        ],
    )
    (failure,) = parse_batch_response(response)
    assert failure.status == 400
    assert failure.payload()["error"]["message"] == "Content-ID Reference: '$2' does not exist in the batch context."


def test_bare_line_feeds_are_accepted(sim, client):
    response = send(client, [("POST", "/api/data/v9.2/queues", {"name": "Sales"}, None)], newline="\n")
    assert response.status == 200
    assert queue_names(sim) == ["Sales"]


def test_a_mailbox_test_queued_in_a_rolled_back_change_set_never_runs(sim, client):
    queue = tables.insert(sim.store, "queues", {"name": "Sales", "emailaddress": "sales@contoso.com"})
    mailbox_id = queue["_defaultmailbox_value"]
    send(
        client,
        [
            [
                ("PATCH", f"/api/data/v9.2/mailboxes({mailbox_id})", {"testemailconfigurationscheduled": True}, "1"),
                ("PATCH", f"/api/data/v9.2/queues({MISSING})", {"name": "Nobody"}, "2"),
            ]
        ],
    )
    assert sim.scheduler.pending() == 0
    assert sim.store.table("mailboxes")[mailbox_id]["testemailconfigurationscheduled"] is False


def test_a_batch_without_a_boundary_is_refused(client):
    response = client.request("POST", "$batch", headers={"Content-Type": "application/json"}, body=b"{}")
    assert response.status == 400


def test_parse_batch_reads_the_documented_example():
    body = (
        b"--batch_AAA123\r\n"
        b"Content-Type: multipart/mixed; boundary=changeset_BBB456\r\n"
        b"\r\n"
        b"--changeset_BBB456\r\n"
        b"Content-Type: application/http\r\n"
        b"Content-Transfer-Encoding:binary\r\n"
        b"Content-ID: 1\r\n"
        b"\r\n"
        b"POST [Organization URI]/api/data/v9.2/accounts HTTP/1.1\r\n"
        b"Content-Type: application/json;type=entry\r\n"
        b"\r\n"
        b'{"name":"QQQQ","revenue": 1.50}\r\n'
        b"--changeset_BBB456--\r\n"
        b"--batch_AAA123\r\n"
        b"Content-Type: application/http\r\n"
        b"Content-Transfer-Encoding:binary\r\n"
        b"\r\n"
        b"GET /api/data/v9.2/accounts?$select=name HTTP/1.1\r\n"
        b"\r\n"
        b"\r\n"
        b"--batch_AAA123--\r\n"
    )
    change_set, query = batch.parse_batch("multipart/mixed;boundary=batch_AAA123", body)
    assert isinstance(change_set, batch.ChangeSet)
    (create,) = change_set.operations
    assert (create.method, create.content_id, create.body) == (
        "POST",
        "1",
        b'{"name":"QQQQ","revenue": 1.50}',
    )
    assert isinstance(query, batch.Operation)
    assert (query.method, query.url, query.body) == ("GET", "/api/data/v9.2/accounts?$select=name", b"")
