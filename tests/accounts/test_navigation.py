"""Each role sees its own sections in the service navigation, and nothing else."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

# Mailbox health is for every signed-in person: owners review their own mailboxes' alerts there.
EXPECTED = {
    "requester": ["Home", "Requests", "Mailbox health"],
    "approver": ["Home", "Approvals", "Mailbox health"],
    "platform_admin": ["Home", "Approvals", "Platform", "Policy", "Migration", "Mailbox health", "Audit"],
    "migration_lead": ["Home", "Migration", "Mailbox health"],
    "auditor": ["Home", "Mailbox health", "Audit"],
    "outsider": ["Home", "Mailbox health"],
}

SECTION_URLS = {
    "Requests": "onboarding:requests",
    "Approvals": "onboarding:approvals",
    "Platform": "platform",
    "Policy": "policy:summary",
    "Migration": "migration:dashboard",
    "Mailbox health": "governance:alerts",
    "Audit": "audit:events",
}


def nav_labels(html: str) -> list[str]:
    nav = html.split('id="navigation"', 1)[1].split("</ul>", 1)[0]
    return [
        re.sub(r"<[^>]+>", "", label).strip()
        for label in re.findall(r'service-navigation__link"[^>]*>(.*?)</a>', nav, re.S)
    ]


@pytest.mark.django_db
@pytest.mark.parametrize("persona", EXPECTED)
def test_navigation_matches_the_role(persona, request, client_for):
    client = client_for(request.getfixturevalue(persona))
    html = client.get(reverse("home")).content.decode()
    assert nav_labels(html) == EXPECTED[persona]


@pytest.mark.django_db
@pytest.mark.parametrize("persona", EXPECTED)
def test_sections_outside_the_role_are_refused(persona, request, client_for):
    client = client_for(request.getfixturevalue(persona))
    for label, url_name in SECTION_URLS.items():
        status = client.get(reverse(url_name)).status_code
        assert status == (200 if label in EXPECTED[persona] else 403), (label, status)


@pytest.mark.django_db
def test_someone_with_two_roles_sees_both(client_for):
    from portal.accounts.roles import Role
    from tests.factories import UserFactory

    both = UserFactory(username="both", roles=[Role.REQUESTER, Role.MIGRATION_LEAD])
    html = client_for(both).get(reverse("home")).content.decode()
    assert nav_labels(html) == ["Home", "Requests", "Migration", "Mailbox health"]
    assert "<strong>requester</strong> and <strong>migration lead</strong>" in html


@pytest.mark.django_db
def test_an_outsider_is_told_how_to_get_access(client_for, outsider):
    html = client_for(outsider).get(reverse("home")).content.decode()
    assert "You do not have a role in the portal yet" in html


@pytest.mark.django_db
def test_the_current_section_is_marked(client_for, auditor):
    html = client_for(auditor).get(reverse("audit:events")).content.decode()
    assert 'aria-current="page"' in html
    assert '<strong class="govuk-service-navigation__active-fallback">Audit</strong>' in html
