"""The Dataverse client as an operator sees it: retries, conditional writes, paging, $batch, budgets."""

from __future__ import annotations

import json
import logging
import uuid
from urllib.parse import parse_qs, urlsplit

import pytest

from portal.m365.dataverse import (
    BatchOperation,
    ChangeSet,
    DataverseClient,
    DataverseClientPool,
    bind,
    odata_string,
)
from portal.m365.errors import (
    ConcurrencyError,
    NotFoundError,
    ResponseFormatError,
    ThrottledError,
    TransientError,
    ValidationError,
)
from portal.m365.rows import IncomingDeliveryMethod, Mailbox
from tests.m365.clients.conftest import DATAVERSE_API, make_config, registration

QUEUE_ID = "0a6f2b1e-54c1-4c52-9b4f-1d6e0d7a3c11"
MAILBOX_ID = "7d1e4b02-9c3a-4e1f-8b6d-5a2c9f0e4b22"
WHO_AM_I = {
    "BusinessUnitId": "11111111-1111-4111-8111-111111111111",
    "UserId": "22222222-2222-4222-8222-222222222222",
    "OrganizationId": "33333333-3333-4333-8333-333333333333",
}
STALE = {"error": {"code": "0x80060882", "message": "The version of the existing record doesn't match the RowVersion."}}
THROTTLED = {
    "error": {
        "code": "0x80072322",
        "message": "Number of requests exceeded the limit of 6000 over time window of 300 seconds.",
    }
}


@pytest.fixture
def budget(make_budget):
    return make_budget()


@pytest.fixture
def client(config, budget, fake_time, entra):
    return DataverseClient(
        config, config.registrations[0], budget=budget, sleep=fake_time.sleep, clock=fake_time.monotonic
    )


def _mailbox_row(number: int) -> dict:
    return {
        "@odata.etag": f'W/"{1000 + number}"',
        "mailboxid": str(uuid.UUID(int=number)),
        "emailaddress": f"team{number}@example.gov.uk",
        "incomingemaildeliverymethod": 2,
    }


def test_who_am_i_sends_the_odata_headers_and_a_bearer_token(client, requests_mock):
    requests_mock.get(f"{DATAVERSE_API}WhoAmI", json=WHO_AM_I)

    me = client.who_am_i()

    assert me.user_id == WHO_AM_I["UserId"]
    sent = requests_mock.last_request
    assert sent.headers["Accept"] == "application/json"
    assert sent.headers["OData-MaxVersion"] == "4.0"
    assert sent.headers["OData-Version"] == "4.0"
    assert sent.headers["Authorization"] == "Bearer access-token-1"
    assert sent.timeout == (5.0, 5.0)


def test_a_throttled_read_is_retried_after_exactly_the_retry_after(client, requests_mock, fake_time):
    requests_mock.get(
        f"{DATAVERSE_API}WhoAmI",
        [{"status_code": 429, "headers": {"Retry-After": "7"}, "json": THROTTLED}, {"json": WHO_AM_I}],
    )

    assert client.who_am_i().organization_id == WHO_AM_I["OrganizationId"]

    assert fake_time.sleeps == [7.0]
    assert [r.url for r in requests_mock.request_history if "WhoAmI" in r.url] == [f"{DATAVERSE_API}WhoAmI"] * 2


def test_a_read_woken_early_sleeps_the_rest_of_the_retry_after(config, budget, requests_mock, entra, fake_time):
    calls = []

    def light_sleeper(seconds):  # woken 2 s early the first time
        calls.append(seconds)
        fake_time.now += seconds - 2 if len(calls) == 1 else seconds

    client = DataverseClient(
        config, config.registrations[0], budget=budget, sleep=light_sleeper, clock=fake_time.monotonic
    )
    requests_mock.get(
        f"{DATAVERSE_API}WhoAmI",
        [{"status_code": 429, "headers": {"Retry-After": "7"}, "json": THROTTLED}, {"json": WHO_AM_I}],
    )

    client.who_am_i()

    assert calls == [7.0, 2.0]


