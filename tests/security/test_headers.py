"""Security headers and cookies on every page, with the production settings' own values.

The production settings module is imported in a separate process (as an operator's server would
load it) and its security settings are applied here, so every page of the portal is checked
against what production sends: a Content-Security-Policy that allows no inline script or style
and no framing, HSTS, ``nosniff``, the referrer and opener policies, ``X-Frame-Options``, and
Secure, HttpOnly, SameSite cookies. A real gunicorn shows what the ``Server`` header says.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import django
import pytest
import requests
from django.conf import settings as django_settings
from django.test import Client
from django.urls import reverse
from gunicorn import __version__ as gunicorn_version

from portal.accounts.roles import Role
from portal.security import content_security_policy
from tests.factories import PASSWORD, UserFactory
from tests.security.access_fixtures import OWN, THEIRS, url_names, world_for_module
from tests.servers import clean_env, gunicorn

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]

PRODUCTION_ENV = {
    "DJANGO_SETTINGS_MODULE": "portal.settings.production",
    "SECRET_KEY": secrets.token_urlsafe(64),
    "ALLOWED_HOSTS": "portal.example.gov.uk",
    "DATABASE_URL": "postgres://portal@db.example.gov.uk:5432/portal",
    "REDIS_URL": "redis://redis.example.gov.uk:6379/0",
}
SECURITY_SETTINGS = (
    "DEBUG",
    "SECURE_PROXY_SSL_HEADER",
    "SECURE_SSL_REDIRECT",
    "SECURE_HSTS_SECONDS",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS",
    "SECURE_HSTS_PRELOAD",
    "SECURE_CONTENT_TYPE_NOSNIFF",
    "SECURE_REFERRER_POLICY",
    "SECURE_CROSS_ORIGIN_OPENER_POLICY",
    "X_FRAME_OPTIONS",
    "CONTENT_SECURITY_POLICY",
    "SESSION_COOKIE_SECURE",
    "SESSION_COOKIE_HTTPONLY",
    "SESSION_COOKIE_SAMESITE",
    "CSRF_COOKIE_SECURE",
    "CSRF_COOKIE_HTTPONLY",
    "CSRF_COOKIE_SAMESITE",
    "MIDDLEWARE",
)
# Through the TLS proxy, as production sees every request.
HTTPS = {"secure": True, "HTTP_X_FORWARDED_PROTO": "https"}
EXPECTED_HEADERS = {
    "Strict-Transport-Security": "max-age=31536000; includeSubDomains; preload",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}
# Pages that serve a download keep their own, stricter policy (no scripts, a sandbox).
DOWNLOAD_POLICY = "default-src 'none'; sandbox; frame-ancestors 'none'"


def _production_settings() -> dict:
    script = (
        "import importlib, json, sys\n"
        "module = importlib.import_module('portal.settings.production')\n"
        "json.dump({name: getattr(module, name) for name in sys.argv[1:]}, sys.stdout)\n"
    )
    env = {key: value for key, value in os.environ.items() if key not in PRODUCTION_ENV and key != "DEBUG"}
    result = subprocess.run(
        [sys.executable, "-c", script, *SECURITY_SETTINGS],
        cwd=ROOT,
        env={**env, **PRODUCTION_ENV},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    values = json.loads(result.stdout)
    values["SECURE_PROXY_SSL_HEADER"] = tuple(values["SECURE_PROXY_SSL_HEADER"])
    return values


@pytest.fixture(scope="module")
def production():
    return _production_settings()


@pytest.fixture
def as_in_production(settings, production):
    for name, value in production.items():
        setattr(settings, name, value)
    return settings


@pytest.fixture(scope="module")
def world(django_db_setup, django_db_blocker):
    with world_for_module(django_db_blocker) as built:
        yield built


@pytest.fixture(scope="module")
def clients(world):
    """Someone holding every role, and the world's requester and approver for the pages of their own objects."""
    everything = UserFactory(username="headers-every-role", roles=list(Role))
    made = {}
    for name, user in (
        ("every_role", everything),
        ("requester", world.people["requester"]),
        ("approver", world.people["approver"]),
    ):
        made[name] = Client()
        made[name].force_login(user)
    made["anonymous"] = Client()
    return made


