"""The simulated Dataverse Web API as a client sees it: URLs, status codes, headers, bodies and paging."""

from __future__ import annotations

import time

import pytest

from portal.m365.simulator import tables
from tests.m365.simulator.dataverse_support import (
    API_URL,
    APP,
    DataverseClient,
    entity_id,
    make_simulator,
    seed_organisation,
)

ANNOTATIONS = {"Prefer": 'odata.include-annotations="*"'}


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


def _mailboxes(sim, count: int, **values) -> None:
    for number in range(count):
        tables.insert(
            sim.store,
            "mailboxes",
            {"name": f"Mailbox {number:06d}", "emailaddress": f"box{number}@contoso.com", **values},
        )


class TestPaging:
    def test_next_links_reach_every_row_exactly_once(self, sim, client):
        _mailboxes(sim, 12_345)
        first = client.get("mailboxes", query="$select=name")
        assert len(first.payload()["value"]) == 5000
        assert first.payload()["@odata.nextLink"].startswith(f"{API_URL}mailboxes?$select=name&$skiptoken=")
        rows = client.all_pages("mailboxes", query="$select=name")
        assert len(rows) == 12_345
        assert len({row["mailboxid"] for row in rows}) == 12_345

    def test_max_page_size_preference_is_applied_and_echoed(self, sim, client):
        _mailboxes(sim, 7)
        response = client.get("mailboxes", query="$select=name", headers={"Prefer": "odata.maxpagesize=3"})
        assert response.headers["Preference-Applied"] == "odata.maxpagesize=3"
        assert len(response.payload()["value"]) == 3
        rows = client.all_pages("mailboxes", query="$select=name", headers={"Prefer": "odata.maxpagesize=3"})
        assert sorted(row["name"] for row in rows) == [f"Mailbox {number:06d}" for number in range(7)]

    def test_page_sizes_above_5000_are_ignored(self, sim, client):
        _mailboxes(sim, 5001)
        response = client.get("mailboxes", query="$select=name", headers={"Prefer": "odata.maxpagesize=9000"})
        assert len(response.payload()["value"]) == 5000
        assert "Preference-Applied" not in response.headers

    def test_count_is_capped_at_5000(self, sim, client):
        _mailboxes(sim, 5003)
        payload = client.get("mailboxes", query="$count=true&$select=name&$top=1").payload()
        assert payload["@odata.count"] == 5000
        assert len(payload["value"]) == 1
        assert "@odata.nextLink" not in payload

    def test_skip_is_refused(self, client):
        response = client.get("mailboxes", query="$skip=10")
        assert response.status == 400
        assert response.payload()["error"]["code"] == "0x80060888"

    def test_paging_100000_rows_with_a_filter_completes(self, sim, client):
        table = sim.store.table("mailboxes")
        defaults = {name: column.default for name, column in tables.MAILBOXES.columns.items()}
        for number in range(100_000):
            mailbox_id = f"{number:08x}-0000-4000-8000-000000000000"
            table[mailbox_id] = {
                **defaults,
                "mailboxid": mailbox_id,
                "name": f"Mailbox {number:06d}",
                "emailaddress": f"box{number}@contoso.com",
                "incomingemaildeliverymethod": number % 4,
                "versionnumber": number + 1,
            }
        started = time.monotonic()
        rows = client.all_pages(
            "mailboxes", query="$select=name,emailaddress&$filter=incomingemaildeliverymethod ne 1&$orderby=name desc"
        )
        elapsed = time.monotonic() - started
        assert len(rows) == 75_000
        assert len({row["mailboxid"] for row in rows}) == 75_000
        assert rows[0]["name"] == "Mailbox 099999"
        assert elapsed < 10