def test_reads_retry_5xx_and_dropped_connections_with_backoff_then_give_up(client, requests_mock, fake_time):
    import requests

    requests_mock.get(
        f"{DATAVERSE_API}WhoAmI",
        [
            {"status_code": 503, "text": "<html>Service Unavailable</html>"},
            {"exc": requests.ConnectionError("connection reset")},
            {"exc": requests.ReadTimeout("read timed out")},
            {"status_code": 502, "text": "bad gateway"},
        ],
    )

    with pytest.raises(TransientError) as raised:
        client.who_am_i()

    assert raised.value.status == 502
    assert len(fake_time.sleeps) == 3  # four attempts in all
    assert all(0 < wait <= 8 for wait in fake_time.sleeps)


def test_a_throttled_write_raises_with_retry_after_and_is_not_retried(client, requests_mock, fake_time):
    requests_mock.patch(
        f"{DATAVERSE_API}mailboxes({MAILBOX_ID})",
        status_code=429,
        headers={"Retry-After": "30", "REQ_ID": "req-429"},
        json=THROTTLED,
    )

    with pytest.raises(ThrottledError) as raised:
        client.update("mailboxes", MAILBOX_ID, {"testemailconfigurationscheduled": True})

    error = raised.value
    assert (error.status, error.code, error.retry_after, error.request_id) == (429, "0x80072322", 30.0, "req-429")
    assert error.is_transient
    assert len([r for r in requests_mock.request_history if r.method == "PATCH"]) == 1
    assert fake_time.sleeps == []


def test_a_429_on_one_worker_makes_the_next_worker_wait(config, make_budget, requests_mock, entra, fake_time):
    worker_a = DataverseClient(config, config.registrations[0], budget=make_budget(), sleep=fake_time.sleep)
    worker_b = DataverseClient(
        config, config.registrations[0], budget=make_budget(), sleep=fake_time.sleep, clock=fake_time.monotonic
    )
    requests_mock.patch(
        f"{DATAVERSE_API}queues({QUEUE_ID})", status_code=429, headers={"Retry-After": "20"}, json=THROTTLED
    )
    requests_mock.get(f"{DATAVERSE_API}WhoAmI", json=WHO_AM_I)

    with pytest.raises(ThrottledError):
        worker_a.update("queues", QUEUE_ID, {"name": "Team"})
    worker_b.who_am_i()

    assert fake_time.sleeps == [20.0]  # worker B waited out A's Retry-After before sending


def test_a_stale_etag_is_a_concurrency_error(client, requests_mock):
    requests_mock.patch(f"{DATAVERSE_API}mailboxes({MAILBOX_ID})", status_code=412, json=STALE)

    with pytest.raises(ConcurrencyError) as raised:
        client.update("mailboxes", MAILBOX_ID, {"emailrouteraccessapproval": 1}, etag='W/"1001"')

    assert raised.value.code == "0x80060882"
    assert requests_mock.last_request.headers["If-Match"] == 'W/"1001"'


def test_an_update_without_etag_never_creates_a_missing_row(client, requests_mock):
    requests_mock.patch(
        f"{DATAVERSE_API}queues({QUEUE_ID})",
        status_code=404,
        json={"error": {"code": "0x80040217", "message": "queue With Id = x Does Not Exist"}},
    )

    with pytest.raises(NotFoundError):
        client.update("queues", QUEUE_ID, {"name": "Team"})

    assert requests_mock.last_request.headers["If-Match"] == "*"


def test_update_and_delete_send_their_body_and_conditions(client, requests_mock):
    requests_mock.patch(
        f"{DATAVERSE_API}mailboxes({MAILBOX_ID})", status_code=200, json={"mailboxid": MAILBOX_ID, "name": "x"}
    )
    requests_mock.delete(f"{DATAVERSE_API}queues({QUEUE_ID})", status_code=204)

    row = client.update(
        "mailboxes",
        MAILBOX_ID,
        {"emailserverprofile@odata.bind": bind("emailserverprofiles", QUEUE_ID)},
        return_representation=True,
    )
    patch = requests_mock.request_history[-1]
    client.delete("queues", QUEUE_ID, etag='W/"5"')

    assert row["mailboxid"] == MAILBOX_ID
    assert patch.json() == {"emailserverprofile@odata.bind": f"/emailserverprofiles({QUEUE_ID})"}
    assert patch.headers["Prefer"] == "return=representation"
    assert patch.headers["Content-Type"] == "application/json; charset=utf-8"
    assert requests_mock.last_request.headers["If-Match"] == 'W/"5"'


