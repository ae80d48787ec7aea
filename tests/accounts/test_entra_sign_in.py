"""Signing in with Microsoft Entra ID: the portal's views and MSAL for real, only the tenant's HTTP faked.

The fake tenant answers the discovery document and the token endpoint the way
Entra ID does: it checks the PKCE verifier against the challenge it was given
at the authorize step and signs ID tokens (RS256) carrying the nonce it was
given there, which MSAL sent as the SHA-256 hex of the flow's own nonce.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import secrets
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa
from django.contrib.auth.models import Group
from django.test import Client
from django.urls import reverse

from portal.accounts import entra
from portal.accounts.models import User
from portal.accounts.roles import ROLE_GROUP_NAMES, Role
from portal.audit.models import AuditEvent
from portal.m365.config import EntraSignInConfig
from portal.m365.http import session_for_ca_bundle
from tests.accounts.test_navigation import nav_labels
from tests.factories import PASSWORD, UserFactory

TENANT_ID = "5f1c2a3b-0d4e-4f6a-8b7c-9d0e1f2a3b4c"
CLIENT_ID = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
AUTHORITY = f"https://login.example.test/{TENANT_ID}"
ISSUER = f"{AUTHORITY}/v2.0"
DISCOVERY_URL = f"{AUTHORITY}/v2.0/.well-known/openid-configuration"
AUTHORIZE_URL = f"{AUTHORITY}/oauth2/v2.0/authorize"
TOKEN_URL = f"{AUTHORITY}/oauth2/v2.0/token"
END_SESSION_URL = f"{AUTHORITY}/oauth2/v2.0/logout"
CALLBACK = "/accounts/entra/callback/"

RIYA = {
    "oid": "9b2e6c1a-7d3f-4e8b-a5c2-1f0d9e8c7b6a",
    "preferred_username": "riya.patel@example.gov.uk",
    "name": "Riya Patel",
    "email": "riya.patel@example.gov.uk",
}

# The portal asks for response_mode=query on purpose (see portal.accounts.entra); pytest resets
# the module's own filter for each test.
pytestmark = pytest.mark.filterwarnings("ignore:response_mode='form_post' is recommended:UserWarning")

SIGNING_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _discovery(*, end_session: bool = True) -> dict[str, Any]:
    document = {
        "issuer": ISSUER,
        "authorization_endpoint": AUTHORIZE_URL,
        "token_endpoint": TOKEN_URL,
        "jwks_uri": f"{AUTHORITY}/discovery/v2.0/keys",
        "response_types_supported": ["code", "id_token", "code id_token"],
        "id_token_signing_alg_values_supported": ["RS256"],
    }
    if end_session:
        document["end_session_endpoint"] = END_SESSION_URL
    return document


@dataclass
class FakeTenant:
    """Entra ID's side: codes handed out at the authorize step and redeemed at the token endpoint."""

    mocker: Any
    codes: dict[str, dict[str, Any]] = field(default_factory=dict)
    issued: list[str] = field(default_factory=list)  # every token string handed out
    claim_overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.discovery = self.mocker.get(DISCOVERY_URL, json=_discovery())
        self.token = self.mocker.post(TOKEN_URL, json=self._token_endpoint)

    def authorize(self, location: str, *, roles: list[str], **person: str) -> str:
        """What the browser gets back after the person signs in at Microsoft: the callback URL."""
        query = {key: values[0] for key, values in parse_qs(urlsplit(location).query).items()}
        code = secrets.token_urlsafe(24)
        self.codes[code] = {"query": query, "person": {**RIYA, **person, "roles": roles}}
        return f"{CALLBACK}?{urlencode({'code': code, 'state': query['state'], 'session_state': 'abc'})}"

    def _token_endpoint(self, request, context) -> dict[str, Any]:
        form = {key: values[0] for key, values in parse_qs(request.text).items()}
        grant = self.codes.pop(form.get("code", ""), None)
        if grant is None:
            context.status_code = 400
            return {"error": "invalid_grant", "error_description": "AADSTS70008: The code has expired or was used."}
        query = grant["query"]
        challenge = _b64url(hashlib.sha256(form["code_verifier"].encode("ascii")).digest())
        if challenge != query["code_challenge"] or form["redirect_uri"] != query["redirect_uri"]:
            context.status_code = 400
            return {"error": "invalid_grant", "error_description": "AADSTS501481: The code verifier does not match."}
        now = int(time.time())
        person = grant["person"]
        claims = {
            "aud": CLIENT_ID,
            "iss": ISSUER,
            "tid": TENANT_ID,
            "sub": f"sub-{person['oid']}",
            "nonce": query["nonce"],  # as given to authorize
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
            "ver": "2.0",
            **person,
            **self.claim_overrides,
        }
        claims = {key: value for key, value in claims.items() if value is not None}
        id_token = jwt.encode(claims, SIGNING_KEY, algorithm="RS256", headers={"kid": "test-key"})
        access_token = jwt.encode(
            {"aud": "00000003-0000-0000-c000-000000000000", "oid": person["oid"], "exp": now + 3600},
            SIGNING_KEY,
            algorithm="RS256",
        )
        refresh_token = secrets.token_urlsafe(48)
        self.issued += [id_token, access_token, refresh_token]
        return {
            "token_type": "Bearer",
            "scope": "openid profile offline_access",
            "expires_in": 3599,
            "ext_expires_in": 3599,
            "access_token": access_token,
            "refresh_token": refresh_token,
            "id_token": id_token,
            "client_info": _b64url(json.dumps({"uid": person["oid"], "utid": TENANT_ID}).encode()),
        }