class TestQueries:
    def test_filter_on_a_lookup_and_contains(self, sim, client, org):
        exchange_online = org.exchange_online["emailserverprofileid"]
        tables.insert(sim.store, "mailboxes", {"name": "Sales", "emailaddress": "sales@contoso.com"})
        tables.insert(
            sim.store,
            "mailboxes",
            {
                "name": "Sales EMEA",
                "emailaddress": "SALES.emea@contoso.com",
                "_emailserverprofile_value": exchange_online,
            },
        )
        tables.insert(
            sim.store,
            "mailboxes",
            {"name": "Support", "emailaddress": "support@contoso.com", "_emailserverprofile_value": exchange_online},
        )
        payload = client.get(
            "mailboxes",
            query=f"$select=name&$filter=_emailserverprofile_value eq {exchange_online}"
            " and contains(emailaddress,'sales')",
        ).payload()
        assert [row["name"] for row in payload["value"]] == ["Sales EMEA"]
        assert payload["@odata.context"] == f"{API_URL}$metadata#mailboxes(name)"

    def test_unknown_columns_are_named(self, client):
        response = client.get("mailboxes", query="$filter=emailAddress eq 'x'")
        assert response.status == 400
        assert response.payload() == {
            "error": {
                "code": "0x0",
                "message": "Could not find a property named 'emailAddress' on type 'Microsoft.Dynamics.CRM.mailbox'.",
            }
        }

    def test_rows_carry_weak_etags_from_their_version(self, sim, client):
        mailbox = tables.insert(sim.store, "mailboxes", {"name": "Sales"})
        row = client.get(f"mailboxes({mailbox['mailboxid']})", query="$select=name").payload()
        assert row["@odata.etag"] == f'W/"{mailbox["versionnumber"]}"'
        assert row["@odata.context"] == f"{API_URL}$metadata#mailboxes(name)/$entity"
        assert set(row) == {"@odata.context", "@odata.etag", "name", "mailboxid"}

    def test_formatted_values_for_choices_booleans_and_lookups(self, sim, client, org):
        queue = tables.insert(sim.store, "queues", {"name": "Sales", "emailaddress": "sales@contoso.com"})
        mailbox_id = queue["_defaultmailbox_value"]
        plain = client.get(f"mailboxes({mailbox_id})").payload()
        assert not any("@OData.Community" in key for key in plain)
        row = client.get(f"mailboxes({mailbox_id})", headers=ANNOTATIONS).payload()
        formatted = "@OData.Community.Display.V1.FormattedValue"
        assert row[f"actdeliverymethod{formatted}"] == "None"
        assert row[f"incomingemaildeliverymethod{formatted}"] == "Server-Side Synchronization or Email Router"
        assert row[f"isforwardmailbox{formatted}"] == "No"
        assert row[f"_emailserverprofile_value{formatted}"] == "Microsoft Exchange Online"
        assert row[f"_regardingobjectid_value{formatted}"] == "Sales"
        assert row["_regardingobjectid_value@Microsoft.Dynamics.CRM.lookuplogicalname"] == "queue"

    def test_preference_applied_for_annotations(self, sim, client):
        tables.insert(sim.store, "mailboxes", {"name": "Sales"})
        response = client.get("mailboxes", headers=ANNOTATIONS)
        assert response.headers["Preference-Applied"] == 'odata.include-annotations="*"'

    def test_lookups_sort_by_the_target_name(self, sim, client, org):
        tables.insert(
            sim.store,
            "mailboxes",
            {"name": "A", "_emailserverprofile_value": org.legacy_profile["emailserverprofileid"]},
        )
        tables.insert(
            sim.store,
            "mailboxes",
            {"name": "B", "_emailserverprofile_value": org.exchange_online["emailserverprofileid"]},
        )
        payload = client.get("mailboxes", query="$select=name&$orderby=_emailserverprofile_value").payload()
        assert [row["name"] for row in payload["value"]] == ["A", "B"]  # "Legacy…" sorts before "Microsoft…"

    def test_count_segment(self, sim, client):
        _mailboxes(sim, 3)
        response = client.get("mailboxes/$count")
        assert response.status == 200
        assert response.body == b"3"