def test_create_reads_the_new_id_from_odata_entityid(client, requests_mock):
    requests_mock.post(
        f"{DATAVERSE_API}queues", status_code=204, headers={"OData-EntityId": f"{DATAVERSE_API}queues({QUEUE_ID})"}
    )

    created = client.create("queues", {"name": "Finance team", "emailaddress": "finance@example.gov.uk"})

    assert created == QUEUE_ID
    assert requests_mock.last_request.json() == {"name": "Finance team", "emailaddress": "finance@example.gov.uk"}
    assert "Prefer" not in requests_mock.last_request.headers


def test_create_without_an_entity_id_is_a_format_error(client, requests_mock):
    requests_mock.post(f"{DATAVERSE_API}queues", status_code=204)

    with pytest.raises(ResponseFormatError):
        client.create("queues", {"name": "Finance team"})


def test_create_can_return_the_row(client, requests_mock):
    requests_mock.post(f"{DATAVERSE_API}queues", status_code=201, json={"queueid": QUEUE_ID, "name": "Finance"})

    row = client.create("queues", {"name": "Finance"}, return_representation=True)

    assert row["queueid"] == QUEUE_ID
    assert requests_mock.last_request.headers["Prefer"] == "return=representation"


def test_paging_follows_next_link_to_the_end_and_never_sends_skip(client, requests_mock):
    next_link = f"{DATAVERSE_API}mailboxes?$select=mailboxid&$skiptoken=%3Ccookie%20pagenumber=%222%22/%3E"
    requests_mock.get(
        f"{DATAVERSE_API}mailboxes",
        [
            {"json": {"value": [_mailbox_row(1), _mailbox_row(2)], "@odata.nextLink": next_link}},
            {"json": {"value": [_mailbox_row(3)]}},
        ],
    )

    rows = list(
        client.iter_rows(
            "mailboxes",
            select=["mailboxid", "emailaddress"],
            filter="emailaddress eq " + odata_string("o'neill@example.gov.uk"),
            page_size=2,
        )
    )

    assert [row["mailboxid"] for row in rows] == [str(uuid.UUID(int=n)) for n in (1, 2, 3)]
    first, second = [r for r in requests_mock.request_history if "/mailboxes" in r.url]
    assert parse_qs(urlsplit(first.url).query)["$select"] == ["mailboxid,emailaddress"]
    assert parse_qs(urlsplit(first.url).query)["$filter"] == ["emailaddress eq 'o''neill@example.gov.uk'"]
    assert second.url == next_link
    for sent in (first, second):
        assert "$skip" not in parse_qs(urlsplit(sent.url).query)
        assert sent.headers["Prefer"] == "odata.maxpagesize=2"


def test_paging_is_lazy(client, requests_mock):
    requests_mock.get(
        f"{DATAVERSE_API}mailboxes",
        [{"json": {"value": [_mailbox_row(1)], "@odata.nextLink": f"{DATAVERSE_API}mailboxes?$skiptoken=2"}}],
    )

    pages = client.iter_rows("mailboxes", select=["mailboxid"])
    next(pages)

    assert len([r for r in requests_mock.request_history if "/mailboxes" in r.url]) == 1


def test_a_next_link_to_another_host_is_refused(client, requests_mock):
    requests_mock.get(
        f"{DATAVERSE_API}mailboxes",
        json={"value": [], "@odata.nextLink": "https://attacker.example.test/api/data/v9.2/mailboxes?$skiptoken=1"},
    )

    with pytest.raises(ResponseFormatError):
        list(client.iter_rows("mailboxes", select=["mailboxid"]))


