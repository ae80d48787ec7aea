"""Entra ID as the portal meets it: discovery, keys, tokens, and a sign-in page.

Application registrations (client ids, secrets, one certificate) live in
``tenant.json`` in the state directory and survive reseeding. Demo identities
for interactive sign-in live in the store's ``entra_identities`` table; the
roles ticked on the sign-in page are remembered per identity.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
from cryptography.hazmat.primitives import serialization

from .core import AppPrincipal, SimRequest, SimResponse, Simulator
from .tls import KeyMaterial, certificate_public_key, certificate_sha256, certificate_thumbprint

APP_ROLES = ("Requester", "Approver", "PlatformAdmin", "MigrationLead", "Auditor")
ACCESS_TOKEN_SECONDS = 3599
CODE_SECONDS = 600
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


class TokenError(Exception):
    """A bearer token the simulator did not issue, or issued for another resource, or expired."""


@dataclass
class AppRegistrationRecord:
    name: str
    client_id: str
    secret: str
    oid: str  # the service principal's object id, which Dataverse limits are counted against
    cert_thumbprint: str = ""


@dataclass
class Tenant:
    tenant_id: str
    apps: list[AppRegistrationRecord]
    signin_client_id: str
    signin_secret: str

    @classmethod
    def load_or_create(cls, path: Path, material: KeyMaterial, *, app_count: int = 2) -> Tenant:
        if path.exists():
            data = json.loads(path.read_text())
            tenant = cls(
                tenant_id=data["tenant_id"],
                apps=[AppRegistrationRecord(**app) for app in data["apps"]],
                signin_client_id=data["signin_client_id"],
                signin_secret=data["signin_secret"],
            )
        else:
            tenant = cls(
                tenant_id=str(uuid.uuid4()), apps=[], signin_client_id=str(uuid.uuid4()), signin_secret=_secret()
            )
        while len(tenant.apps) < app_count:
            number = len(tenant.apps) + 1
            tenant.apps.append(
                AppRegistrationRecord(
                    name=f"portal-app-{number}",
                    client_id=str(uuid.uuid4()),
                    secret=_secret(),
                    oid=str(uuid.uuid4()),
                    cert_thumbprint=certificate_thumbprint(material.app_cert_pem) if number == 1 else "",
                )
            )
        path.write_text(
            json.dumps(
                {
                    "tenant_id": tenant.tenant_id,
                    "apps": [app.__dict__ for app in tenant.apps],
                    "signin_client_id": tenant.signin_client_id,
                    "signin_secret": tenant.signin_secret,
                },
                indent=2,
            )
        )
        path.chmod(0o600)
        return tenant

    def app(self, client_id: str) -> AppRegistrationRecord | None:
        return next((app for app in self.apps if app.client_id == client_id), None)


def _secret() -> str:
    # Entra secrets are 40 characters with a "~" in them; the shape does not matter to clients.
    return secrets.token_urlsafe(30)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass
class _PendingCode:
    client_id: str
    redirect_uri: str
    code_challenge: str
    code_challenge_method: str
    nonce: str
    scope: str
    identity_oid: str
    expires_at: float


@dataclass
class Entra:
    """Issues and checks tokens; serves the ``/{tenant}/…`` endpoints."""

    sim: Simulator
    tenant: Tenant
    material: KeyMaterial
    _codes: dict[str, _PendingCode] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._signing_key = serialization.load_pem_private_key(self.material.signing_key_pem.read_bytes(), None)
        public_numbers = self._signing_key.public_key().public_numbers()
        self._kid = hashlib.sha256(str(public_numbers.n).encode()).hexdigest()[:32]
        self._jwk = {
            "kty": "RSA",
            "use": "sig",
            "kid": self._kid,
            "alg": "RS256",
            "n": _b64url(public_numbers.n.to_bytes((public_numbers.n.bit_length() + 7) // 8, "big")),
            "e": _b64url(public_numbers.e.to_bytes(3, "big")),
        }

    # -- addresses -------------------------------------------------------------------------------
    @property
    def tenant_id(self) -> str:
        return self.tenant.tenant_id

    def _endpoint(self, path: str) -> str:
        return f"{self.sim.base_url}/{self.tenant_id}/{path}"

    @property
    def issuer(self) -> str:
        return self._endpoint("v2.0")

    @property
    def token_endpoint(self) -> str:
        return self._endpoint("oauth2/v2.0/token")

    def resources(self) -> dict[str, str]:
        """Resource URL → surface name. A token is issued for one resource and accepted only there."""
        return {self.sim.surface_url(surface): surface for surface in ("dataverse", "graph", "exchange")}

    # -- tokens ------------------------------------------------------------------------------------
    def _sign(self, claims: dict[str, Any]) -> str:
        return jwt.encode(claims, self._signing_key, algorithm="RS256", headers={"kid": self._kid, "typ": "JWT"})

    def issue_app_token(self, app: AppRegistrationRecord, resource: str) -> str:
        now = int(time.time())
        return self._sign(
            {
                "aud": resource,
                "iss": self.issuer,
                "tid": self.tenant_id,
                "appid": app.client_id,
                "azp": app.client_id,
                "oid": app.oid,
                "sub": app.oid,
                "app_displayname": app.name,
                "roles": ["user_impersonation"] if resource.endswith("/dataverse") else ["Exchange.ManageAsApp"],
                "iat": now,
                "nbf": now,
                "exp": now + ACCESS_TOKEN_SECONDS,
                "ver": "2.0",
                "uti": secrets.token_urlsafe(16),
            }
        )

    def verify_access_token(self, token: str, *, audience: str) -> AppPrincipal:
        try:
            claims = jwt.decode(
                token,
                self._signing_key.public_key(),
                algorithms=["RS256"],
                audience=audience,
                issuer=self.issuer,
                options={"require": ["exp", "aud", "iss"]},
            )
        except jwt.PyJWTError as error:
            raise TokenError(str(error)) from None
        app = self.tenant.app(claims.get("appid", ""))
        name = app.name if app else claims.get("name", "")
        return AppPrincipal(
            client_id=claims.get("appid", claims.get("azp", "")),
            oid=claims.get("oid", ""),
            name=name,
            roles=tuple(claims.get("roles", [])),
            audience=audience,
        )

    # -- HTTP -------------------------------------------------------------------------------------
    def handle(self, request: SimRequest) -> SimResponse:
        parts = [part for part in request.path.split("/") if part]
        if not parts or parts[0] not in (self.tenant_id, "organizations", "common"):
            return _entra_error(400, "invalid_tenant", 90002, f"Tenant '{parts[0] if parts else ''}' not found.")
        rest = "/".join(parts[1:])
        if rest == "v2.0/.well-known/openid-configuration" and request.method == "GET":
            return SimResponse.json(200, self.discovery_document())
        if rest == "discovery/v2.0/keys" and request.method == "GET":
            return SimResponse.json(200, {"keys": [self._jwk]})
        if rest == "oauth2/v2.0/token" and request.method == "POST":
            return self._token(request)
        if rest == "oauth2/v2.0/authorize":
            return self._authorize(request)
        if rest == "oauth2/v2.0/logout" and request.method == "GET":
            return self._logout(request)
        return _entra_error(404, "not_found", 900561, "The endpoint only accepts the documented requests.")

    def discovery_document(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "authorization_endpoint": self._endpoint("oauth2/v2.0/authorize"),
            "token_endpoint": self.token_endpoint,
            "end_session_endpoint": self._endpoint("oauth2/v2.0/logout"),
            "jwks_uri": self._endpoint("discovery/v2.0/keys"),
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "claims_supported": [
                "sub",
                "iss",
                "aud",
                "exp",
                "iat",
                "nonce",
                "name",
                "preferred_username",
                "oid",
                "tid",
                "roles",
                "email",
            ],
            "tenant_region_scope": "EU",
            "cloud_instance_name": "microsoftonline.com",
            "http_logout_supported": True,
            "frontchannel_logout_supported": True,
            "request_uri_parameter_supported": False,
        }

    def _token(self, request: SimRequest) -> SimResponse:
        form = {key: values[-1] for key, values in parse_qs(request.body.decode("utf-8")).items()}
        grant_type = form.get("grant_type", "")
        if grant_type == "client_credentials":
            return self._client_credentials(form)
        if grant_type == "authorization_code":
            return self._authorization_code(form)
        return _entra_error(
            400, "unsupported_grant_type", 70003, f"The app requested an unsupported grant type '{grant_type}'."
        )

    def _client_credentials(self, form: dict[str, str]) -> SimResponse:
        client_id = form.get("client_id", "")
        app = self.tenant.app(client_id)
        if app is None:
            return _entra_error(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{client_id}' was not found in the directory '{self.tenant_id}'.",
            )
        if "client_assertion" in form:
            problem = self._check_assertion(app, form)
            if problem:
                return _entra_error(
                    401, "invalid_client", 700027, f"Client assertion failed signature validation. {problem}"
                )
        elif not secrets.compare_digest(form.get("client_secret", ""), app.secret):
            return _entra_error(
                401,
                "invalid_client",
                7000215,
                "Invalid client secret provided. Ensure the secret being sent in the request is the client secret "
                f"value, not the client secret ID, for a secret added to app '{client_id}'.",
            )
        scope = form.get("scope", "").strip()
        resource = scope[: -len("/.default")] if scope.endswith("/.default") else ""
        if resource not in self.resources():
            return _entra_error(
                400, "invalid_scope", 70011, f"The provided value for the input parameter 'scope' is not valid: {scope}"
            )
        return SimResponse.json(
            200,
            {
                "token_type": "Bearer",
                "expires_in": ACCESS_TOKEN_SECONDS,
                "ext_expires_in": ACCESS_TOKEN_SECONDS,
                "access_token": self.issue_app_token(app, resource),
            },
        )

    def _check_assertion(self, app: AppRegistrationRecord, form: dict[str, str]) -> str:
        if form.get("client_assertion_type") != CLIENT_ASSERTION_TYPE:
            return "Unsupported client_assertion_type."
        if not app.cert_thumbprint:
            return "No certificate is registered for this application."
        assertion = form["client_assertion"]
        try:
            header = jwt.get_unverified_header(assertion)
            claims = jwt.decode(
                assertion,
                certificate_public_key(self.material.app_cert_pem),
                algorithms=["RS256", "PS256"],
                audience=[self.token_endpoint, self.issuer, f"{self.sim.base_url}/{self.tenant_id}/oauth2/token"],
                options={"require": ["exp", "aud", "iss", "sub"]},
            )
        except jwt.PyJWTError as error:
            return f"Reason: {error}."
        sha1 = header.get("x5t", "").rstrip("=")
        sha256 = header.get("x5t#S256", "").rstrip("=")
        registered_sha256 = _b64url(certificate_sha256(self.material.app_cert_pem))
        if not sha1 and not sha256:
            return "The assertion names no certificate (x5t or x5t#S256)."
        if (sha1 and sha1 != _b64url(bytes.fromhex(app.cert_thumbprint))) or (sha256 and sha256 != registered_sha256):
            return "The key was not found (the thumbprint does not match a registered certificate)."
        if claims.get("iss") != app.client_id or claims.get("sub") != app.client_id:
            return "iss and sub must be the client id."
        return ""

    # -- interactive sign-in ---------------------------------------------------------------------------
    def _identities(self) -> list[dict[str, Any]]:
        with self.sim.store.lock:
            rows = list(self.sim.store.table("entra_identities").values())
        return sorted(rows, key=lambda row: row["name"])

    def _authorize(self, request: SimRequest) -> SimResponse:
        params = dict(request.query)
        if request.method == "POST":
            params.update({key: values[-1] for key, values in parse_qs(request.body.decode("utf-8")).items()})
        problem = self._check_authorize_params(params)
        if problem:
            return SimResponse(
                400,
                _page("Sign-in request refused", f"<p>{html.escape(problem)}</p>"),
                {"Content-Type": "text/html; charset=utf-8"},
            )
        identity_oid = params.get("identity", "")
        identities = {row["oid"]: row for row in self._identities()}
        if request.method == "POST" and params.get("step") == "roles" and identity_oid in identities:
            roles = [role for role in APP_ROLES if params.get(f"role_{role}") == "on"]
            with self.sim.store.lock:
                self.sim.store.table("entra_identities")[identity_oid]["roles"] = roles
                self.sim.store.touch()
            return self._issue_code(params, identity_oid)
        if identity_oid in identities:
            return self._roles_page(params, identities[identity_oid])
        return self._pick_page(params, list(identities.values()))

    def _check_authorize_params(self, params: dict[str, str]) -> str:
        if params.get("client_id") != self.tenant.signin_client_id:
            return f"AADSTS700016: Application with identifier '{params.get('client_id', '')}' was not found."
        if params.get("response_type") != "code":
            return "AADSTS900144: The request body must contain the following parameter: 'response_type=code'."
        redirect = urlsplit(params.get("redirect_uri", ""))
        if redirect.scheme not in ("http", "https") or redirect.hostname not in ("127.0.0.1", "localhost", "::1"):
            return "AADSTS50011: The redirect URI specified in the request does not match the redirect URIs configured."
        if params.get("code_challenge_method", "S256") != "S256" or not params.get("code_challenge"):
            return "AADSTS9002325: Proof Key for Code Exchange is required for this sign-in."
        return ""

    def _carry(self, params: dict[str, str]) -> str:
        keep = (
            "client_id",
            "response_type",
            "redirect_uri",
            "scope",
            "state",
            "nonce",
            "code_challenge",
            "code_challenge_method",
            "response_mode",
            "prompt",
            "login_hint",
        )
        return "".join(
            f'<input type="hidden" name="{key}" value="{html.escape(params[key])}">' for key in keep if key in params
        )

    def _pick_page(self, params: dict[str, str], identities: list[dict[str, Any]]) -> SimResponse:
        items = "".join(
            f'<li><button type="submit" name="identity" value="{html.escape(row["oid"])}">'
            f'{html.escape(row["name"])} <span class="upn">{html.escape(row["username"])}</span>'
            f'<span class="roles">{html.escape(", ".join(row.get("roles", [])) or "no roles")}</span></button></li>'
            for row in identities
        )
        body = (
            "<p>This is the tenant simulator's sign-in page. Pick the identity to sign in as.</p>"
            f'<form method="post">{self._carry(params)}<input type="hidden" name="step" value="pick">'
            f'<ul class="accounts">{items}</ul></form>'
        )
        return SimResponse(200, _page("Pick an account", body), {"Content-Type": "text/html; charset=utf-8"})

    def _roles_page(self, params: dict[str, str], identity: dict[str, Any]) -> SimResponse:
        boxes = "".join(
            f'<div><input type="checkbox" id="role_{role}" name="role_{role}"'
            f"{' checked' if role in identity.get('roles', []) else ''}>"
            f'<label for="role_{role}">{role}</label></div>'
            for role in APP_ROLES
        )
        body = (
            f"<p>Signing in as <strong>{html.escape(identity['name'])}</strong> "
            f"({html.escape(identity['username'])}). These app roles go into the token's <code>roles</code> claim.</p>"
            f'<form method="post">{self._carry(params)}<input type="hidden" name="step" value="roles">'
            f'<input type="hidden" name="identity" value="{html.escape(identity["oid"])}">'
            f"<fieldset><legend>App roles</legend>{boxes}</fieldset>"
            '<button type="submit" id="continue">Continue</button></form>'
        )
        return SimResponse(200, _page("Choose app roles", body), {"Content-Type": "text/html; charset=utf-8"})

    def _issue_code(self, params: dict[str, str], identity_oid: str) -> SimResponse:
        code = secrets.token_urlsafe(32)
        with self._lock:
            now = time.time()
            for stale in [key for key, pending in self._codes.items() if pending.expires_at < now]:
                del self._codes[stale]
            self._codes[code] = _PendingCode(
                client_id=params["client_id"],
                redirect_uri=params["redirect_uri"],
                code_challenge=params["code_challenge"],
                code_challenge_method=params.get("code_challenge_method", "S256"),
                nonce=params.get("nonce", ""),
                scope=params.get("scope", ""),
                identity_oid=identity_oid,
                expires_at=now + CODE_SECONDS,
            )
        query = {"code": code, "session_state": str(uuid.uuid4())}
        if "state" in params:
            query["state"] = params["state"]
        separator = "&" if "?" in params["redirect_uri"] else "?"
        return SimResponse(302, b"", {"Location": f"{params['redirect_uri']}{separator}{urlencode(query)}"})

    def _authorization_code(self, form: dict[str, str]) -> SimResponse:
        if form.get("client_id") != self.tenant.signin_client_id or not secrets.compare_digest(
            form.get("client_secret", ""), self.tenant.signin_secret
        ):
            return _entra_error(401, "invalid_client", 7000215, "Invalid client secret provided.")
        with self._lock:
            pending = self._codes.pop(form.get("code", ""), None)
        if pending is None or pending.expires_at < time.time():
            return _entra_error(
                400, "invalid_grant", 70008, "The provided authorization code or refresh token has expired."
            )
        if form.get("redirect_uri") != pending.redirect_uri:
            return _entra_error(
                400,
                "invalid_grant",
                50148,
                "The redirect_uri does not match the one used in the authorization request.",
            )
        verifier = form.get("code_verifier", "")
        expected = _b64url(hashlib.sha256(verifier.encode("ascii")).digest())
        if not verifier or not secrets.compare_digest(expected, pending.code_challenge):
            return _entra_error(
                400,
                "invalid_grant",
                501481,
                "The Code_Verifier does not match the code_challenge supplied in the authorization request.",
            )
        with self.sim.store.lock:
            identity = dict(self.sim.store.table("entra_identities").get(pending.identity_oid, {}))
        if not identity:
            return _entra_error(400, "invalid_grant", 50034, "The user account does not exist in the directory.")
        now = int(time.time())
        id_claims = {
            "aud": pending.client_id,
            "iss": self.issuer,
            "tid": self.tenant_id,
            "oid": identity["oid"],
            "sub": identity["oid"],
            "preferred_username": identity["username"],
            "name": identity["name"],
            "email": identity.get("email", identity["username"]),
            "roles": list(identity.get("roles", [])),
            "nonce": pending.nonce,
            "iat": now,
            "nbf": now,
            "exp": now + ACCESS_TOKEN_SECONDS,
            "ver": "2.0",
        }
        client_info = _b64url(json.dumps({"uid": identity["oid"], "utid": self.tenant_id}).encode())
        return SimResponse.json(
            200,
            {
                "token_type": "Bearer",
                "scope": pending.scope or "openid profile",
                "expires_in": ACCESS_TOKEN_SECONDS,
                "ext_expires_in": ACCESS_TOKEN_SECONDS,
                "access_token": self._sign({**id_claims, "aud": "00000003-0000-0000-c000-000000000000"}),
                "id_token": self._sign(id_claims),
                "client_info": client_info,
            },
        )

    def _logout(self, request: SimRequest) -> SimResponse:
        target = request.query.get("post_logout_redirect_uri", "")
        host = urlsplit(target).hostname
        if target and host in ("127.0.0.1", "localhost", "::1"):
            return SimResponse(302, b"", {"Location": target})
        return SimResponse(
            200,
            _page("You have signed out", "<p>You can close this window.</p>"),
            {"Content-Type": "text/html; charset=utf-8"},
        )


def _entra_error(status: int, error: str, code: int, description: str) -> SimResponse:
    trace_id = str(uuid.uuid4())
    correlation_id = str(uuid.uuid4())
    timestamp = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime())
    return SimResponse.json(
        status,
        {
            "error": error,
            "error_description": f"AADSTS{code}: {description} Trace ID: {trace_id} Correlation ID: "
            f"{correlation_id} Timestamp: {timestamp}",
            "error_codes": [code],
            "timestamp": timestamp,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
        },
        headers={"Content-Type": "application/json; charset=utf-8"},
    )


def _page(title: str, body: str) -> bytes:
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)} - tenant simulator</title>"
        "<style>body{font-family:arial,sans-serif;max-width:40rem;margin:3rem auto;padding:0 1rem}"
        "ul.accounts{list-style:none;padding:0}ul.accounts button{display:block;width:100%;text-align:left;"
        "padding:.75rem;margin:.5rem 0;font-size:1rem;background:#fff;border:1px solid #8a8886;cursor:pointer}"
        ".upn,.roles{display:block;color:#505a5f;font-size:.9rem}fieldset{margin:1rem 0}"
        "button#continue{padding:.6rem 1.2rem;background:#0067b8;color:#fff;border:0;font-size:1rem}</style>"
        f"</head><body><h1>{html.escape(title)}</h1>{body}</body></html>"
    ).encode()
