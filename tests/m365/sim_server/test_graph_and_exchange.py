"""Graph and the Exchange admin surface in the simulator: documented shapes and limits."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

from tests.m365.conftest import app_token


def _graph(sim, path, token):
    return sim.http.get(f"{sim.base_url}/graph/v1.0/{path}", headers={"Authorization": f"Bearer {token}"})


def _invoke(sim, token, cmdlet, **parameters):
    return sim.http.post(
        f"{sim.base_url}/exchange/adminapi/beta/{sim.env['M365_TENANT_ID']}/InvokeCommand",
        json={"CmdletInput": {"CmdletName": cmdlet, "Parameters": parameters}},
        headers={"Authorization": f"Bearer {token}"},
    )


def graph_users(sim) -> list[dict]:
    return sim.control("GET", "rows/graph_users")["value"]


def test_on_premises_mailbox_answers_mailbox_not_enabled_for_rest(fresh_sim):
    token = app_token(fresh_sim, "graph")
    on_prem = next(u for u in graph_users(fresh_sim) if u["mailbox_location"] == "on_premises")
    response = _graph(fresh_sim, f"users/{on_prem['userPrincipalName']}/mailboxSettings", token)
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "MailboxNotEnabledForRESTAPI"
    assert set(error["innerError"]) >= {"request-id", "date"}
    assert response.headers["request-id"]


def test_exchange_online_mailbox_reports_its_purpose(fresh_sim):
    token = app_token(fresh_sim, "graph")
    shared = next(u for u in graph_users(fresh_sim) if u["userPurpose"] == "shared")
    response = _graph(fresh_sim, f"users/{shared['userPrincipalName']}/mailboxSettings", token)
    assert response.status_code == 200
    assert response.json()["userPurpose"] == "shared"


def test_unknown_user_is_resource_not_found(fresh_sim):
    response = _graph(fresh_sim, "users/nobody-at-all@example.gov.uk", app_token(fresh_sim, "graph"))
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "Request_ResourceNotFound"


def test_json_batch_answers_each_request_and_refuses_more_than_20(fresh_sim):
    token = app_token(fresh_sim, "graph")
    users = graph_users(fresh_sim)[:3]
    body = {
        "requests": [
            {"id": str(n), "method": "GET", "url": f"/users/{u['userPrincipalName']}/mailboxSettings"}
            for n, u in enumerate(users)
        ]
    }
    response = fresh_sim.http.post(
        f"{fresh_sim.base_url}/graph/v1.0/$batch", json=body, headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 200
    assert sorted(r["id"] for r in response.json()["responses"]) == ["0", "1", "2"]
    too_many = {"requests": [{"id": str(n), "method": "GET", "url": "/users/x"} for n in range(21)]}
    response = fresh_sim.http.post(
        f"{fresh_sim.base_url}/graph/v1.0/$batch", json=too_many, headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 400


def test_more_than_four_concurrent_calls_for_one_mailbox_are_throttled(fresh_sim):
    token = app_token(fresh_sim, "graph")
    user = graph_users(fresh_sim)[0]
    fresh_sim.control("PUT", "faults", {"slow_ms": 400})
    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(lambda _: _graph(fresh_sim, f"users/{user['id']}", token).status_code, range(8)))
    assert statuses.count(200) >= 4
    assert 429 in statuses


def test_new_shared_mailbox_appears_in_graph_and_refuses_duplicates(fresh_sim):
    token = app_token(fresh_sim, "exchange")
    address = f"team-{uuid.uuid4().hex[:8]}@example.gov.uk"
    created = _invoke(
        fresh_sim,
        token,
        "New-Mailbox",
        Shared=True,
        Name=address.split("@")[0],
        DisplayName="A team",
        PrimarySmtpAddress=address,
    )
    assert created.status_code == 200
    assert created.json()["value"][0]["RecipientTypeDetails"] == "SharedMailbox"
    settings = _graph(fresh_sim, f"users/{address}/mailboxSettings", app_token(fresh_sim, "graph"))
    assert settings.json()["userPurpose"] == "shared"
    again = _invoke(
        fresh_sim, token, "New-Mailbox", Shared=True, Name="again", DisplayName="again", PrimarySmtpAddress=address
    )
    assert again.status_code == 400
    assert "already being used" in again.json()["error"]["message"]


def test_permissions_are_granted_once(fresh_sim):
    token = app_token(fresh_sim, "exchange")
    address = f"perm-{uuid.uuid4().hex[:8]}@example.gov.uk"
    _invoke(
        fresh_sim,
        token,
        "New-Mailbox",
        Shared=True,
        Name=address.split("@")[0],
        DisplayName="Perms",
        PrimarySmtpAddress=address,
    )
    member = next(u for u in graph_users(fresh_sim) if u["userPurpose"] == "user")["mail"]
    first = _invoke(
        fresh_sim,
        token,
        "Add-MailboxPermission",
        Identity=address,
        User=member,
        AccessRights=["FullAccess"],
        AutoMapping=True,
    )
    second = _invoke(
        fresh_sim,
        token,
        "Add-MailboxPermission",
        Identity=address,
        User=member,
        AccessRights=["FullAccess"],
        AutoMapping=True,
    )
    assert first.status_code == second.status_code == 200
    listed = _invoke(fresh_sim, token, "Get-MailboxPermission", Identity=address).json()["value"]
    assert [row["User"] for row in listed] == [member]
    send_as = _invoke(
        fresh_sim, token, "Add-RecipientPermission", Identity=address, Trustee=member, AccessRights=["SendAs"]
    )
    assert send_as.status_code == 200
    on_behalf = _invoke(fresh_sim, token, "Set-Mailbox", Identity=address, GrantSendOnBehalfTo=[member])
    assert on_behalf.status_code == 200
    assert _invoke(fresh_sim, token, "Get-Mailbox", Identity=address).json()["value"][0]["GrantSendOnBehalfTo"] == [
        member
    ]


def test_missing_mailbox_and_unknown_cmdlet(fresh_sim):
    token = app_token(fresh_sim, "exchange")
    missing = _invoke(fresh_sim, token, "Get-Mailbox", Identity="no-such-mailbox@example.gov.uk")
    assert missing.status_code == 404
    assert "couldn't be found" in missing.json()["error"]["message"]
    unknown = _invoke(fresh_sim, token, "Remove-Mailbox", Identity="x")
    assert unknown.status_code == 400
    assert "is not recognized as the name of a cmdlet" in unknown.json()["error"]["message"]
