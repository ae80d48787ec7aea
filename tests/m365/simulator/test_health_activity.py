"""Mailbox health data in the simulator: alerts and tracked email, read incrementally through the Web API.

Runs the demo organisation as a real HTTPS simulator and reads it the way the portal's mailbox
health feature does: ``tracelogs`` by ``modifiedon``, ``emails`` and ``activitymimeattachments`` by
``createdon``, with ``$select``, ``$orderby`` and ``odata.maxpagesize`` paging.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections import Counter
from typing import Any

import pytest

from tests.m365.conftest import app_token
from tests.simulator import RunningSimulator, run_simulator

EMAIL_COLUMNS = "activityid,directioncode,_sendermailboxid_value,_receivingmailboxid_value,createdon"
ATTACHMENT_COLUMNS = "activitymimeattachmentid,filesize,_objectid_value,createdon"
TRACELOG_COLUMNS = "tracelogid,level,tracecode,text,_regardingobjectid_value,errordetails,createdon,modifiedon"
MAX_UPLOAD = 5_242_880


class WebApi:
    """The Dataverse Web API as the portal calls it: bearer token, OData headers, nextLink paging."""

    def __init__(self, sim: RunningSimulator) -> None:
        self.sim = sim
        self.root = f"{sim.base_url}/dataverse/api/data/v9.2/"
        self.headers = {
            "Authorization": f"Bearer {app_token(sim, 'dataverse')}",
            "Accept": "application/json",
            "OData-MaxVersion": "4.0",
            "OData-Version": "4.0",
        }

    def rows(self, entity_set: str, *, page_size: int | None = None, prefer: str = "", **options: str) -> list[dict]:
        preferences = [p for p in (f"odata.maxpagesize={page_size}" if page_size else "", prefer) if p]
        headers = {**self.headers, **({"Prefer": ",".join(preferences)} if preferences else {})}
        params = {f"${name}": value for name, value in options.items()}
        response = self.sim.http.get(self.root + entity_set, params=params, headers=headers, timeout=30)
        rows: list[dict] = []
        while True:
            assert response.status_code == 200, response.text
            body = response.json()
            assert len(body["value"]) <= (page_size or 5000)
            rows.extend(body["value"])
            if "@odata.nextLink" not in body:
                return rows
            response = self.sim.http.get(body["@odata.nextLink"], headers=headers, timeout=30)

    def new_queue_mailbox(self) -> str:
        """A queue created as an admin would; Dataverse gives it a mailbox with no history."""
        name = f"Health check {uuid.uuid4().hex[:8]}"
        response = self.sim.http.post(
            self.root + "queues",
            json={"name": name, "emailaddress": f"{name.replace(' ', '-').lower()}@example.gov.uk"},
            headers={**self.headers, "Prefer": "return=representation"},
            timeout=30,
        )
        assert response.status_code == 201, response.text
        return self.rows("queues", select="_defaultmailbox_value", filter=f"queueid eq {response.json()['queueid']}")[
            0
        ]["_defaultmailbox_value"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> RunningSimulator:
    with run_simulator(tmp_path_factory.mktemp("m365sim-demo"), seed="demo") as running:
        yield running


@pytest.fixture(scope="module")
def api(demo) -> WebApi:
    return WebApi(demo)


def stamp(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def post(sim: RunningSimulator, path: str, body: Any):
    return sim.http.post(f"{sim.base_url}/_sim/{path}", json=body, timeout=60)


def tracelog_count(sim: RunningSimulator) -> int:
    return sim.control("GET", "state/tracelogs")["count"]


# -- alerts ------------------------------------------------------------------------------------


def test_an_alert_is_raised_then_recurs_on_the_same_row(demo, api):
    mailbox = api.new_queue_mailbox()
    before = tracelog_count(demo)
    alert = {"regarding": mailbox, "level": 2, "tracecode": 4242, "text": "Email is arriving slowly."}
    first = post(demo, "alerts", alert)
    assert first.status_code == 200, first.text
    raised = first.json()
    assert (raised["level"], raised["tracecode"], raised["_regardingobjectid_value"]) == (2, 4242, mailbox)
    assert raised["regardingobjecttypecode"] == "mailbox"
    assert raised["createdon"] == raised["modifiedon"]
    assert tracelog_count(demo) == before + 1

    again = post(demo, "alerts", {**alert, "level": 3, "text": "Email has stopped.", "errordetails": "Timeout"})
    assert again.status_code == 200, again.text
    recurred = again.json()
    assert recurred["tracelogid"] == raised["tracelogid"]
    assert recurred["modifiedon"] > raised["modifiedon"]
    assert recurred["createdon"] == raised["createdon"]
    assert tracelog_count(demo) == before + 1

    # What an incremental reader polling past the first sighting gets: the one row, updated.
    changed = api.rows(
        "tracelogs",
        select=TRACELOG_COLUMNS,
        filter=f"modifiedon gt {raised['modifiedon']} and _regardingobjectid_value eq {mailbox}",
        orderby="modifiedon asc,tracelogid asc",
    )
    assert [(row["tracelogid"], row["level"], row["text"], row["errordetails"]) for row in changed] == [
        (raised["tracelogid"], 3, "Email has stopped.", "Timeout")
    ]


def test_an_alert_about_a_server_profile_points_at_the_profile(demo, api):
    profile = api.rows("emailserverprofiles", select="emailserverprofileid,name", filter="servertype eq 1")[0]
    response = post(
        demo,
        "alerts",
        {
            "regarding": profile["emailserverprofileid"],
            "level": 3,
            "tracecode": 4343,
            "text": "POP3 server unreachable",
        },
    )
    assert response.status_code == 200, response.text
    assert response.json()["regardingobjecttypecode"] == "emailserverprofile"

    rows = api.rows(
        "tracelogs",
        select=TRACELOG_COLUMNS,
        filter=f"_regardingobjectid_value eq {profile['emailserverprofileid']} and tracecode eq 4343",
        prefer='odata.include-annotations="*"',
    )
    assert len(rows) == 1
    assert rows[0]["_regardingobjectid_value@Microsoft.Dynamics.CRM.lookuplogicalname"] == "emailserverprofile"
    assert rows[0]["_regardingobjectid_value@OData.Community.Display.V1.FormattedValue"] == profile["name"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"level": 4}, "level must be a whole number from 1 to 3"),
        ({"level": True}, "level must be a whole number from 1 to 3"),
        ({"tracecode": "12"}, "tracecode must be a whole number"),
        ({"text": "  "}, "text must be a non-empty string"),
        ({"errordetails": 7}, "errordetails must be a string"),
        ({"regarding": "mailbox-1"}, "regarding must be a GUID"),
        ({"severity": 2}, "unknown fields: severity"),
    ],
)
def test_a_bad_alert_body_is_refused_with_the_reason(demo, api, change, message):
    mailbox = api.rows("mailboxes", select="mailboxid", top="1")[0]["mailboxid"]
    before = tracelog_count(demo)
    response = post(demo, "alerts", {"regarding": mailbox, "level": 2, "tracecode": 1, "text": "x", **change})
    assert response.status_code == 400
    assert message in response.json()["error"]["message"]
    assert tracelog_count(demo) == before


def test_an_alert_about_an_unknown_record_is_not_found(demo):
    missing = str(uuid.uuid4())
    response = post(demo, "alerts", {"regarding": missing, "level": 2, "tracecode": 1, "text": "x"})
    assert response.status_code == 404
    assert missing in response.json()["error"]["message"]
    assert post(demo, "alerts", ["not", "an", "object"]).status_code == 400


# -- tracked email -----------------------------------------------------------------------------


def test_recorded_activity_is_read_incrementally_by_day_direction_and_size(demo, api):
    mailbox = api.new_queue_mailbox()
    now = utcnow()
    three_days_ago = now.date() - dt.timedelta(days=3)
    sizes = [30_000, 4_500_000, 1_000_000, 70_000, 25_000, MAX_UPLOAD, 0]
    incoming = post(
        demo,
        "activity",
        {
            "mailbox": mailbox,
            "direction": "incoming",
            "count": 5,
            "day": three_days_ago.isoformat(),
            "attachments": sizes,
        },
    ).json()
    before_today = stamp(utcnow() - dt.timedelta(seconds=1))
    outgoing = post(demo, "activity", {"mailbox": mailbox, "direction": "outgoing", "count": 3}).json()
    assert (len(incoming["emails"]), len(incoming["attachments"])) == (5, 7)
    assert (len(outgoing["emails"]), outgoing["attachments"]) == (3, [])

    watermark = stamp(dt.datetime.combine(three_days_ago, dt.time(), tzinfo=dt.UTC) - dt.timedelta(seconds=1))
    upper = stamp(utcnow())
    mine = f"(_receivingmailboxid_value eq {mailbox} or _sendermailboxid_value eq {mailbox})"
    emails = api.rows(
        "emails",
        page_size=2,
        select=EMAIL_COLUMNS,
        filter=f"createdon gt {watermark} and createdon le {upper} and {mine}",
        orderby="createdon asc,activityid asc",
    )
    assert set(emails[0]) == {"@odata.etag", *EMAIL_COLUMNS.split(",")}
    by_id = {row["activityid"]: row for row in emails}
    assert set(by_id) == set(incoming["emails"]) | set(outgoing["emails"])
    for email_id in incoming["emails"]:
        row = by_id[email_id]
        assert (row["directioncode"], row["_receivingmailboxid_value"], row["_sendermailboxid_value"]) == (
            False,
            mailbox,
            None,
        )
        assert row["createdon"].startswith(three_days_ago.isoformat())
    for email_id in outgoing["emails"]:
        row = by_id[email_id]
        assert (row["directioncode"], row["_sendermailboxid_value"], row["_receivingmailboxid_value"]) == (
            True,
            mailbox,
            None,
        )
        assert row["createdon"].startswith(now.date().isoformat())
        # Today's email is stamped when it is recorded, as server-side sync's rows are: never in the
        # future, and never in the past where an incremental reader has already been.
        assert before_today <= row["createdon"] <= upper
    assert [row["createdon"] for row in emails] == sorted(row["createdon"] for row in emails)

    statuses = api.rows("emails", select="activityid,statuscode", filter=f"{mine} and statuscode eq 4")
    assert {row["activityid"] for row in statuses} == set(incoming["emails"])
    sent = api.rows("emails", select="activityid", filter=f"_sendermailboxid_value ne null and {mine}")
    assert {row["activityid"] for row in sent} == set(outgoing["emails"])

    attachments = api.rows(
        "activitymimeattachments",
        page_size=3,
        select=ATTACHMENT_COLUMNS,
        filter=f"createdon gt {watermark} and ({' or '.join(f'_objectid_value eq {e}' for e in incoming['emails'])})",
    )
    assert sorted(row["activitymimeattachmentid"] for row in attachments) == sorted(incoming["attachments"])
    assert sorted(row["filesize"] for row in attachments) == sorted(sizes)
    per_email = Counter(row["_objectid_value"] for row in attachments)
    # Seven sizes round-robin over five emails: the first two emails get two each.
    assert sorted(per_email.values()) == [1, 1, 1, 2, 2]
    assert {per_email[email_id] for email_id in incoming["emails"][:2]} == {2}
    for row in attachments:
        assert row["createdon"] == by_id[row["_objectid_value"]]["createdon"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"direction": "sideways"}, "direction must be 'incoming' or 'outgoing'"),
        ({"count": 0}, "count must be a whole number from 1 to 10000"),
        ({"count": 10_001}, "count must be a whole number from 1 to 10000"),
        ({"count": 2.5}, "count must be a whole number"),
        ({"day": "2026-13-01"}, "is not a real date"),
        ({"day": "yesterday"}, "day must be a date written YYYY-MM-DD"),
        ({"day": (dt.datetime.now(dt.UTC).date() + dt.timedelta(days=2)).isoformat()}, "is in the future"),
        ({"attachments": [-1]}, "each attachment size must be a whole number of bytes"),
        ({"attachments": [MAX_UPLOAD + 1]}, "maxuploadfilesize (5,242,880)"),
        ({"attachments": 100}, "attachments must be a list"),
        ({"mailbox": "queue-1"}, "mailbox must be a GUID"),
        ({"subject": "Hello"}, "unknown fields: subject"),
    ],
)
def test_a_bad_activity_body_is_refused_with_the_reason(demo, api, change, message):
    mailbox = api.rows("mailboxes", select="mailboxid", top="1")[0]["mailboxid"]
    before = demo.control("GET", "state/emails")["count"]
    response = post(demo, "activity", {"mailbox": mailbox, "direction": "incoming", "count": 1, **change})
    assert response.status_code == 400
    assert message in response.json()["error"]["message"]
    assert demo.control("GET", "state/emails")["count"] == before


def test_activity_for_an_unknown_mailbox_is_not_found(demo):
    missing = str(uuid.uuid4())
    response = post(demo, "activity", {"mailbox": missing, "direction": "outgoing", "count": 2})
    assert response.status_code == 404
    assert missing in response.json()["error"]["message"]


# -- the demo organisation ---------------------------------------------------------------------


def test_the_demo_has_two_weeks_of_email_with_attachments(api):
    now = utcnow()
    today = now.date()
    watermark = stamp(dt.datetime.combine(today - dt.timedelta(days=14), dt.time(), tzinfo=dt.UTC))
    emails = api.rows(
        "emails", page_size=1000, select=EMAIL_COLUMNS, filter=f"createdon gt {watermark} and createdon le {stamp(now)}"
    )
    assert 2000 < len(emails) < 4000
    days = Counter((row["createdon"][:10], row["directioncode"]) for row in emails)
    for back in range(1, 14):  # every full day, both ways (today may have only just begun)
        day = (today - dt.timedelta(days=back)).isoformat()
        assert days[day, False] > 20 and days[day, True] > 10, day

    queues = {row["_defaultmailbox_value"] for row in api.rows("queues", select="_defaultmailbox_value")}
    busy = Counter(row["_receivingmailboxid_value"] or row["_sendermailboxid_value"] for row in emails)
    assert len(set(busy) & queues) >= 35
    assert len(set(busy) - queues) == 20  # the users with email
    assert max(busy.values()) / 14 > 20  # the busiest queue has a few dozen a day

    attachments = api.rows(
        "activitymimeattachments", page_size=1000, select=ATTACHMENT_COLUMNS, filter=f"createdon gt {watermark}"
    )
    with_attachments = {row["_objectid_value"] for row in attachments}
    assert 0.15 < len(with_attachments) / len(emails) < 0.35
    sizes = [row["filesize"] for row in attachments]
    assert max(sizes) <= MAX_UPLOAD
    assert any(size >= 4 * 1024 * 1024 for size in sizes)
    assert sum(20 * 1024 <= size <= 2 * 1024 * 1024 for size in sizes) > 0.8 * len(sizes)

    warnings = api.rows("tracelogs", select=TRACELOG_COLUMNS, filter="level eq 2")
    assert len(warnings) >= 2
    assert {row["_regardingobjectid_value"] for row in warnings} <= queues
    assert all(row["modifiedon"] > row["createdon"] for row in warnings)  # they keep recurring


def test_tracelogs_page_in_modifiedon_order_for_an_incremental_reader(api):
    everything = api.rows("tracelogs", select="tracelogid", filter="modifiedon gt 2000-01-01T00:00:00Z")
    paged = api.rows(
        "tracelogs",
        page_size=25,
        select=TRACELOG_COLUMNS,
        filter="modifiedon gt 2000-01-01T00:00:00Z",
        orderby="modifiedon asc,tracelogid asc",
    )
    assert len(paged) == len(everything) > 25
    keys = [(row["modifiedon"], row["tracelogid"]) for row in paged]
    assert keys == sorted(keys)
    assert len(set(keys)) == len(keys)
    # Resuming from the last modifiedon seen returns only what is newer.
    middle = paged[len(paged) // 2]["modifiedon"]
    newer = api.rows("tracelogs", select="tracelogid,modifiedon", filter=f"modifiedon gt {middle}")
    assert {row["tracelogid"] for row in newer} == {row["tracelogid"] for row in paged if row["modifiedon"] > middle}
