"""The address check against Microsoft 365, through the real clients and the tenant simulator."""

from __future__ import annotations

import pytest
from django.urls import reverse

from onboarding.models import RequestStatus
from onboarding.services.mailbox_requests import (
    TENANT_UNAVAILABLE,
    mailbox_request_create_draft,
    mailbox_request_submit,
    mailbox_request_update,
)
from portal.exceptions import PortalError
from tests.onboarding.mailbox_request_support import complete_request, record_approval_route

pytestmark = pytest.mark.django_db


def seeded_address(sim, purpose: str) -> tuple[str, str]:
    """An address the simulator's demo organisation already uses, and its display name."""
    users = sim.control("GET", "rows/graph_users")["value"]
    user = next(row for row in users if row["userPurpose"] == purpose and row["mail"].endswith("@example.gov.uk"))
    return user["mail"], user["displayName"]


def surfaces_called(sim, since: int) -> list[str]:
    return [entry["surface"] for entry in sim.ledger(since) if entry["surface"] in ("graph", "exchange")]


@pytest.mark.parametrize("purpose", ["shared", "user"])
def test_an_address_used_in_the_tenant_is_refused_with_who_uses_it(requester, m365_settings, fresh_sim, purpose):
    address, name = seeded_address(fresh_sim, purpose)
    local_part, domain = address.split("@")
    draft = mailbox_request_create_draft(actor=requester)
    with pytest.raises(PortalError) as caught:
        mailbox_request_update(
            actor=requester, request_id=draft.pk, changes={"local_part": local_part.upper(), "domain": domain}
        )
    assert caught.value.message == f"That address is already used by {name} in Microsoft 365"
    assert caught.value.field == "local_part"
    draft.refresh_from_db()
    assert draft.local_part == ""


def test_a_free_address_is_asked_of_graph_and_exchange(requester, m365_settings, fresh_sim):
    since = fresh_sim.last_seq()
    draft = mailbox_request_create_draft(actor=requester)
    mailbox_request_update(
        actor=requester,
        request_id=draft.pk,
        changes={"local_part": "brand-new-team-inbox", "domain": "example.gov.uk"},
    )
    draft.refresh_from_db()
    assert draft.address == "brand-new-team-inbox@example.gov.uk"
    assert surfaces_called(fresh_sim, since) == ["graph", "exchange"]


def test_an_unchanged_address_is_not_asked_again(requester, m365_settings, fresh_sim):
    draft = complete_request(requester, local_part="quiet-inbox")
    since = fresh_sim.last_seq()
    mailbox_request_update(
        actor=requester, request_id=draft.pk, changes={"local_part": "quiet-inbox", "domain": "example.gov.uk"}
    )
    assert surfaces_called(fresh_sim, since) == []


def test_submission_checks_the_tenant_again(requester, m365_settings, fresh_sim, monkeypatch):
    route = record_approval_route(monkeypatch)
    address, name = seeded_address(fresh_sim, "shared")
    local_part, domain = address.split("@")
    # Saved before the tenant was connected, say: the database alone cannot know.
    draft = complete_request(requester, local_part=local_part, domain=domain)
    with pytest.raises(PortalError, match=f"already used by {name}"):
        mailbox_request_submit(actor=requester, request_id=draft.pk)
    draft.refresh_from_db()
    assert draft.status == RequestStatus.DRAFT
    assert route.starts == []


def test_an_unreachable_tenant_gives_a_clear_message_not_an_error_page(requester, m365_settings, fresh_sim):
    fresh_sim.control("PUT", "faults", {"rate_5xx": 1.0, "seed": 1, "surfaces": ["graph"]})
    draft = mailbox_request_create_draft(actor=requester)
    with pytest.raises(PortalError) as caught:
        mailbox_request_update(
            actor=requester, request_id=draft.pk, changes={"local_part": "finance-desk", "domain": "example.gov.uk"}
        )
    assert caught.value.message == TENANT_UNAVAILABLE


def test_the_address_page_shows_a_taken_address_in_an_error_summary(requester, client_for, m365_settings, fresh_sim):
    address, name = seeded_address(fresh_sim, "shared")
    local_part, domain = address.split("@")
    draft = mailbox_request_create_draft(actor=requester)
    response = client_for(requester).post(
        reverse("onboarding:request_question", args=[draft.pk, "address"]),
        {"local_part": local_part, "domain": domain, "submit": "Save and continue"},
    )
    assert response.status_code == 200
    html = response.content.decode()
    assert "govuk-error-summary" in html
    assert f"That address is already used by {name} in Microsoft 365" in html


def test_check_your_answers_says_the_tenant_is_checked(requester, client_for, m365_settings):
    draft = complete_request(requester)
    html = client_for(requester).get(reverse("onboarding:request_check", args=[draft.pk])).content.decode()
    assert "We check this address is free in Microsoft 365 when you submit the request." in html