def test_typed_rows_select_their_columns_and_parse_choices(client, requests_mock):
    requests_mock.get(f"{DATAVERSE_API}mailboxes", json={"value": [_mailbox_row(7)]})

    (mailbox,) = client.iter_typed(Mailbox, filter="isforwardmailbox eq false")

    assert mailbox.id == str(uuid.UUID(int=7))
    assert mailbox.etag == 'W/"1007"'
    assert mailbox.incoming_delivery_method is IncomingDeliveryMethod.SERVER_SIDE_SYNC_OR_EMAIL_ROUTER
    sent = parse_qs(urlsplit(requests_mock.last_request.url).query)
    assert sent["$select"] == [",".join(Mailbox.SELECT)]


def test_annotations_are_asked_for_with_the_page_size(client, requests_mock):
    requests_mock.get(f"{DATAVERSE_API}queues", json={"value": []})

    list(client.iter_rows("queues", select=["queueid"], annotations=True))

    assert requests_mock.last_request.headers["Prefer"] == 'odata.maxpagesize=5000,odata.include-annotations="*"'


def test_get_missing_row_is_not_found_with_the_service_code_and_request_id(client, requests_mock):
    requests_mock.get(
        f"{DATAVERSE_API}mailboxes({MAILBOX_ID})",
        status_code=404,
        headers={"REQ_ID": "7f3e", "x-ms-service-request-id": "other"},
        json={"error": {"code": "0x80040217", "message": f"mailbox With Id = {MAILBOX_ID} Does Not Exist"}},
    )

    with pytest.raises(NotFoundError) as raised:
        client.get("mailboxes", MAILBOX_ID, select=["mailboxid"])

    error = raised.value
    assert (error.status, error.code, error.request_id, error.service) == (404, "0x80040217", "7f3e", "dataverse")
    assert "Does Not Exist" in error.message
    assert error.url == f"{DATAVERSE_API}mailboxes({MAILBOX_ID})"
    assert not error.is_transient


def test_an_unparseable_answer_is_a_format_error_and_not_retried(client, requests_mock, fake_time):
    requests_mock.get(f"{DATAVERSE_API}WhoAmI", text="<html>login page</html>", headers={"Content-Type": "text/html"})

    with pytest.raises(ResponseFormatError):
        client.who_am_i()

    assert fake_time.sleeps == []


def test_row_ids_are_checked_before_they_reach_a_url(client):
    with pytest.raises(ValueError, match="not a Dataverse row id"):
        client.get("mailboxes", "x)/../systemusers(", select=["mailboxid"])


def test_each_attempt_logs_one_line_without_the_token(client, requests_mock, caplog, config):
    requests_mock.get(f"{DATAVERSE_API}WhoAmI", json=WHO_AM_I, headers={"REQ_ID": "req-1"})

    with caplog.at_level(logging.INFO, logger="portal.m365"):
        client.who_am_i()

    lines = [r.getMessage() for r in caplog.records if r.name == "portal.m365"]
    dataverse_lines = [line for line in lines if line.startswith("service=dataverse")]
    assert len(dataverse_lines) == 1
    line = dataverse_lines[0]
    assert "method=GET path=/api/data/v9.2/WhoAmI status=200 ms=" in line
    assert f"request_id=req-1 app={config.registrations[0].client_id} attempt=1" in line
    assert all("access-token" not in text and "secret" not in text for text in lines)


# --- $batch -------------------------------------------------------------------------------------


def _batch_answer(status: int, parts: str, boundary: str = "batchresponse_1") -> dict:
    return {
        "status_code": status,
        "headers": {"Content-Type": f"multipart/mixed; boundary={boundary}", "OData-Version": "4.0"},
        "content": parts.replace("\n", "\r\n").encode(),
    }


