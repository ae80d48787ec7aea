from __future__ import annotations

import pytest
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

from portal.accounts.management.commands.seed_demo import DEFAULT_DEMO_PASSWORD
from portal.accounts.models import User
from portal.accounts.roles import Role
from portal.audit.models import AuditEvent


@pytest.mark.django_db
def test_seed_creates_one_account_per_role_and_an_outsider(capsys):
    call_command("seed_demo")
    output = capsys.readouterr().out
    roles = {user.username: user.roles() for user in User.objects.prefetch_related("groups")}
    assert roles == {
        "requester": [Role.REQUESTER],
        "approver": [Role.REQUESTER, Role.APPROVER],
        "admin": [Role.PLATFORM_ADMIN],
        "migration": [Role.MIGRATION_LEAD],
        "auditor": [Role.AUDITOR],
        "outsider": [],
    }
    assert DEFAULT_DEMO_PASSWORD in output
    assert "/accounts/sign-in/" in output
    for username in roles:
        assert username in output


@pytest.mark.django_db
def test_seed_is_repeatable_and_audited_once(capsys):
    call_command("seed_demo")
    call_command("seed_demo", password="another-demo-password")
    assert User.objects.count() == 6
    assert AuditEvent.objects.filter(action="account.created").count() == 6
    client = Client()
    assert client.login(username="auditor", password="another-demo-password")
    assert client.get(reverse("audit:events")).status_code == 200


@pytest.mark.django_db
def test_seed_refuses_to_run_in_production(settings):
    from django.core.management.base import CommandError

    settings.PORTAL_ENVIRONMENT = "production"
    with pytest.raises(CommandError, match="does not run in production"):
        call_command("seed_demo")
    assert not User.objects.exists()