class _InlineCode(HTMLParser):
    """Collects what a strict policy would block: inline script bodies, handler and style attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name.startswith("on") or name == "style":
                self.found.append(f"<{tag} {name}={value!r}>")
            if name in ("href", "src", "action") and (value or "").strip().lower().startswith("javascript:"):
                self.found.append(f"<{tag} {name}={value!r}>")
        if tag == "script":
            self._in_script = True
            if not dict(attrs).get("src"):
                self.found.append("<script> without src")
        if tag == "style":
            self.found.append("<style> element")

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script and data.strip():
            self.found.append(f"inline script: {data.strip()[:60]!r}")


def inline_code(html: str) -> list[str]:
    parser = _InlineCode()
    parser.feed(html)
    return parser.found


def header_problems(response) -> list[str]:
    problems = []
    policy = response.get("Content-Security-Policy", "")
    if response.get("Content-Disposition", "").startswith("attachment") and policy == DOWNLOAD_POLICY:
        pass
    elif policy != content_security_policy():
        problems.append(f"Content-Security-Policy is {policy!r}")
    for header, expected in EXPECTED_HEADERS.items():
        if response.get(header) != expected:
            problems.append(f"{header} is {response.get(header)!r}, expected {expected!r}")
    if "Server" in response or "X-Powered-By" in response:
        problems.append("the application names its server")
    return problems


def page_problems(response) -> list[str]:
    problems = header_problems(response)
    content_type = response.get("Content-Type", "")
    if content_type.startswith("text/html"):
        body = b"".join(response.streaming_content) if response.streaming else response.content
        problems += inline_code(body.decode())
    return problems


# --- the policy itself ---------------------------------------------------------------------------


def test_the_policy_allows_only_the_portals_own_files_and_no_framing():
    directives = dict(part.split(" ", 1) for part in content_security_policy().split("; "))
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == "'self'"
    assert directives["style-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert directives["object-src"] == "'none'"
    assert directives["base-uri"] == "'self'"
    assert directives["form-action"] == "'self'"
    assert "unsafe" not in content_security_policy()


def test_with_microsoft_sign_in_on_forms_may_go_on_to_the_authority(settings):
    settings.ENTRA_SIGNIN = type(settings.ENTRA_SIGNIN)(
        enabled=True, tenant_id="t", authority_host="https://login.microsoftonline.com/", client_id="c"
    )
    directives = dict(part.split(" ", 1) for part in content_security_policy().split("; "))
    assert directives["form-action"] == "'self' https://login.microsoftonline.com"
    assert directives["script-src"] == "'self'"


# --- every page -------------------------------------------------------------------------------------


def test_every_url_pattern_can_be_built(world):
    missing = sorted(set(url_names()) - set(THEIRS))
    assert not missing, "URL patterns with no way to build them in tests/security/access_fixtures.py: " + ", ".join(
        missing
    )


@pytest.mark.parametrize("name", sorted(THEIRS))
def test_every_page_sends_the_security_headers_and_no_inline_code(name, world, clients, as_in_production):
    url = reverse(name, kwargs=THEIRS[name](world))
    response = clients["every_role"].get(url, **HTTPS)
    problems = page_problems(response)
    assert response.status_code < 500, f"{url}: {response.status_code}"
    if response.status_code == 302:
        problems += page_problems(clients["every_role"].get(response["Location"], **HTTPS))
    assert not problems, f"GET {url} ({response.status_code}):\n" + "\n".join(problems)


@pytest.mark.parametrize("name", sorted(OWN))
def test_requesters_and_approvers_own_pages_send_them_too(name, world, clients, as_in_production):
    url = reverse(name, kwargs=OWN[name](world))
    for persona in ("requester", "approver"):
        response = clients[persona].get(url, **HTTPS)
        assert response.status_code < 500, f"{url} as {persona}: {response.status_code}"
        problems = page_problems(response)
        assert not problems, f"GET {url} as {persona} ({response.status_code}):\n" + "\n".join(problems)


def test_most_pages_really_render_for_someone_with_every_role(world, clients, as_in_production):
    answers = {
        name: clients["every_role"].get(reverse(name, kwargs=THEIRS[name](world)), **HTTPS).status_code
        for name in THEIRS
    }
    rendered = [name for name, status in answers.items() if status == 200]
    # The walk above would prove little if it met only refusals.
    assert len(rendered) >= 0.6 * len(THEIRS), {name: status for name, status in answers.items() if status != 200}


def test_refusals_redirects_and_errors_send_them_too(world, clients, as_in_production):
    outsider = Client()
    outsider.force_login(world.people["outsider"])
    answers = {
        "not found": clients["every_role"].get("/no-such-page/", **HTTPS),
        "forbidden": outsider.get(reverse("audit:events"), **HTTPS),
        "to sign in": clients["anonymous"].get(reverse("audit:events"), **HTTPS),
        "method not allowed": clients["every_role"].get(reverse("audit:verify"), **HTTPS),
        "sign-in page": clients["anonymous"].get(reverse("accounts:sign_in"), **HTTPS),
        "csrf failure": Client(enforce_csrf_checks=True).post(reverse("accounts:sign_in"), **HTTPS),
    }
    assert [response.status_code for response in answers.values()] == [404, 403, 302, 405, 200, 403]
    for what, response in answers.items():
        problems = page_problems(response)
        assert not problems, f"{what}:\n" + "\n".join(problems)
        assert b"Django" not in response.content, what
        assert django.get_version().encode() not in response.content, what


def test_responses_made_before_any_view_carry_the_policy(client, as_in_production):
    plain_http = client.get(reverse("home"))  # the proxy did not say HTTPS: off to https://
    assert plain_http.status_code == 301
    assert plain_http["Location"].startswith("https://")
    assert plain_http["Content-Security-Policy"] == content_security_policy()
    probe = client.get("/healthz")
    assert probe.status_code == 200
    assert probe["Content-Security-Policy"] == content_security_policy()


# --- cookies in production -----------------------------------------------------------------------------


def test_production_cookies_are_secure_httponly_and_same_site(as_in_production):
    UserFactory(username="cookie-person", roles=[Role.REQUESTER])
    browser = Client(enforce_csrf_checks=True)
    page = browser.get(reverse("accounts:sign_in"), **HTTPS)
    csrf = page.cookies["csrftoken"]
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.content.decode()).group(1)
    signed_in = browser.post(
        reverse("accounts:sign_in"),
        {"csrfmiddlewaretoken": token, "username": "cookie-person", "password": PASSWORD},
        HTTP_REFERER="https://testserver/accounts/sign-in/",
        **HTTPS,
    )
    assert signed_in.status_code == 302
    session = signed_in.cookies["sessionid"]
    for cookie in (csrf, session):
        assert cookie["secure"] is True, cookie.key
        assert cookie["httponly"] is True, cookie.key
        assert cookie["samesite"] == "Lax", cookie.key
        assert cookie["path"] == "/", cookie.key
        assert not cookie["domain"], cookie.key
    assert header_problems(signed_in) == []


def test_production_settings_are_what_this_suite_checks_against(production):
    assert production["DEBUG"] is False
    assert production["SECURE_HSTS_SECONDS"] >= 31_536_000
    assert production["SECURE_SSL_REDIRECT"] is True
    assert production["MIDDLEWARE"][0] == "portal.security.ContentSecurityPolicyMiddleware"
    assert "django.middleware.security.SecurityMiddleware" in production["MIDDLEWARE"]
    assert "django.middleware.clickjacking.XFrameOptionsMiddleware" in production["MIDDLEWARE"]


# --- templates, without a browser -------------------------------------------------------------------


def _served_templates() -> list[Path]:
    folders = [Path(folder) for engine in django_settings.TEMPLATES for folder in engine["DIRS"]]
    folders += [*ROOT.glob("*/templates"), *ROOT.glob("portal/*/templates")]
    found = []
    for folder in folders:
        for path in folder.rglob("*.html"):
            # Email bodies are never served as pages.
            if "email" not in path.relative_to(folder).parts[:-1]:
                found.append(path)
    return sorted(set(found))


INLINE_IN_TEMPLATE = re.compile(
    r"<script(?![^>]*\bsrc=)[^>]*>|\son[a-z]+\s*=|\sstyle\s*=|<style[\s>]|javascript:", re.IGNORECASE
)


def test_no_template_has_inline_script_handlers_or_styles():
    templates = _served_templates()
    assert len(templates) > 50
    offenders = [
        f"{path.relative_to(ROOT)}:{source[: match.start()].count(chr(10)) + 1}: {match.group(0).strip()}"
        for path in templates
        for source in [path.read_text()]
        for match in INLINE_IN_TEMPLATE.finditer(source)
    ]
    assert not offenders, "\n".join(offenders)


def test_the_template_check_would_catch_each_kind_of_inline_code():
    for bad in (
        "<script>alert(1)</script>",
        '<script type="module">go()</script>',
        '<button onclick="go()">',
        '<rect style="fill: red">',
        "<style>.x{}</style>",
        '<a href="javascript:go()">',
    ):
        assert INLINE_IN_TEMPLATE.search(bad), bad
        assert inline_code(bad), bad
    assert not INLINE_IN_TEMPLATE.search('<script type="module" src="/static/portal/js/init.js"></script>')
    assert not inline_code('<script type="module" src="/static/portal/js/init.js"></script>')


# --- the server -------------------------------------------------------------------------------------------


def _raw_response(base: str, request: bytes) -> str:
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as connection:
        connection.sendall(request)
        chunks = []
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode("latin-1")


@pytest.mark.slow
def test_gunicorn_names_no_version(tmp_path):
    env = clean_env(
        DJANGO_SETTINGS_MODULE="portal.settings.local",
        PORTAL_VAR_DIR=str(tmp_path),
        DATABASE_URL=os.environ["DATABASE_URL"],
        REDIS_URL=os.environ["REDIS_URL"],
    )
    with gunicorn(env) as base:
        answers = [
            requests.get(f"{base}/healthz", timeout=60),
            requests.get(f"{base}/accounts/sign-in/", timeout=60),
            requests.get(f"{base}/no-such-page/", timeout=60),
        ]
        # A request gunicorn itself refuses, before the portal sees it.
        malformed = _raw_response(base, b"GARBAGE\r\n\r\n")
    assert [answer.status_code for answer in answers] == [200, 200, 404]
    for answer in answers:
        assert answer.headers.get("Server") == "gunicorn", answer.headers.get("Server")
        assert "X-Powered-By" not in answer.headers
        assert answer.headers["Content-Security-Policy"] == content_security_policy()
        for version in (gunicorn_version, django.get_version()):
            assert version not in answer.text, answer.url
    status_line, _, rest = malformed.partition("\r\n")
    assert status_line.startswith("HTTP/1.1 400"), status_line
    assert not re.search(r"^Server:.*\d", rest, re.MULTILINE | re.IGNORECASE), rest
    assert "gunicorn/" not in rest.lower()
