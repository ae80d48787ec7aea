"""Exchange Online admin: cmdlets through InvokeCommand; writes never retried inside the client."""

from __future__ import annotations

import pytest

from portal.m365.errors import ThrottledError, TransientError
from portal.m365.exchange import ExchangeAdminClient
from tests.m365.clients.conftest import EXCHANGE, INVOKE_URL

NOT_FOUND = {
    "error": {
        "code": "NotFound",
        "message": "|Microsoft.Exchange.Configuration.Tasks.ManagementObjectNotFoundException|"
        "The operation couldn't be performed because object 'nobody@example.gov.uk' couldn't be found.",
    }
}
MAILBOX = {
    "Name": "Finance",
    "DisplayName": "Finance team",
    "PrimarySmtpAddress": "finance@example.gov.uk",
    "RecipientTypeDetails": "SharedMailbox",
}


@pytest.fixture
def client(config, entra, fake_time):
    return ExchangeAdminClient(config, sleep=fake_time.sleep, clock=fake_time.monotonic)


def test_a_cmdlet_is_posted_to_invoke_command_with_an_exchange_token(client, requests_mock, entra):
    requests_mock.post(INVOKE_URL, json={"@odata.context": "x", "value": [MAILBOX]})

    rows = client.invoke("Get-Mailbox", {"Identity": "finance@example.gov.uk"})

    assert rows == [MAILBOX]
    sent = requests_mock.last_request
    assert sent.json() == {
        "CmdletInput": {"CmdletName": "Get-Mailbox", "Parameters": {"Identity": "finance@example.gov.uk"}}
    }
    assert sent.headers["Authorization"].startswith("Bearer ")
    assert entra.form()["scope"] == f"{EXCHANGE}/.default"


def test_new_shared_mailbox_sends_the_shared_switch(client, requests_mock):
    requests_mock.post(INVOKE_URL, json={"value": [MAILBOX]})

    created = client.new_shared_mailbox(
        name="Finance", display_name="Finance team", primary_smtp_address="finance@example.gov.uk", alias="finance"
    )

    assert created == MAILBOX
    assert requests_mock.last_request.json()["CmdletInput"] == {
        "CmdletName": "New-Mailbox",
        "Parameters": {
            "Shared": True,
            "Name": "Finance",
            "DisplayName": "Finance team",
            "PrimarySmtpAddress": "finance@example.gov.uk",
            "Alias": "finance",
        },
    }


def test_a_missing_mailbox_reads_as_none(client, requests_mock):
    requests_mock.post(INVOKE_URL, status_code=400, json=NOT_FOUND)

    assert client.get_mailbox("nobody@example.gov.uk") is None


def test_permissions_use_the_documented_access_rights(client, requests_mock):
    requests_mock.post(INVOKE_URL, json={"value": [{}]})

    client.add_mailbox_permission(identity="finance@example.gov.uk", user="asha@example.gov.uk", auto_mapping=False)
    full_access = requests_mock.last_request.json()["CmdletInput"]
    client.add_recipient_permission(identity="finance@example.gov.uk", trustee="asha@example.gov.uk")
    send_as = requests_mock.last_request.json()["CmdletInput"]
    client.set_send_on_behalf(identity="finance@example.gov.uk", users=["asha@example.gov.uk", "tom@example.gov.uk"])
    on_behalf = requests_mock.last_request.json()["CmdletInput"]

    assert full_access == {
        "CmdletName": "Add-MailboxPermission",
        "Parameters": {
            "Identity": "finance@example.gov.uk",
            "User": "asha@example.gov.uk",
            "AccessRights": ["FullAccess"],
            "AutoMapping": False,
        },
    }
    assert send_as["Parameters"]["AccessRights"] == ["SendAs"]
    assert send_as["Parameters"]["Trustee"] == "asha@example.gov.uk"
    assert on_behalf == {
        "CmdletName": "Set-Mailbox",
        "Parameters": {
            "Identity": "finance@example.gov.uk",
            "GrantSendOnBehalfTo": ["asha@example.gov.uk", "tom@example.gov.uk"],
        },
    }


def test_a_throttled_write_is_not_retried(client, requests_mock, fake_time):
    requests_mock.post(
        INVOKE_URL,
        status_code=429,
        headers={"Retry-After": "15"},
        json={"error": {"code": "TooManyRequests", "message": "Rate limit exceeded."}},
    )

    with pytest.raises(ThrottledError) as raised:
        client.new_shared_mailbox(name="Finance", display_name="Finance", primary_smtp_address="finance@example.gov.uk")

    assert raised.value.retry_after == 15.0
    assert len(requests_mock.request_history) - 2 == 1  # discovery and token, then one InvokeCommand
    assert fake_time.sleeps == []


def test_a_read_cmdlet_is_retried_after_a_5xx(client, requests_mock, fake_time):
    requests_mock.post(INVOKE_URL, [{"status_code": 503, "text": "busy"}, {"json": {"value": [MAILBOX]}}])

    assert client.get_mailbox("finance@example.gov.uk") == MAILBOX
    assert len(fake_time.sleeps) == 1


def test_a_transient_failure_is_not_mistaken_for_a_missing_mailbox(client, requests_mock):
    requests_mock.post(INVOKE_URL, status_code=503, json={"error": {"code": "x", "message": "could not be found"}})

    with pytest.raises(TransientError):
        client.get_mailbox("finance@example.gov.uk")


def test_only_cmdlet_names_are_accepted(client):
    with pytest.raises(ValueError, match="not a cmdlet name"):
        client.invoke("Get-Mailbox; Remove-Mailbox", {})
