"""Password guessing against local accounts is throttled per username and per client address.

The counts live in Redis, so every web process sees them; the tests read and age them there
instead of waiting for the window to pass.
"""

from __future__ import annotations

import os
import re
import threading

import pytest
import redis
import requests
from django.conf import settings as django_settings
from django.db import connection
from django.urls import reverse

from portal.accounts import throttle
from portal.audit.models import AuditEvent
from tests.factories import PASSWORD, UserFactory
from tests.servers import clean_env, gunicorn

LOCKED = "Too many attempts to sign in. Wait 15 minutes, then try again."
WRONG = "Enter a correct username and password"
CLIENT = "127.0.0.1"  # the test client's REMOTE_ADDR


def sign_in(client, username, password, **extra):
    return client.post(reverse("accounts:sign_in"), {"username": username, "password": password}, **extra)


def fail(client, username, times, **extra):
    for _ in range(times):
        response = sign_in(client, username, "not-the-password", **extra)
        assert response.status_code == 200
        assert WRONG in response.content.decode()


def redis_connection():
    return redis.Redis.from_url(django_settings.REDIS_URL)


def keys_for(username, address=CLIENT):
    return throttle.attempt_for(username=username, address=address)


@pytest.mark.django_db
def test_five_failures_lock_the_username_and_the_right_password_is_then_refused(client, requester):
    fail(client, "riya", 5)
    response = sign_in(client, "riya", PASSWORD)
    assert response.status_code == 429
    html = response.content.decode()
    assert "<title>Error: Sign in" in html
    assert "There is a problem" in html
    assert LOCKED in html
    assert WRONG not in html
    assert "_auth_user_id" not in client.session


@pytest.mark.django_db
def test_the_lock_reads_the_same_whether_or_not_the_account_exists(client, requester):
    fail(client, "riya", 5)
    fail(client, "nobody-by-this-name", 5)
    real = sign_in(client, "riya", "another guess")
    made_up = sign_in(client, "nobody-by-this-name", "another guess")
    assert real.status_code == made_up.status_code == 429

    def page(response):
        html = response.content.decode().replace("nobody-by-this-name", "riya")
        return re.sub(r'name="csrfmiddlewaretoken" value="[^"]+"', "", html)

    assert page(real) == page(made_up)


@pytest.mark.django_db
def test_refused_attempts_do_not_extend_the_lock_and_it_lifts_after_the_window(client, requester):
    fail(client, "riya", 5)
    connection_ = redis_connection()
    key = keys_for("riya").username_key
    # Each failure restarts a 15-minute window.
    assert 890 <= connection_.ttl(key) <= 900
    connection_.expire(key, 60)
    assert sign_in(client, "riya", "guess").status_code == 429
    assert connection_.ttl(key) <= 60  # the refused attempt counted for nothing
    assert int(connection_.get(key)) == 5

    connection_.expire(key, 0)  # the window passes without another failure
    response = sign_in(client, "riya", PASSWORD)
    assert response.status_code == 302
    assert client.session["_auth_user_id"] == str(requester.pk)


@pytest.mark.django_db
def test_a_failure_within_the_window_restarts_it(client, requester):
    fail(client, "riya", 4)
    connection_ = redis_connection()
    key = keys_for("riya").username_key
    connection_.expire(key, 30)
    fail(client, "riya", 1)
    assert connection_.ttl(key) > 890
    assert sign_in(client, "riya", PASSWORD).status_code == 429


@pytest.mark.django_db
def test_failures_older_than_the_window_no_longer_count(client, requester):
    fail(client, "riya", 4)
    redis_connection().expire(keys_for("riya").username_key, 0)
    fail(client, "riya", 4)
    assert sign_in(client, "riya", PASSWORD).status_code == 302


@pytest.mark.django_db
def test_signing_in_clears_only_ones_own_count(client, requester, migration_lead):
    fail(client, "riya", 4)
    fail(client, "tom", 4)
    assert sign_in(client, "riya", PASSWORD).status_code == 302
    client.post(reverse("accounts:sign_out"))
    connection_ = redis_connection()
    assert not connection_.exists(keys_for("riya").username_key)
    assert int(connection_.get(keys_for("tom").username_key)) == 4
    # Tom's count still stands: one more failure locks him out.
    fail(client, "tom", 1)
    assert sign_in(client, "tom", PASSWORD).status_code == 429
    # Riya starts again from nothing.
    fail(client, "riya", 4)
    assert sign_in(client, "riya", PASSWORD).status_code == 302


@pytest.mark.django_db
def test_twenty_failures_from_one_address_lock_that_address_for_every_username(client, requester):
    guesser = {"REMOTE_ADDR": "203.0.113.7"}
    for number in range(20):
        fail(client, f"guess-{number}", 1, **guesser)
    refused = sign_in(client, "riya", PASSWORD, **guesser)
    assert refused.status_code == 429
    assert LOCKED in refused.content.decode()
    # Someone else, elsewhere, signs in as usual; the username itself was never guessed at.
    assert sign_in(client, "riya", PASSWORD, REMOTE_ADDR="198.51.100.20").status_code == 302


