"""Graph: is a mailbox in Exchange Online, and what kind is it."""

from __future__ import annotations

import pytest

from portal.m365.budget import BudgetExhaustedError, MailboxLimiter
from portal.m365.errors import ThrottledError
from portal.m365.graph import GraphClient, PresenceReason
from tests.m365.clients.conftest import GRAPH_API

NOT_IN_EXO = {
    "error": {
        "code": "MailboxNotEnabledForRESTAPI",
        "message": "The mailbox is either inactive, soft-deleted, or is hosted on-premise.",
        "innerError": {"date": "2026-11-26T18:00:00", "request-id": "rid-404", "client-request-id": "rid-404"},
    }
}
NO_USER = {"error": {"code": "Request_ResourceNotFound", "message": "Resource 'x' does not exist."}}
AMBIGUOUS = {"error": {"code": "ResourceNotFound", "message": "Resource could not be discovered."}}


@pytest.fixture
def limiter(make_budget):
    return MailboxLimiter(budget=make_budget(service="graph", max_concurrent=4, max_requests=9500, window_seconds=600))


@pytest.fixture
def client(config, limiter, entra, fake_time):
    return GraphClient(config, limiter=limiter, sleep=fake_time.sleep, clock=fake_time.monotonic)


def settings_url(upn: str) -> str:
    return f"{GRAPH_API}users/{upn}/mailboxSettings"


def test_a_shared_mailbox_in_exchange_online(client, requests_mock, entra):
    requests_mock.get(
        settings_url("finance@example.gov.uk"),
        json={"userPurpose": "shared", "timeZone": "UTC"},
        headers={"request-id": "rid-200"},
    )

    presence = client.mailbox_presence("finance@example.gov.uk")

    assert presence.in_exchange_online
    assert presence.user_purpose == "shared"
    assert (presence.reason, presence.request_id) == (None, "rid-200")
    assert entra.form()["scope"] == "https://graph.example.test/.default"


def test_an_on_premises_mailbox_is_not_in_exchange_online(client, requests_mock):
    requests_mock.get(settings_url("onprem@example.gov.uk"), status_code=404, json=NOT_IN_EXO)

    presence = client.mailbox_presence("onprem@example.gov.uk")

    assert not presence.in_exchange_online
    assert presence.reason is PresenceReason.MAILBOX_NOT_ENABLED_FOR_REST_API
    assert presence.detail.startswith("The mailbox is either inactive")
    assert presence.request_id == "rid-404"


def test_an_unknown_user_has_its_own_reason(client, requests_mock):
    requests_mock.get(settings_url("nobody@example.gov.uk"), status_code=404, json=NO_USER)

    presence = client.mailbox_presence("nobody@example.gov.uk")

    assert presence.reason is PresenceReason.USER_NOT_FOUND
    assert len([r for r in requests_mock.request_history if "graph" in r.url]) == 1


def test_resource_not_found_asks_the_directory_whether_the_user_exists(client, requests_mock):
    requests_mock.get(settings_url("nomailbox@example.gov.uk"), status_code=404, json=AMBIGUOUS)
    requests_mock.get(
        f"{GRAPH_API}users/nomailbox@example.gov.uk",
        json={"id": "u-1", "userPrincipalName": "nomailbox@example.gov.uk", "accountEnabled": True},
    )
    requests_mock.get(settings_url("ghost@example.gov.uk"), status_code=404, json=AMBIGUOUS)
    requests_mock.get(f"{GRAPH_API}users/ghost@example.gov.uk", status_code=404, json=NO_USER)

    assert client.mailbox_presence("nomailbox@example.gov.uk").reason is PresenceReason.MAILBOX_NOT_FOUND
    assert client.mailbox_presence("ghost@example.gov.uk").reason is PresenceReason.USER_NOT_FOUND


def test_get_user_returns_the_user_or_none(client, requests_mock):
    requests_mock.get(
        f"{GRAPH_API}users/asha@example.gov.uk",
        json={
            "id": "9f1b",
            "displayName": "Asha Rao",
            "mail": "asha@example.gov.uk",
            "userPrincipalName": "asha@example.gov.uk",
            "accountEnabled": True,
        },
    )
    requests_mock.get(f"{GRAPH_API}users/gone@example.gov.uk", status_code=404, json=NO_USER)

    user = client.get_user("asha@example.gov.uk")

    assert (user.id, user.display_name, user.account_enabled) == ("9f1b", "Asha Rao", True)
    assert requests_mock.last_request.url.endswith("?$select=id,displayName,mail,userPrincipalName,accountEnabled")
    assert client.get_user("gone@example.gov.uk") is None


