"""Steering the simulator: faults, limits, the ledger, persistence and reseeding."""

from __future__ import annotations

import requests

from tests.m365.conftest import app_token
from tests.simulator import run_simulator


def _whoami(sim, token):
    return sim.http.get(
        f"{sim.base_url}/dataverse/api/data/v9.2/WhoAmI",
        headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
        timeout=10,
    )


def test_whoami_has_the_documented_shape(fresh_sim):
    response = _whoami(fresh_sim, app_token(fresh_sim, "dataverse"))
    assert response.status_code == 200
    body = response.json()
    assert set(body) >= {"BusinessUnitId", "UserId", "OrganizationId"}
    assert response.headers["OData-Version"] == "4.0"
    assert response.headers["REQ_ID"]


def test_request_limit_answers_429_with_retry_after_and_the_documented_code(fresh_sim):
    token = app_token(fresh_sim, "dataverse")
    fresh_sim.control("PUT", "limits", {"max_requests": 3, "window_seconds": 30})
    statuses = [_whoami(fresh_sim, token) for _ in range(4)]
    assert [r.status_code for r in statuses[:3]] == [200, 200, 200]
    throttled = statuses[3]
    assert throttled.status_code == 429
    assert 1 <= int(throttled.headers["Retry-After"]) <= 30
    error = throttled.json()["error"]
    assert error["code"] == "0x80072322"
    assert "Number of requests exceeded the limit of 3 over time window of 30 seconds" in error["message"]


def test_limits_are_per_application_user(fresh_sim):
    fresh_sim.control("PUT", "limits", {"max_requests": 2, "window_seconds": 30})
    first, second = app_token(fresh_sim, "dataverse", app=1), app_token(fresh_sim, "dataverse", app=2)
    assert [_whoami(fresh_sim, first).status_code for _ in range(3)] == [200, 200, 429]
    assert [_whoami(fresh_sim, second).status_code for _ in range(2)] == [200, 200]


def test_injected_faults_are_recorded_in_the_ledger(fresh_sim):
    token = app_token(fresh_sim, "dataverse")
    since = fresh_sim.last_seq()
    fresh_sim.control("PUT", "faults", {"rate_5xx": 1.0})
    assert _whoami(fresh_sim, token).status_code == 503
    fresh_sim.control("PUT", "faults", {"rate_5xx": 0.0, "rate_drop": 1.0})
    try:
        _whoami(fresh_sim, token)
        raise AssertionError("a dropped connection must not produce a response")
    except requests.ConnectionError:
        pass
    fresh_sim.control("DELETE", "faults")
    entries = [e for e in fresh_sim.ledger(since) if e["surface"] == "dataverse"]
    assert [(e["status"], e["fault"]) for e in entries] == [(503, "5xx"), (None, "drop")]
    assert all(e["app"] == fresh_sim.env["M365_CLIENT_ID"] for e in entries)


def test_bad_control_input_is_refused_clearly(fresh_sim):
    response = fresh_sim.http.put(f"{fresh_sim.base_url}/_sim/faults", json={"rate_429": 3})
    assert response.status_code == 400
    assert "between 0 and 1" in response.json()["error"]["message"]
    response = fresh_sim.http.put(f"{fresh_sim.base_url}/_sim/limits", json={"max_requests": -1})
    assert response.status_code == 400


def test_state_survives_a_restart_and_reset_restores_the_seed(tmp_path):
    with run_simulator(tmp_path / "sim", seed="200") as first:
        truth = first.control("GET", "truth")
        assert truth["mailboxes"] == sum(truth["by_classification"].values())
        mailbox = first.control("GET", "rows/mailboxes?limit=1")["value"][0]
        first.control("PATCH", f"state/mailboxes/{mailbox['mailboxid']}", {"emailaddress": "changed@example.gov.uk"})
        env = first.env
    with run_simulator(tmp_path / "sim", seed="200") as second:
        assert second.env["M365_CLIENT_SECRET"] == env["M365_CLIENT_SECRET"]
        assert second.row("mailboxes", mailbox["mailboxid"])["emailaddress"] == "changed@example.gov.uk"
        second.reset()
        assert second.row("mailboxes", mailbox["mailboxid"])["emailaddress"] == mailbox["emailaddress"]
