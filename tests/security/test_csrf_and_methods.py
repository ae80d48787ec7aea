"""Every view that accepts POST refuses one without a CSRF token, and a GET on it changes nothing.

The list of such views is the access matrix's POST rows; a view that answers POST with anything
but 405 and has no POST row fails the suite by name. Each case is made by someone the view would
otherwise serve (an owner for their own object, and every role the matrix lets in), and a control
request with a valid token shows that the refusal came from the CSRF check.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.conf import settings
from django.middleware.csrf import CSRF_ALLOWED_CHARS, CSRF_SECRET_LENGTH
from django.test import Client
from django.urls import reverse
from django.utils.crypto import get_random_string

from portal.accounts.roles import Role
from tests.factories import UserFactory
from tests.security.access_fixtures import (
    ANONYMOUS,
    OWN,
    THEIRS,
    call,
    client_as,
    url_names,
    world_for_module,
)
from tests.security.test_access_matrix import COLUMNS, GET, MATRIX, OWN_OBJECTS, POST, REFUSED, post_names

pytestmark = pytest.mark.django_db

CSRF_REFUSAL = "Sorry, your form could not be sent"
# Signing out ends the client's session, so each of its requests gets a client of its own.
FRESH_CLIENT = {"accounts:sign_out"}


@pytest.fixture(scope="module")
def world(django_db_setup, django_db_blocker):
    with world_for_module(django_db_blocker) as built:
        yield built


def _cases() -> list[tuple[str, str, str]]:
    """(url name, persona, whose object): each POST the view would otherwise serve."""
    cases = []
    for name in sorted(post_names()):
        found = [
            (name, persona, "own")
            for persona, own_name, method, _, _ in OWN_OBJECTS
            if (own_name, method) == (name, POST)
        ]
        row = MATRIX[(name, POST)]
        found += [
            (name, persona, "theirs") for persona, expected in zip(COLUMNS, row, strict=True) if expected not in REFUSED
        ]
        # Switched off for everyone (sign-in with Microsoft): the CSRF check still answers first.
        cases += found or [(name, ANONYMOUS, "theirs")]
    return cases


CASES = _cases()
IDS = [f"{name}-{persona}-{whose}" for name, persona, whose in CASES]


def _url(name: str, whose: str, world) -> str:
    kwargs = (OWN if whose == "own" else THEIRS)[name](world)
    return reverse(name, kwargs=kwargs)


@pytest.fixture(scope="module")
def csrf_clients(world):
    """Clients that enforce CSRF checks as browsers do, one per persona."""
    return {persona: client_as(world, persona, enforce_csrf_checks=True) for persona in COLUMNS}


def _client(name: str, persona: str, world, shared) -> Any:
    return client_as(world, persona, enforce_csrf_checks=True) if name in FRESH_CLIENT else shared[persona]


def test_every_view_that_accepts_post_has_a_post_row_in_the_matrix(world):
    """A view accepts POST when someone holding every role gets anything but 405 for one."""
    everyone = UserFactory(username="matrix-everyone", roles=list(Role))
    shared = Client()
    shared.force_login(everyone)
    accepting = set()
    for name in url_names():
        client = shared
        if name in FRESH_CLIENT:
            client = Client()
            client.force_login(everyone)
        outcome = call(client, POST, reverse(name, kwargs=THEIRS[name](world)))
        assert outcome.status < 500, f"POST {name}: server error {outcome.status}"
        if outcome.status != 405:
            accepting.add(name)

    unlisted = sorted(accepting - post_names())
    assert not unlisted, "Views that accept POST but have no POST row in the access matrix: " + ", ".join(unlisted)
    refusing = sorted(post_names() - accepting)
    assert not refusing, "Matrix POST rows for views that answer POST with 405: " + ", ".join(refusing)


@pytest.mark.parametrize(("name", "persona", "whose"), CASES, ids=IDS)
def test_a_post_without_a_csrf_token_is_refused_and_changes_nothing(name, persona, whose, world, csrf_clients):
    url = _url(name, whose, world)

    refused = call(_client(name, persona, world, csrf_clients), POST, url, watch=True)

    assert refused.status == 403
    assert CSRF_REFUSAL in refused.body
    assert refused.changed == (), f"changed {refused.changed}"
    assert refused.queued == 0

    # The same POST with a valid token reaches the view: the refusal above was the CSRF check's.
    client = _client(name, persona, world, csrf_clients)
    secret = get_random_string(CSRF_SECRET_LENGTH, allowed_chars=CSRF_ALLOWED_CHARS)
    client.cookies[settings.CSRF_COOKIE_NAME] = secret
    accepted = call(client, POST, url, data={"csrfmiddlewaretoken": secret})
    del client.cookies[settings.CSRF_COOKIE_NAME]
    assert accepted.status not in (403, 405, 500)
    assert CSRF_REFUSAL not in accepted.body


@pytest.mark.parametrize(("name", "persona", "whose"), CASES, ids=IDS)
def test_a_get_on_a_state_changing_url_changes_nothing(name, persona, whose, world, csrf_clients):
    outcome = call(_client(name, persona, world, csrf_clients), GET, _url(name, whose, world), watch=True)

    # A form or confirmation page, a redirect to where the action starts, or 405; sign-in with
    # Microsoft does not exist while it is switched off.
    switched_off = whose == "theirs" and MATRIX[(name, GET)][COLUMNS.index(persona)] == 404
    assert outcome.status in ((404,) if switched_off else (200, 302, 405))
    # Audit events, model rows and queued jobs alike.
    assert outcome.changed == (), f"changed {outcome.changed}"
    assert outcome.queued == 0