class TestCreate:
    def test_create_answers_204_with_the_entity_id(self, sim, client, org):
        response = client.post("queues", {"name": "Sales", "emailaddress": "sales@contoso.com"})
        assert response.status == 204
        assert response.body == b""
        queue_id = entity_id(response)
        assert response.headers["OData-EntityId"] == f"{API_URL}queues({queue_id})"
        assert response.headers["OData-Version"] == "4.0"
        assert response.applied

    def test_creating_a_queue_creates_its_mailbox(self, sim, client, org):
        queue_id = entity_id(client.post("queues", {"name": "Sales", "emailaddress": "sales@contoso.com"}))
        queue = client.get(f"queues({queue_id})", query="$select=_defaultmailbox_value").payload()
        mailbox = client.get(f"mailboxes({queue['_defaultmailbox_value']})", headers=ANNOTATIONS).payload()
        assert mailbox["_regardingobjectid_value"] == queue_id
        assert mailbox["_regardingobjectid_value@Microsoft.Dynamics.CRM.lookuplogicalname"] == "queue"
        assert mailbox["emailaddress"] == "sales@contoso.com"
        assert mailbox["isforwardmailbox"] is False
        assert mailbox["_emailserverprofile_value"] == org.exchange_online["emailserverprofileid"]

    def test_creating_a_user_creates_its_mailbox(self, sim, client, org):
        user_id = entity_id(
            client.post(
                "systemusers", {"firstname": "Riya", "lastname": "Patel", "internalemailaddress": "riya@contoso.com"}
            )
        )
        user = client.get(f"systemusers({user_id})", query="$select=fullname,_defaultmailbox_value").payload()
        assert user["fullname"] == "Riya Patel"
        mailbox = sim.store.table("mailboxes")[user["_defaultmailbox_value"]]
        assert mailbox["emailaddress"] == "riya@contoso.com"
        assert mailbox["regardingobjecttypecode"] == "systemuser"

    def test_return_representation_answers_201_with_the_row(self, client, org):
        response = client.post(
            "queues",
            {"name": "Sales", "emailaddress": "sales@contoso.com", "queueviewtype": 1},
            headers={"Prefer": "return=representation"},
        )
        assert response.status == 201
        row = response.payload()
        assert row["name"] == "Sales"
        assert row["queueviewtype"] == 1
        assert row["@odata.etag"].startswith('W/"')
        assert response.headers["Preference-Applied"] == "return=representation"
        assert response.headers["OData-EntityId"].endswith(f"queues({row['queueid']})")

    def test_bind_sets_a_lookup(self, client, org):
        unit_id = org.business_unit["businessunitid"]
        queue_id = entity_id(
            client.post("queues", {"name": "Sales", "businessunitid@odata.bind": f"/businessunits({unit_id})"})
        )
        assert client.get(f"queues({queue_id})").payload()["_businessunitid_value"] == unit_id

    def test_bind_to_a_missing_record_is_refused(self, client, org):
        missing = "9d6c8a1e-0000-4000-8000-000000000001"
        response = client.post("queues", {"name": "Sales", "businessunitid@odata.bind": f"/businessunits({missing})"})
        assert response.status == 400
        assert response.payload()["error"]["message"] == f"businessunit With Id = {missing} Does Not Exist"

    def test_bind_through_an_unknown_navigation_property_is_refused(self, client, org):
        response = client.post("queues", {"name": "Sales", "parentqueue@odata.bind": "/queues(x)"})
        assert response.status == 400
        assert response.payload()["error"]["code"] == "0x80048d19"
        assert "undeclared property 'parentqueue'" in response.payload()["error"]["message"]

    def test_lookup_values_cannot_be_written_directly(self, client, org):
        response = client.post(
            "queues", {"name": "Sales", "_businessunitid_value": org.business_unit["businessunitid"]}
        )
        assert response.status == 400
        assert "Use Navigation properties instead" in response.payload()["error"]["message"]

    def test_unknown_properties_are_refused(self, client):
        response = client.post("queues", {"Name": "Sales"})
        assert response.status == 400
        assert response.payload()["error"]["message"] == (
            "An error occurred while validating input parameters: Microsoft.Crm.CrmException: "
            "Invalid property 'Name' was found in entity 'Microsoft.Dynamics.CRM.queue'."
        )

    def test_read_only_columns_are_refused(self, sim, client, org):
        response = client.post("queues", {"name": "Sales", "queuetypecode": 1})
        assert response.status == 400
        assert "'queuetypecode'" in response.payload()["error"]["message"]
        assert "read-only" in response.payload()["error"]["message"]

    def test_choice_values_outside_the_range_are_refused(self, client, org):
        response = client.post("queues", {"name": "Sales", "incomingemaildeliverymethod": 1})
        assert response.status == 400
        assert "outside the valid range. Accepted Values: 0,2,3" in response.payload()["error"]["message"]


