"""Fixtures for the policy pages: configured application registrations and a two-stage route."""

from __future__ import annotations

import re

import pytest

from onboarding.models import ApprovalStage, ApproverKind
from portal.accounts.roles import Role
from portal.m365.config import AppRegistration, M365Config

CLIENT_IDS = {
    "1": "11111111-1111-4111-8111-111111111111",
    "2": "22222222-2222-4222-8222-222222222222",
    "3": "33333333-3333-4333-8333-333333333333",
}


def make_registrations(*names: str) -> tuple[AppRegistration, ...]:
    return tuple(
        AppRegistration(name=name, client_id=CLIENT_IDS[name], client_secret=f"secret-{name}") for name in names
    )


@pytest.fixture
def registrations(settings) -> tuple[AppRegistration, ...]:
    """Three application registrations, as M365_CLIENT_ID, M365_CLIENT_ID_2 and M365_CLIENT_ID_3 give."""
    configured = make_registrations("1", "2", "3")
    settings.M365 = M365Config(
        enabled=True,
        tenant_id="6f1c3a52-8d4b-4a0e-9a55-2b7de3f0c001",
        authority_host="https://login.example.test",
        registrations=configured,
        dataverse_url="https://contoso.crm11.example.test",
    )
    return configured


@pytest.fixture
def stages(db) -> list[ApprovalStage]:
    """Business owner, then platform admin: the route the tests change."""
    ApprovalStage.objects.all().delete()
    return [
        ApprovalStage.objects.create(
            order=1, name="Business owner", approver_kind=ApproverKind.TEAM_OWNER, sla_hours=48
        ),
        ApprovalStage.objects.create(
            order=2, name="Platform admin", approver_kind=ApproverKind.ROLE, role=Role.PLATFORM_ADMIN, sla_hours=24
        ),
    ]


def text(response) -> str:
    return re.sub(r"\s+", " ", response.content.decode())