@pytest.mark.django_db
def test_a_successful_sign_in_does_not_give_an_address_back_its_failures(client, requester):
    guesser = {"REMOTE_ADDR": "203.0.113.7"}
    for number in range(19):
        fail(client, f"guess-{number}", 1, **guesser)
    assert sign_in(client, "riya", PASSWORD, **guesser).status_code == 302
    client.post(reverse("accounts:sign_out"))
    fail(client, "guess-19", 1, **guesser)
    assert sign_in(client, "guess-20", "x", **guesser).status_code == 429


@pytest.mark.django_db
def test_behind_a_proxy_the_address_it_saw_counts_not_what_the_client_claims(client, settings, requester):
    settings.TRUSTED_PROXY_COUNT = 1
    for number in range(20):
        # The left-hand entries are the guesser's own inventions; the proxy appends the real address.
        fail(
            client,
            f"guess-{number}",
            1,
            REMOTE_ADDR="10.0.0.2",
            HTTP_X_FORWARDED_FOR=f"192.0.2.{number}, 203.0.113.7",
        )
    behind_proxy = {"REMOTE_ADDR": "10.0.0.2"}
    assert sign_in(client, "riya", PASSWORD, HTTP_X_FORWARDED_FOR="203.0.113.7", **behind_proxy).status_code == 429
    # Everyone else reaches the portal through the same proxy and is not affected.
    assert sign_in(client, "riya", PASSWORD, HTTP_X_FORWARDED_FOR="198.51.100.20", **behind_proxy).status_code == 302


@pytest.mark.django_db
def test_ipv6_clients_are_counted_per_64_block(client, requester):
    for number in range(20):
        fail(client, f"guess-{number}", 1, REMOTE_ADDR=f"2001:db8:1:2::{number + 1:x}")
    assert sign_in(client, "riya", PASSWORD, REMOTE_ADDR="2001:db8:1:2:ffff::1").status_code == 429
    assert sign_in(client, "riya", PASSWORD, REMOTE_ADDR="2001:db8:1:3::1").status_code == 302


@pytest.mark.django_db
def test_failures_and_refusals_are_in_the_audit_trail(client, requester):
    fail(client, "riya", 5)
    sign_in(client, "riya", PASSWORD)
    events = list(AuditEvent.objects.filter(action="auth.sign_in").order_by("seq"))
    assert [(event.outcome, event.object_id, event.actor_id) for event in events] == [("failure", "riya", None)] * 6
    assert {event.reason for event in events[:5]} == {"username or password not recognised"}
    assert events[5].reason == "too many failed attempts; refused without checking the password"


@pytest.mark.django_db
def test_when_redis_cannot_be_reached_no_password_is_checked(client, settings, requester):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    response = sign_in(client, "riya", PASSWORD)
    assert response.status_code == 503
    assert "Sorry, signing in is not available at the moment" in response.content.decode()
    assert "_auth_user_id" not in client.session
    assert not AuditEvent.objects.filter(action="auth.sign_in").exists()


def test_parallel_attempts_get_no_more_than_the_limit_between_them():
    attempt = keys_for("riya")
    results: list[bool] = []
    start = threading.Barrier(20)

    def guess() -> None:
        start.wait()
        results.append(throttle.attempt_reserve(attempt))

    threads = [threading.Thread(target=guess) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count(True) == 5


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_count_is_shared_by_every_gunicorn_worker(tmp_path):
    UserFactory(username="riya")
    database = connection.settings_dict
    credentials = database["USER"] + (f":{database['PASSWORD']}" if database["PASSWORD"] else "")
    env = clean_env(
        DJANGO_SETTINGS_MODULE="portal.settings.local",
        PORTAL_VAR_DIR=str(tmp_path),
        DATABASE_URL=f"postgres://{credentials}@{database['HOST']}:{database['PORT']}/{database['NAME']}",
        REDIS_URL=os.environ["REDIS_URL"],
    )
    statuses = []
    with gunicorn(env, workers=2) as base:
        for password in ["wrong"] * 5 + [PASSWORD]:
            # A new connection each time, so the attempts land on different workers.
            with requests.Session() as browser:
                # Generous timeouts: each worker's first request loads the whole portal.
                page = browser.get(f"{base}/accounts/sign-in/", timeout=60).text
                token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
                response = browser.post(
                    f"{base}/accounts/sign-in/",
                    data={"csrfmiddlewaretoken": token, "username": "riya", "password": password},
                    allow_redirects=False,
                    timeout=60,
                )
                statuses.append(response.status_code)
    assert statuses == [200] * 5 + [429]