class TestUpdate:
    def test_patch_answers_204_and_bumps_the_version(self, sim, client, org):
        queue = tables.insert(sim.store, "queues", {"name": "Sales"})
        response = client.patch(f"queues({queue['queueid']})", {"description": "Team inbox"})
        assert response.status == 204
        assert response.applied
        row = client.get(f"queues({queue['queueid']})").payload()
        assert row["description"] == "Team inbox"
        assert row["@odata.etag"] != f'W/"{queue["versionnumber"]}"'

    def test_stale_etag_is_refused_with_412(self, sim, client, org):
        queue = tables.insert(sim.store, "queues", {"name": "Sales"})
        etag = client.get(f"queues({queue['queueid']})").payload()["@odata.etag"]
        assert (
            client.patch(f"queues({queue['queueid']})", {"description": "first"}, headers={"If-Match": etag}).status
            == 204
        )
        stale = client.patch(f"queues({queue['queueid']})", {"description": "second"}, headers={"If-Match": etag})
        assert stale.status == 412
        assert stale.payload()["error"] == {
            "code": "0x80060882",
            "message": "The version of the existing record doesn't match the RowVersion property provided.",
        }
        assert sim.store.table("queues")[queue["queueid"]]["description"] == "first"

    def test_missing_rows_are_404_with_or_without_if_match(self, client):
        missing = "5f0c3b0e-1111-4222-8333-944455556666"
        for headers in ({"If-Match": "*"}, {}):
            response = client.patch(f"mailboxes({missing})", {"name": "x"}, headers=headers)
            assert response.status == 404
            assert response.payload()["error"] == {
                "code": "0x80040217",
                "message": f"mailbox With Id = {missing} Does Not Exist",
            }
        assert client.get(f"mailboxes({missing})").status == 404

    def test_return_representation_answers_200_with_the_row(self, sim, client, org):
        queue = tables.insert(sim.store, "queues", {"name": "Sales"})
        response = client.patch(
            f"queues({queue['queueid']})",
            {"name": "Sales (UK)"},
            headers={"Prefer": "return=representation", "If-Match": "*"},
        )
        assert response.status == 200
        assert response.payload()["name"] == "Sales (UK)"

    def test_setting_a_queue_address_updates_its_mailbox(self, sim, client, org):
        queue = tables.insert(sim.store, "queues", {"name": "Sales", "emailaddress": "sales@contoso.com"})
        client.patch(f"queues({queue['queueid']})", {"emailaddress": "sales.uk@contoso.com"})
        mailbox = client.get(f"mailboxes({queue['_defaultmailbox_value']})", query="$select=emailaddress").payload()
        assert mailbox["emailaddress"] == "sales.uk@contoso.com"

    def test_a_queue_without_an_address_gets_a_mailbox_address_when_one_is_set(self, sim, client, org):
        queue_id = entity_id(client.post("queues", {"name": "Sales"}))
        client.patch(f"queues({queue_id})", {"emailaddress": "sales@contoso.com"})
        mailboxes = client.get("mailboxes", query=f"$filter=_regardingobjectid_value eq {queue_id}").payload()["value"]
        assert [mailbox["emailaddress"] for mailbox in mailboxes] == ["sales@contoso.com"]

    def test_mailbox_status_is_read_only(self, sim, client, org):
        mailbox = tables.insert(sim.store, "mailboxes", {"name": "Forward"})
        response = client.patch(f"mailboxes({mailbox['mailboxid']})", {"mailboxstatus": 1})
        assert response.status == 400
        assert "mailboxstatus" in response.payload()["error"]["message"]

    def test_a_lookup_is_cleared_through_its_ref(self, sim, client, org):
        mailbox = tables.insert(
            sim.store,
            "mailboxes",
            {"name": "Forward", "_emailserverprofile_value": org.legacy_profile["emailserverprofileid"]},
        )
        response = client.delete(f"mailboxes({mailbox['mailboxid']})/emailserverprofile/$ref")
        assert response.status == 204
        assert sim.store.table("mailboxes")[mailbox["mailboxid"]]["_emailserverprofile_value"] is None

    def test_a_single_property_can_be_read(self, sim, client):
        mailbox = tables.insert(sim.store, "mailboxes", {"name": "Forward", "emailaddress": "fwd@contoso.com"})
        payload = client.get(f"mailboxes({mailbox['mailboxid']})/emailaddress").payload()
        assert payload["value"] == "fwd@contoso.com"