def test_at_most_the_per_mailbox_concurrency_reaches_graph(config, make_budget, entra, requests_mock, fake_time):
    limiter = MailboxLimiter(budget=make_budget(service="graph", max_concurrent=1, max_wait_seconds=0.1))
    client = GraphClient(config, limiter=limiter, sleep=fake_time.sleep, clock=fake_time.monotonic)
    requests_mock.get(settings_url("busy@example.gov.uk"), json={"userPurpose": "user"})
    requests_mock.get(settings_url("quiet@example.gov.uk"), json={"userPurpose": "user"})

    with limiter.acquire(app_key=client.app_key, mailbox="BUSY@example.gov.uk"):  # another worker's call
        with pytest.raises(BudgetExhaustedError):
            client.mailbox_presence("busy@example.gov.uk")
        assert client.mailbox_presence("quiet@example.gov.uk").in_exchange_online

    assert not [r for r in requests_mock.request_history if "busy@" in r.url]


def test_a_429_for_one_mailbox_is_retried_after_its_retry_after(client, requests_mock, fake_time):
    requests_mock.get(
        settings_url("room1@example.gov.uk"),
        [
            {
                "status_code": 429,
                "headers": {"Retry-After": "4"},
                "json": {"error": {"code": "ApplicationThrottled", "message": "Too many requests."}},
            },
            {"json": {"userPurpose": "room"}},
        ],
    )

    assert client.mailbox_presence("room1@example.gov.uk").user_purpose == "room"
    assert fake_time.sleeps == [4.0]


def test_batch_presence_sends_twenty_to_a_batch_and_retries_throttled_items(client, requests_mock, fake_time):
    mailboxes = [f"user{n}@example.gov.uk" for n in range(25)]
    sent_batches = []

    def answer(request, context):
        requests_ = request.json()["requests"]
        sent_batches.append(requests_)
        responses = []
        for item in requests_:
            upn = item["url"].split("/")[2]
            if upn == "user3@example.gov.uk" and len(sent_batches) == 1:
                responses.append(
                    {
                        "id": item["id"],
                        "status": 429,
                        "headers": {"Retry-After": "6"},
                        "body": {"error": {"code": "MailboxConcurrency", "message": "Too many concurrent requests."}},
                    }
                )
            elif upn == "user7@example.gov.uk":
                responses.append({"id": item["id"], "status": 404, "headers": {}, "body": NOT_IN_EXO})
            else:
                responses.append({"id": item["id"], "status": 200, "headers": {}, "body": {"userPurpose": "user"}})
        return {"responses": list(reversed(responses))}  # Graph may answer in any order

    requests_mock.post(f"{GRAPH_API}$batch", json=answer)

    results = client.batch_mailbox_presence([*mailboxes, "user1@example.gov.uk"])

    assert [len(batch) for batch in sent_batches] == [20, 1, 5]
    assert all(item["method"] == "GET" and item["url"].endswith("/mailboxSettings") for item in sent_batches[0])
    assert fake_time.sleeps == [6.0]
    assert set(results) == set(mailboxes)
    assert results["user3@example.gov.uk"].in_exchange_online
    assert results["user7@example.gov.uk"].reason is PresenceReason.MAILBOX_NOT_ENABLED_FOR_REST_API


def test_batch_presence_gives_up_on_a_mailbox_that_stays_throttled(client, requests_mock, fake_time):
    def answer(request, context):
        return {
            "responses": [
                {
                    "id": item["id"],
                    "status": 429,
                    "headers": {"Retry-After": "10"},
                    "body": {"error": {"code": "ApplicationThrottled", "message": "Too many requests."}},
                }
                for item in request.json()["requests"]
            ]
        }

    requests_mock.post(f"{GRAPH_API}$batch", json=answer)

    with pytest.raises(ThrottledError) as raised:
        client.batch_mailbox_presence(["hot@example.gov.uk"])

    assert raised.value.retry_after == 10.0
    assert sum(fake_time.sleeps) <= 60
