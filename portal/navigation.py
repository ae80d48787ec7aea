"""The service navigation: which sections a person sees depends on their permissions."""

from __future__ import annotations

from dataclasses import dataclass

from django.http import HttpRequest
from django.urls import reverse

from portal.accounts.roles import perm


@dataclass(frozen=True)
class Section:
    label: str
    url_name: str
    permissions: tuple[str, ...]  # any one of them; empty: every signed-in person
    exact: bool = False


SECTIONS: tuple[Section, ...] = (
    Section("Home", "home", (), exact=True),
    Section("Requests", "onboarding:requests", ("submit_mailbox_requests",)),
    Section("Approvals", "onboarding:approvals", ("decide_approvals",)),
    Section("Platform", "platform", ("administer_platform",)),
    Section("Policy", "policy:summary", ("administer_platform",)),
    Section("Migration", "migration:dashboard", ("lead_migration", "administer_platform")),
    # Everyone signed in: owners review their own mailboxes' alerts there.
    Section("Mailbox health", "governance:alerts", ()),
    Section("Audit", "audit:events", ("view_audit_trail",)),
)


@dataclass(frozen=True)
class NavItem:
    label: str
    url: str
    active: bool
    current: bool


def navigation_for(request: HttpRequest) -> list[NavItem]:
    # Error pages can render before the authentication middleware ran (a bad Host header).
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return []
    items = []
    for section in SECTIONS:
        if section.permissions and not any(user.has_perm(perm(name)) for name in section.permissions):
            continue
        url = reverse(section.url_name)
        current = request.path == url
        active = current or (not section.exact and request.path.startswith(url))
        items.append(NavItem(section.label, url, active, current))
    return items