@pytest.fixture
def entra_enabled(settings):
    settings.ENTRA_SIGNIN = EntraSignInConfig(
        enabled=True,
        authority_host="https://login.example.test",
        tenant_id=TENANT_ID,
        client_id=CLIENT_ID,
        client_secret="sign-in-app-secret",
    )
    entra.entra_client_cache_clear()
    yield settings.ENTRA_SIGNIN
    entra.entra_client_cache_clear()


@pytest.fixture
def tenant(entra_enabled, requests_mock):
    return FakeTenant(requests_mock)


def start(client: Client, next_url: str = "") -> str:
    response = client.post(reverse("accounts:entra_start"), {"next": next_url} if next_url else {})
    assert response.status_code == 302, response.content
    return response["Location"]


def sign_in_with_entra(client: Client, tenant: FakeTenant, *, roles: list[str], next_url: str = "", **person: str):
    return client.get(tenant.authorize(start(client, next_url), roles=roles, **person))


def signed_in_user(client: Client) -> User | None:
    user_id = client.session.get("_auth_user_id")
    return User.objects.get(pk=user_id) if user_id else None


def groups_of(user: User) -> set[str]:
    return set(user.groups.values_list("name", flat=True))


def failures() -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action="auth.sign_in", outcome="failure"))


def assert_error_page(response, *, status: int, heading: str, says: str) -> None:
    assert response.status_code == status
    html = response.content.decode()
    assert html.count("<h1") == 1
    assert f'<h1 class="govuk-heading-l">{heading}</h1>' in html
    assert says in html
    assert f'action="{reverse("accounts:entra_start")}"' in html
    assert ">Try again</button>" in html
    assert f'href="{reverse("accounts:sign_in")}' in html
    assert "Traceback" not in html


# --- Starting -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_start_sends_the_browser_to_microsoft_with_pkce_nonce_and_state(client, tenant):
    location = start(client)

    assert location.startswith(f"{AUTHORIZE_URL}?")
    query = {key: values[0] for key, values in parse_qs(urlsplit(location).query).items()}
    flow = client.session[entra.FLOW_SESSION_KEY]["flow"]
    assert query["client_id"] == CLIENT_ID
    assert query["response_type"] == "code"
    assert query["redirect_uri"] == f"http://testserver{CALLBACK}"
    assert "openid" in query["scope"].split()
    assert query["code_challenge_method"] == "S256"
    assert query["code_challenge"] == _b64url(hashlib.sha256(flow["code_verifier"].encode()).digest())
    assert query["state"] == flow["state"]
    assert query["nonce"] == hashlib.sha256(flow["nonce"].encode("ascii")).hexdigest()
    assert query["prompt"] == "select_account"
    assert not tenant.token.called


@pytest.mark.django_db
def test_starting_needs_the_sign_in_pages_button(client, tenant):
    response = client.get(reverse("accounts:entra_start"), {"next": "/audit/"})
    assert response["Location"] == f"{reverse('accounts:sign_in')}?next=%2Faudit%2F"
    assert entra.FLOW_SESSION_KEY not in client.session

    csrf_client = Client(enforce_csrf_checks=True)
    assert csrf_client.post(reverse("accounts:entra_start")).status_code == 403


