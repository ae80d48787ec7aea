"""Signing in and out with a local account; every attempt is in the audit trail."""

from __future__ import annotations

import pytest
from django.urls import reverse

from portal.audit.models import AuditEvent
from tests.factories import PASSWORD


@pytest.mark.django_db
def test_sign_in_lands_on_home_and_is_audited(client, requester):
    response = client.post(reverse("accounts:sign_in"), {"username": "riya", "password": PASSWORD}, follow=True)
    assert response.redirect_chain[-1][0] == reverse("home")
    assert "Welcome, Riya" in response.content.decode()
    event = AuditEvent.objects.get(action="auth.sign_in")
    assert (event.actor_id, event.outcome, event.object_id) == (requester.pk, "success", str(requester.pk))
    assert event.correlation_id


@pytest.mark.django_db
def test_wrong_password_gets_an_error_summary_and_an_audited_failure(client, requester):
    response = client.post(reverse("accounts:sign_in"), {"username": "riya", "password": "wrong"})
    assert response.status_code == 200
    html = response.content.decode()
    assert "<title>Error: Sign in" in html
    assert "There is a problem" in html
    assert "Enter a correct username and password" in html
    assert "_auth_user_id" not in client.session
    event = AuditEvent.objects.get(action="auth.sign_in")
    assert (event.outcome, event.actor_id, event.object_id) == ("failure", None, "riya")


@pytest.mark.django_db
@pytest.mark.parametrize("sent", [{"username": "", "password": ""}, {}], ids=["empty fields", "nothing at all"])
def test_empty_fields_get_govuk_messages(sent, client):
    html = client.post(reverse("accounts:sign_in"), sent).content.decode()
    assert "govuk-error-summary" in html
    assert "Enter your username" in html
    assert "Enter your password" in html
    assert not AuditEvent.objects.exists()


@pytest.mark.django_db
def test_inactive_accounts_cannot_sign_in(client, requester):
    requester.is_active = False
    requester.save()
    html = client.post(reverse("accounts:sign_in"), {"username": "riya", "password": PASSWORD}).content.decode()
    assert "Enter a correct username and password" in html


@pytest.mark.django_db
def test_next_is_followed_only_within_the_portal(client, auditor):
    ok = client.post(
        reverse("accounts:sign_in"), {"username": "aisha", "password": PASSWORD, "next": reverse("audit:events")}
    )
    assert ok["Location"] == reverse("audit:events")
    client.post(reverse("accounts:sign_out"))
    evil = client.post(
        reverse("accounts:sign_in"), {"username": "aisha", "password": PASSWORD, "next": "https://evil.example/"}
    )
    assert evil["Location"] == reverse("home")


@pytest.mark.django_db
def test_protected_pages_send_visitors_to_sign_in_and_back(client, auditor):
    response = client.get(reverse("audit:events"))
    assert response["Location"] == f"{reverse('accounts:sign_in')}?next={reverse('audit:events')}"
    page = client.get(response["Location"]).content.decode()
    assert 'name="next" value="/audit/"' in page


@pytest.mark.django_db
def test_sign_out_needs_a_post_and_is_audited(client_for, requester):
    client = client_for(requester)
    confirm = client.get(reverse("accounts:sign_out"))
    assert confirm.status_code == 200
    assert "_auth_user_id" in client.session  # a GET never signs anyone out
    response = client.post(reverse("accounts:sign_out"), follow=True)
    assert "You have signed out" in response.content.decode()
    assert "_auth_user_id" not in client.session
    assert AuditEvent.objects.filter(action="auth.sign_out", actor_id=requester.pk).exists()