def test_batch_builds_change_sets_and_parses_every_answer(client, requests_mock):
    body = f"""--batchresponse_1
Content-Type: multipart/mixed; boundary=changesetresponse_a

--changesetresponse_a
Content-Type: application/http
Content-Transfer-Encoding: binary
Content-ID: 1

HTTP/1.1 204 No Content
OData-Version: 4.0
OData-EntityId: {DATAVERSE_API}queues({QUEUE_ID})


--changesetresponse_a
Content-Type: application/http
Content-Transfer-Encoding: binary
Content-ID: 2

HTTP/1.1 204 No Content
OData-Version: 4.0


--changesetresponse_a--
--batchresponse_1
Content-Type: application/http
Content-Transfer-Encoding: binary

HTTP/1.1 200 OK
Content-Type: application/json; odata.metadata=minimal
OData-Version: 4.0

{{"value": [{{"mailboxid": "{MAILBOX_ID}"}}]}}
--batchresponse_1--
"""
    requests_mock.post(f"{DATAVERSE_API}$batch", **_batch_answer(200, body))

    results = client.batch(
        [
            ChangeSet(
                [
                    BatchOperation.create("queues", {"name": "Finance", "emailaddress": "finance@example.gov.uk"}),
                    BatchOperation.update("mailboxes", MAILBOX_ID, {"emailrouteraccessapproval": 1}, etag='W/"9"'),
                ]
            ),
            BatchOperation.get("mailboxes", select=["mailboxid"], filter="emailaddress eq 'finance@example.gov.uk'"),
        ]
    )

    assert [r.status for r in results] == [204, 204, 200]
    assert all(r.ok for r in results)
    assert results[0].entity_id == QUEUE_ID
    assert results[2].body == {"value": [{"mailboxid": MAILBOX_ID}]}

    sent = requests_mock.last_request
    boundary = sent.headers["Content-Type"].split("boundary=")[1]
    text = sent.body.decode()
    assert sent.headers["Content-Type"].startswith("multipart/mixed; boundary=batch_")
    assert text.startswith(f"--{boundary}\r\nContent-Type: multipart/mixed; boundary=changeset_")
    assert text.endswith(f"--{boundary}--\r\n")
    assert "Content-ID: 1\r\n\r\nPOST https://contoso.crm11.example.test/api/data/v9.2/queues HTTP/1.1\r\n" in text
    assert f"Content-ID: 2\r\n\r\nPATCH {DATAVERSE_API}mailboxes({MAILBOX_ID}) HTTP/1.1\r\n" in text
    assert 'If-Match: W/"9"\r\n' in text
    assert "Content-Type: application/json; type=entry\r\n" in text
    assert '\r\n\r\n{"name":"Finance","emailaddress":"finance@example.gov.uk"}\r\n--changeset_' in text
    assert (
        f"GET {DATAVERSE_API}mailboxes?$select=mailboxid&$filter=emailaddress%20eq%20'finance@example.gov.uk'" in text
    )
    assert "Prefer" not in sent.headers


def test_a_failed_change_set_rolls_back_and_stops_the_batch(client, requests_mock):
    body = """--batchresponse_2
Content-Type: multipart/mixed; boundary=changesetresponse_b

--changesetresponse_b
Content-Type: application/http
Content-Transfer-Encoding: binary
Content-ID: 2

HTTP/1.1 400 Bad Request
REQ_ID: 5ecd1cb3
Content-Type: application/json; odata.metadata=minimal
OData-Version: 4.0

{"error":{"code":"0x80044331","message":"A validation error occurred. The 'name' attribute is too long."}}
--changesetresponse_b--
--batchresponse_2--
"""
    requests_mock.post(f"{DATAVERSE_API}$batch", **_batch_answer(400, body, "batchresponse_2"))

    created, renamed, checked = client.batch(
        [
            ChangeSet(
                [
                    BatchOperation.create("queues", {"name": "Finance"}),
                    BatchOperation.update("queues", QUEUE_ID, {"name": "x" * 200}),
                ]
            ),
            BatchOperation.get("queues", QUEUE_ID, select=["name"]),
        ]
    )

    assert created.status is None and created.error.code == "rolled_back"
    assert "operation 2" in created.error.message and "0x80044331" in created.error.message
    assert renamed.status == 400
    assert isinstance(renamed.error, ValidationError)
    assert (renamed.error.code, renamed.error.request_id) == ("0x80044331", "5ecd1cb3")
    assert checked.status is None and checked.error.code == "not_run"
    assert not any(r.ok for r in (created, renamed, checked))