@pytest.mark.django_db
def test_sign_in_page_offers_microsoft_first_and_keeps_the_local_form(client, tenant):
    html = client.get(reverse("accounts:sign_in"), {"next": "/audit/"}).content.decode()
    assert html.count("<h1") == 1
    button = html.index(">Sign in with Microsoft</button>")
    local = html.index("Sign in with a portal account</h2>")
    assert button < local < html.index('name="password"')
    assert f'action="{reverse("accounts:entra_start")}"' in html
    assert '<input type="hidden" name="next" value="/audit/">' in html


@pytest.mark.django_db
def test_when_the_tenant_cannot_be_reached_the_start_shows_an_error_page(client, entra_enabled, requests_mock):
    requests_mock.get(DISCOVERY_URL, exc=requests.ConnectionError("connection refused"))
    response = client.post(reverse("accounts:entra_start"), {"next": "/audit/"})
    assert_error_page(
        response,
        status=503,
        heading="Sorry, signing in with Microsoft is not working",
        says="We could not reach Microsoft to sign you in",
    )
    assert '<input type="hidden" name="next" value="/audit/">' in response.content.decode()
    assert entra.FLOW_SESSION_KEY not in client.session


# --- Completing ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_first_sign_in_creates_the_user_with_their_roles_and_is_audited(client, tenant):
    response = sign_in_with_entra(client, tenant, roles=["Requester", "Approver", "Janitor"])

    assert response.status_code == 302
    assert response["Location"] == reverse("home")
    user = signed_in_user(client)
    assert user is not None
    assert (user.username, user.entra_object_id) == ("riya.patel@example.gov.uk", RIYA["oid"])
    assert (user.first_name, user.last_name, user.email) == ("Riya", "Patel", "riya.patel@example.gov.uk")
    assert not user.has_usable_password()
    assert groups_of(user) == {ROLE_GROUP_NAMES[Role.REQUESTER], ROLE_GROUP_NAMES[Role.APPROVER]}

    event = AuditEvent.objects.get(action="auth.sign_in")
    assert (event.actor_id, event.outcome, event.object_id) == (user.pk, "success", str(user.pk))
    assert event.after == {"method": "entra", "roles": ["requester", "approver"], "ignored_app_roles": ["Janitor"]}
    assert AuditEvent.objects.get(action="account.created").object_id == str(user.pk)
    assert AuditEvent.objects.get(action="account.roles_changed").after == {"roles": ["approver", "requester"]}

    home = client.get(reverse("home")).content.decode()
    assert "Welcome, Riya" in home
    assert nav_labels(home) == ["Home", "Requests", "Approvals", "Mailbox health"]


@pytest.mark.django_db
def test_no_token_is_kept_in_the_session_the_database_or_msal(client, tenant, entra_enabled):
    sign_in_with_entra(client, tenant, roles=["Requester"])
    assert signed_in_user(client) is not None
    assert len(tenant.issued) == 3

    session_text = json.dumps(dict(client.session.items()))
    audit_text = " ".join(f"{e.before_json} {e.after_json} {e.reason}" for e in AuditEvent.objects.all())
    for token in tenant.issued:
        assert token not in session_text
        assert token not in audit_text
    for name in ("access_token", "refresh_token", "id_token"):
        assert name not in session_text
    assert entra.FLOW_SESSION_KEY not in client.session
    assert entra._client(entra_enabled).app.get_accounts() == []


@pytest.mark.django_db
def test_roles_follow_entra_at_every_sign_in(client, tenant):
    sign_in_with_entra(client, tenant, roles=["Requester", "Auditor"])
    assert nav_labels(client.get(reverse("home")).content.decode()) == ["Home", "Requests", "Mailbox health", "Audit"]
    client.post(reverse("accounts:sign_out"))

    response = sign_in_with_entra(client, tenant, roles=["Requester"], name="Riya Patel-Singh")

    assert response["Location"] == reverse("home")
    user = signed_in_user(client)
    assert groups_of(user) == {ROLE_GROUP_NAMES[Role.REQUESTER]}
    assert (user.first_name, user.last_name) == ("Riya", "Patel-Singh")
    assert User.objects.filter(entra_object_id=RIYA["oid"]).count() == 1
    html = client.get(reverse("home")).content.decode()
    assert nav_labels(html) == ["Home", "Requests", "Mailbox health"]
    assert client.get(reverse("audit:events")).status_code == 403
    change = AuditEvent.objects.filter(action="account.roles_changed").first()  # newest first
    assert (change.before, change.after) == ({"roles": ["auditor", "requester"]}, {"roles": ["requester"]})
    assert change.actor_name == "System (Entra ID app roles)"
    assert AuditEvent.objects.get(action="account.updated").after == {"last_name": "Patel-Singh"}
    last = AuditEvent.objects.filter(action="auth.sign_in").first()
    assert last.after == {"method": "entra", "roles": ["requester"]}