class TestAddressApproval:
    def test_approval_is_refused_with_403_when_the_privilege_is_missing(self, sim, client, org):
        sim.settings["deny_address_approval"] = True
        queue = tables.insert(sim.store, "queues", {"name": "Sales", "emailaddress": "sales@contoso.com"})
        response = client.patch(f"queues({queue['queueid']})", {"emailrouteraccessapproval": 1})
        assert response.status == 403
        error = response.payload()["error"]
        assert error["code"] == "0x80040220"
        assert "Approve Email Addresses for Users or Queues" in error["message"]
        assert sim.store.table("queues")[queue["queueid"]]["emailrouteraccessapproval"] == 0
        assert not response.applied

    def test_approving_a_queue_approves_its_mailbox(self, sim, client, org):
        queue = tables.insert(sim.store, "queues", {"name": "Sales", "emailaddress": "sales@contoso.com"})
        assert client.patch(f"queues({queue['queueid']})", {"emailrouteraccessapproval": 1}).status == 204
        mailbox = sim.store.table("mailboxes")[queue["_defaultmailbox_value"]]
        assert mailbox["emailrouteraccessapproval"] == 1

    def test_other_approval_states_are_not_privileged(self, sim, client, org):
        sim.settings["deny_address_approval"] = True
        queue = tables.insert(sim.store, "queues", {"name": "Sales", "emailaddress": "sales@contoso.com"})
        assert client.patch(f"queues({queue['queueid']})", {"emailrouteraccessapproval": 2}).status == 204


class TestDelete:
    def test_delete_answers_204_and_the_row_is_gone(self, sim, client, org):
        queue = tables.insert(sim.store, "queues", {"name": "Sales"})
        response = client.delete(f"queues({queue['queueid']})")
        assert response.status == 204
        assert client.get(f"queues({queue['queueid']})").status == 404
        assert queue["_defaultmailbox_value"] not in sim.store.table("mailboxes")

    def test_delete_checks_the_etag(self, sim, client, org):
        queue = tables.insert(sim.store, "queues", {"name": "Sales"})
        response = client.delete(f"queues({queue['queueid']})", headers={"If-Match": 'W/"1"'})
        assert response.status == 412

    def test_users_cannot_be_deleted(self, sim, client, org):
        user = tables.insert(sim.store, "systemusers", {"firstname": "Sam", "lastname": "Doyle"})
        assert client.delete(f"systemusers({user['systemuserid']})").status == 400


class TestRouting:
    def test_who_am_i(self, sim, client, org):
        payload = client.get("WhoAmI").payload()
        assert payload == {
            "@odata.context": f"{API_URL}$metadata#Microsoft.Dynamics.CRM.WhoAmIResponse",
            "BusinessUnitId": org.business_unit["businessunitid"],
            "UserId": APP.oid,
            "OrganizationId": org.organization["organizationid"],
        }

    def test_who_am_i_names_the_application_user(self, sim, client, org):
        user = tables.insert(
            sim.store,
            "systemusers",
            {"firstname": "Portal", "lastname": "App", "azureactivedirectoryobjectid": APP.oid},
        )
        assert client.get("WhoAmI").payload()["UserId"] == user["systemuserid"]

    def test_who_am_i_is_a_function(self, client):
        assert client.post("WhoAmI", {}).status == 404

    def test_unknown_entity_sets_are_404(self, client):
        response = client.get("Mailboxes")
        assert response.status == 404
        assert response.payload()["error"] == {
            "code": "0x8006088a",
            "message": "Resource not found for the segment 'Mailboxes'.",
        }

    def test_paths_outside_the_api_are_404(self, client):
        response = client.get("/api/data/v9.1/mailboxes")
        assert response.status == 404
        assert response.payload()["error"]["code"] == "0x8006088a"

    def test_every_answer_carries_the_odata_version(self, client):
        for response in (client.get("mailboxes"), client.get("nothing"), client.get("mailboxes", query="$top=x")):
            assert response.headers["OData-Version"] == "4.0"

    def test_a_malformed_key_is_refused(self, client):
        assert client.get("mailboxes(not-a-guid)").status == 400