def test_batch_can_continue_past_failures(client, requests_mock):
    body = """--batchresponse_3
Content-Type: application/http
Content-Transfer-Encoding: binary

HTTP/1.1 404 Not Found
Content-Type: application/json

{"error":{"code":"0x80040217","message":"queue Does Not Exist"}}
--batchresponse_3
Content-Type: application/http
Content-Transfer-Encoding: binary

HTTP/1.1 204 No Content


--batchresponse_3--
"""
    requests_mock.post(f"{DATAVERSE_API}$batch", **_batch_answer(200, body, "batchresponse_3"))

    missing, deleted = client.batch(
        [BatchOperation.delete("queues", QUEUE_ID), BatchOperation.delete("mailboxes", MAILBOX_ID)],
        continue_on_error=True,
    )

    assert isinstance(missing.error, NotFoundError)
    assert deleted.ok
    assert requests_mock.last_request.headers["Prefer"] == "odata.continue-on-error"


def test_a_batch_refused_as_a_whole_raises(client, requests_mock):
    requests_mock.post(f"{DATAVERSE_API}$batch", status_code=429, headers={"Retry-After": "5"}, json=THROTTLED)

    with pytest.raises(ThrottledError):
        client.batch([BatchOperation.delete("queues", QUEUE_ID)])

    assert len([r for r in requests_mock.request_history if r.url.endswith("$batch")]) == 1


def test_a_change_set_refuses_reads_and_a_batch_its_size():
    with pytest.raises(ValueError, match="GET is not allowed"):
        ChangeSet([BatchOperation.get("queues", QUEUE_ID, select=["name"])])


def test_a_batch_over_a_thousand_requests_is_refused_before_sending(client, requests_mock):
    with pytest.raises(ValueError, match="1 to 1000"):
        client.batch([BatchOperation.delete("queues", QUEUE_ID)] * 1001)

    assert not [r for r in requests_mock.request_history if r.url.endswith("$batch")]


# --- several application users ------------------------------------------------------------------
# These pools allow every application user without reading the policy: these tests have no database.


def test_the_pool_sends_work_to_the_application_user_with_most_room(make_budget, entra, requests_mock):
    first, second = registration("1"), registration("2")
    config = make_config(first, second)
    budget = make_budget(max_concurrent=4)
    pool = DataverseClientPool(config, budget=budget, allowed_names=lambda: ())
    held = [budget.acquire(first.client_id) for _ in range(3)]  # app 1 is busy

    assert [client.registration.client_id for client in pool.clients] == [first.client_id, second.client_id]
    assert pool.client().registration is second

    budget.block(second.client_id, seconds=60)  # app 2 got a 429
    assert pool.client().registration is first
    for lease in held:
        lease.release()


def test_idle_application_users_take_turns(make_budget, entra):
    config = make_config(registration("1"), registration("2"))
    pool = DataverseClientPool(config, budget=make_budget(), allowed_names=lambda: ())

    chosen = {pool.client().registration.name for _ in range(4)}

    assert chosen == {"1", "2"}


def test_each_application_user_spends_its_own_budget(make_budget, entra, requests_mock, fake_time):
    first, second = registration("1"), registration("2")
    config = make_config(first, second)
    budget = make_budget(max_requests=1, max_wait_seconds=0)
    requests_mock.get(f"{DATAVERSE_API}WhoAmI", json=WHO_AM_I)
    pool = DataverseClientPool(
        config, budget=budget, sleep=fake_time.sleep, clock=fake_time.monotonic, allowed_names=lambda: ()
    )

    pool.clients[0].who_am_i()
    pool.clients[1].who_am_i()  # a second application user doubles what the portal may send

    with pytest.raises(TransientError):
        pool.clients[0].who_am_i()
    tokens_for = {json.loads(json.dumps(entra.form(i)))["client_id"] for i in range(len(entra.token_requests))}
    assert tokens_for == {first.client_id, second.client_id}