@pytest.mark.django_db
def test_no_app_roles_means_no_portal_roles(client, tenant):
    sign_in_with_entra(client, tenant, roles=[], preferred_username="new.starter@example.gov.uk", oid="new-oid")
    user = signed_in_user(client)
    assert groups_of(user) == set()
    assert "You do not have a role in the portal yet" in client.get(reverse("home")).content.decode()


@pytest.mark.django_db
def test_the_page_asked_for_before_signing_in_is_where_the_person_lands(client, tenant):
    response = sign_in_with_entra(client, tenant, roles=["Auditor"], next_url="/audit/?page=2")
    assert response["Location"] == "/audit/?page=2"
    client.post(reverse("accounts:sign_out"))
    for outside in ("https://evil.example/", "//evil.example/", "/\\evil.example", "javascript:alert(1)"):
        response = sign_in_with_entra(client, tenant, roles=["Auditor"], next_url=outside)
        assert response["Location"] == reverse("home"), outside
        client.post(reverse("accounts:sign_out"))


@pytest.mark.django_db
def test_a_local_account_with_the_same_username_is_not_taken_over(client, tenant):
    local = UserFactory(username="riya.patel@example.gov.uk", first_name="Local", roles=[Role.PLATFORM_ADMIN])

    sign_in_with_entra(client, tenant, roles=["Requester"])

    user = signed_in_user(client)
    assert user.pk != local.pk
    assert user.username == "riya.patel@example.gov.uk-2"
    assert user.entra_object_id == RIYA["oid"]
    assert groups_of(user) == {ROLE_GROUP_NAMES[Role.REQUESTER]}
    local.refresh_from_db()
    assert (local.entra_object_id, local.first_name) == ("", "Local")
    assert local.check_password(PASSWORD)
    assert groups_of(local) == {ROLE_GROUP_NAMES[Role.PLATFORM_ADMIN]}


@pytest.mark.django_db
def test_the_msal_application_is_built_once_per_process(client, tenant):
    sign_in_with_entra(client, tenant, roles=["Requester"])
    client.post(reverse("accounts:sign_out"))
    sign_in_with_entra(client, tenant, roles=["Requester"])
    assert signed_in_user(client) is not None
    assert tenant.discovery.call_count == 1
    assert tenant.token.call_count == 2


# --- Refusals: a GOV.UK page, nobody signed in, the attempt audited ------------------------


@pytest.mark.django_db
def test_a_tampered_state_is_refused(client, tenant):
    callback = tenant.authorize(start(client), roles=["PlatformAdmin"])
    response = client.get(callback.replace("state=", "state=x"))

    assert_error_page(
        response, status=400, heading="Sorry, we could not sign you in", says="did not match the sign-in you started"
    )
    assert signed_in_user(client) is None
    assert not tenant.token.called
    assert not User.objects.filter(entra_object_id=RIYA["oid"]).exists()
    [event] = failures()
    assert (event.reason, event.after, event.actor_id) == ("state does not match", {"method": "entra"}, None)


@pytest.mark.django_db
def test_an_id_token_with_the_wrong_nonce_is_refused(client, tenant):
    tenant.claim_overrides["nonce"] = hashlib.sha256(b"someone-elses-nonce").hexdigest()
    response = sign_in_with_entra(client, tenant, roles=["PlatformAdmin"])

    assert_error_page(
        response, status=400, heading="Sorry, we could not sign you in", says="failed our security checks"
    )
    assert signed_in_user(client) is None
    assert not User.objects.filter(entra_object_id=RIYA["oid"]).exists()
    assert [event.reason for event in failures()] == ["ID token nonce does not match"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("claim", "value", "reason"),
    [
        ("aud", "some-other-app", "ID token audience is not the sign-in app"),
        ("iss", "https://login.example.test/another-tenant/v2.0", "ID token issuer is not the configured tenant"),
        ("exp", 1_000_000_000, "ID token has expired"),
        ("oid", None, "ID token has no object id (oid)"),
    ],
)
def test_an_id_token_that_is_not_for_us_is_refused(client, tenant, claim, value, reason):
    tenant.claim_overrides[claim] = value
    response = sign_in_with_entra(client, tenant, roles=["PlatformAdmin"])

    assert_error_page(
        response, status=400, heading="Sorry, we could not sign you in", says="failed our security checks"
    )
    assert signed_in_user(client) is None
    assert not User.objects.exists()
    assert [event.reason for event in failures()] == [reason]


