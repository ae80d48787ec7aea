"""Error pages are GOV.UK pages that give the next step and reveal nothing of the internals."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import path

from portal.urls import urlpatterns as portal_urlpatterns


def explode(request):
    raise RuntimeError("secret internals: database password is hunter2")


urlpatterns = [*portal_urlpatterns, path("explode/", explode)]
handler500 = "portal.views.server_error"


@pytest.mark.django_db
def test_unknown_page_is_a_govuk_404(client_for, requester):
    response = client_for(requester).get("/no-such-page/")
    assert response.status_code == 404
    html = response.content.decode()
    assert "Page not found" in html
    assert "govuk-header" in html
    assert 'id="navigation"' in html  # the person can carry on from here


@pytest.mark.django_db
def test_forbidden_page_is_a_govuk_403(client_for, outsider):
    response = client_for(outsider).get("/audit/")
    assert response.status_code == 403
    assert "You do not have permission to view this page" in response.content.decode()


@pytest.mark.django_db
@pytest.mark.urls("tests.portal.test_error_pages")
def test_server_error_is_a_govuk_500_with_a_reference_and_no_details(requester):
    client = Client(raise_request_exception=False)
    client.force_login(requester)
    response = client.get("/explode/", HTTP_X_REQUEST_ID="ref-12345678")
    assert response.status_code == 500
    html = response.content.decode()
    assert "Sorry, there is a problem with the service" in html
    assert "ref-12345678" in html
    assert "hunter2" not in html and "Traceback" not in html


@pytest.mark.django_db
def test_a_form_posted_without_csrf_gets_a_govuk_page_and_changes_nothing(requester):
    client = Client(enforce_csrf_checks=True)
    client.force_login(requester)
    response = client.post("/accounts/sign-out/")
    assert response.status_code == 403
    assert "Sorry, your form could not be sent" in response.content.decode()
    assert "_auth_user_id" in client.session


@pytest.mark.django_db
def test_every_response_carries_a_request_id(client):
    response = client.get("/accounts/sign-in/")
    assert len(response["X-Request-ID"]) == 32
    response = client.get("/accounts/sign-in/", HTTP_X_REQUEST_ID="bad id with spaces")
    assert response["X-Request-ID"] != "bad id with spaces"