@pytest.mark.django_db
def test_cancelling_at_microsoft_is_explained(client, tenant):
    location = start(client)
    state = parse_qs(urlsplit(location).query)["state"][0]
    response = client.get(
        CALLBACK,
        {"error": "access_denied", "error_description": "AADSTS65004: User declined to consent.", "state": state},
    )

    assert_error_page(
        response, status=400, heading="You did not finish signing in", says="Signing in was cancelled at Microsoft"
    )
    assert signed_in_user(client) is None
    assert not tenant.token.called
    [event] = failures()
    assert event.reason == "access_denied: AADSTS65004: User declined to consent."


@pytest.mark.django_db
def test_someone_the_tenant_has_not_assigned_is_told_to_ask_for_access(client, tenant):
    state = parse_qs(urlsplit(start(client)).query)["state"][0]
    response = client.get(
        CALLBACK,
        {
            "error": "access_denied",
            "error_description": "AADSTS50105: The signed in user is not assigned to a role for the application.",
            "state": state,
        },
    )
    assert_error_page(
        response, status=400, heading="Sorry, we could not sign you in", says="has not been given access to the portal"
    )
    assert signed_in_user(client) is None


@pytest.mark.django_db
def test_a_callback_without_a_sign_in_in_progress_is_refused(client, tenant):
    response = client.get(CALLBACK, {"code": "stolen-code", "state": "guessed"})

    assert_error_page(
        response, status=400, heading="Sorry, we could not sign you in", says="expired or had already been used"
    )
    assert signed_in_user(client) is None
    assert not tenant.token.called
    assert [event.reason for event in failures()] == ["no sign-in in progress in this session"]


@pytest.mark.django_db
def test_a_callback_cannot_be_used_twice(client, tenant):
    callback = tenant.authorize(start(client), roles=["Requester"])
    assert client.get(callback)["Location"] == reverse("home")
    client.post(reverse("accounts:sign_out"))

    response = client.get(callback)
    assert_error_page(
        response, status=400, heading="Sorry, we could not sign you in", says="expired or had already been used"
    )
    assert signed_in_user(client) is None
    assert tenant.token.call_count == 1


@pytest.mark.django_db
def test_a_sign_in_left_too_long_is_refused(client, tenant):
    callback = tenant.authorize(start(client), roles=["Requester"])
    session = client.session
    session[entra.FLOW_SESSION_KEY]["started_at"] -= entra.FLOW_MAX_AGE_SECONDS + 1
    session.save()

    response = client.get(callback)
    assert_error_page(
        response, status=400, heading="Sorry, we could not sign you in", says="expired or had already been used"
    )
    assert signed_in_user(client) is None
    assert [event.reason for event in failures()] == ["sign-in started too long ago"]


@pytest.mark.django_db
def test_a_code_the_token_endpoint_refuses_is_reported(client, tenant):
    callback = tenant.authorize(start(client), roles=["Requester"])
    tenant.codes.clear()  # the code expired at Microsoft

    response = client.get(callback)
    assert_error_page(
        response, status=400, heading="Sorry, we could not sign you in", says="Microsoft did not sign you in"
    )
    assert signed_in_user(client) is None
    [event] = failures()
    assert event.reason.startswith("invalid_grant: AADSTS70008")


@pytest.mark.django_db
def test_an_unreachable_token_endpoint_is_a_page_not_a_crash(client, tenant, requests_mock):
    callback = tenant.authorize(start(client), roles=["Requester"])
    requests_mock.post(TOKEN_URL, exc=requests.ConnectTimeout("timed out"))

    response = client.get(callback)
    assert_error_page(
        response,
        status=503,
        heading="Sorry, signing in with Microsoft is not working",
        says="We could not reach Microsoft to sign you in",
    )
    assert signed_in_user(client) is None
    assert [event.reason for event in failures()] == ["token endpoint unreachable (ConnectTimeout)"]


@pytest.mark.django_db
def test_a_switched_off_account_cannot_sign_in_with_entra(client, tenant):
    UserFactory(username="riya.patel@example.gov.uk", entra_object_id=RIYA["oid"], is_active=False)

    response = sign_in_with_entra(client, tenant, roles=["PlatformAdmin"])
    assert_error_page(
        response,
        status=400,
        heading="Sorry, we could not sign you in",
        says="Your portal account has been switched off",
    )
    assert signed_in_user(client) is None
    assert not Group.objects.get(name=ROLE_GROUP_NAMES[Role.PLATFORM_ADMIN]).user_set.exists()
    assert [event.reason for event in failures()] == ["account is switched off"]


# --- Signing out --------------------------------------------------------------------------


@pytest.mark.django_db
def test_signing_out_after_entra_offers_to_end_the_microsoft_session(client, tenant):
    sign_in_with_entra(client, tenant, roles=["Requester"])
    user = signed_in_user(client)

    response = client.post(reverse("accounts:sign_out"), follow=True)

    html = response.content.decode()
    assert "You have signed out" in html
    assert signed_in_user(client) is None
    assert AuditEvent.objects.filter(action="auth.sign_out", actor_id=user.pk).exists()
    back = urlencode({"post_logout_redirect_uri": "http://testserver/accounts/signed-out/"})
    assert f'href="{END_SESSION_URL}?{back}"' in html.replace("&amp;", "&")
    # Shown once: reloading the page, or a local account's sign-out, does not offer it.
    assert END_SESSION_URL not in client.get(reverse("accounts:signed_out")).content.decode()


@pytest.mark.django_db
def test_signing_out_of_a_local_account_does_not_mention_microsoft(client, tenant, requester):
    client.post(reverse("accounts:sign_in"), {"username": "riya", "password": PASSWORD})
    html = client.post(reverse("accounts:sign_out"), follow=True).content.decode()
    assert "You have signed out" in html
    assert "Microsoft" not in html


# --- Switched off -------------------------------------------------------------------------


@pytest.mark.django_db
def test_when_switched_off_there_is_no_button_and_no_entra_pages(client, settings, requests_mock):
    settings.ENTRA_SIGNIN = EntraSignInConfig(enabled=False)
    assert client.get(reverse("accounts:entra_start")).status_code == 404
    assert client.post(reverse("accounts:entra_start")).status_code == 404
    assert client.get(CALLBACK, {"code": "x", "state": "y"}).status_code == 404
    html = client.get(reverse("accounts:sign_in")).content.decode()
    assert "Sign in with Microsoft" not in html
    assert "Sign in with a portal account" not in html
    assert "Sign in with the account your platform team gave you." in html
    assert not requests_mock.called
    assert not AuditEvent.objects.exists()


# --- TLS trust towards the identity provider -----------------------------------------------


def _certificate_authority_and_server(tmp_path):
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test tenant CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_path = tmp_path / "ca.pem"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    chain_path = tmp_path / "server.pem"
    chain_path.write_bytes(
        server_cert.public_bytes(serialization.Encoding.PEM)
        + server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return ca_path, chain_path


def test_the_configured_ca_bundle_is_trusted_whatever_requests_ca_bundle_says(tmp_path, monkeypatch):
    ca_path, chain_path = _certificate_authority_and_server(tmp_path)

    class Discovery(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"issuer": "ok"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Discovery)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(chain_path)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"https://127.0.0.1:{server.server_address[1]}/tenant/v2.0/.well-known/openid-configuration"
    try:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", requests.certs.where())  # public CAs only
        session = session_for_ca_bundle(str(ca_path))
        assert session.get(url, timeout=5).json() == {"issuer": "ok"}
        # The public CAs are still trusted alongside the tenant's.
        with open(session.verify) as bundle:
            assert bundle.read().count("BEGIN CERTIFICATE") > 50
        with pytest.raises(requests.exceptions.SSLError):
            requests.Session().get(url, timeout=5)
        with pytest.raises(requests.exceptions.SSLError):
            session_for_ca_bundle("").get(url, timeout=5)
    finally:
        server.shutdown()
        server.server_close()
