"""Signing portal users in with Microsoft Entra ID (OpenID Connect authorization-code flow).

MSAL builds the authorize URL with PKCE and a nonce, and when the browser comes
back it checks the state, redeems the code with the PKCE verifier and checks
the ID token's nonce. Since MSAL 1.38 it no longer checks the ID token's
issuer, audience or lifetime, so :func:`_identity_from_claims` does. The ID
token comes straight from the token endpoint over verified TLS, which OpenID
Connect accepts in place of checking its signature (Core 1.0, 3.1.3.7 step 6).

Tokens are used once, for their claims, and dropped: MSAL's token cache is
replaced by one that keeps nothing, and nothing token-shaped is written to the
session, the database or the log.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import msal
import requests
from django.conf import settings
from django.contrib.auth import login
from django.db import IntegrityError, transaction
from django.http import HttpRequest
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme

from portal.audit.models import Outcome
from portal.audit.services import audit_record
from portal.exceptions import ConfigurationError, PortalError
from portal.m365.config import EntraSignInConfig
from portal.m365.http import session_for_ca_bundle
from portal.m365.tokens import EntraHttpClient

from .models import User
from .roles import Role
from .services import SIGN_IN_METHOD_SESSION_KEY, user_roles_set

logger = logging.getLogger(__name__)

METHOD = "entra"
FLOW_SESSION_KEY = "entra_sign_in_flow"
# Long enough for a password reset or setting up MFA at Microsoft; short enough
# that a forgotten tab cannot finish a sign-in the next morning.
FLOW_MAX_AGE_SECONDS = 20 * 60
CLOCK_SKEW_SECONDS = 5 * 60
HTTP_TIMEOUT_SECONDS = 15.0

# App roles defined on the sign-in app registration, and the portal role each grants.
APP_ROLES: dict[str, Role] = {
    "Requester": Role.REQUESTER,
    "Approver": Role.APPROVER,
    "PlatformAdmin": Role.PLATFORM_ADMIN,
    "MigrationLead": Role.MIGRATION_LEAD,
    "Auditor": Role.AUDITOR,
}

# Microsoft answers with a top-level GET (response_mode=query) on purpose: the
# session cookie is SameSite=Lax, so a cross-site form_post would arrive without
# it and the flow could not be found. The code in the URL is single-use, bound
# to the PKCE verifier and the client secret, and Referrer-Policy keeps it on
# this site; MSAL's advice to use form_post would only be noise in the log.
warnings.filterwarnings(
    "ignore", message=r"response_mode='form_post' is recommended", category=UserWarning, module=r"msal\.oauth2cli"
)

_USERNAME_UNSAFE = re.compile(r"[^\w.@+-]")
_USERNAME_MAX = 150


class EntraSignInError(PortalError):
    """Signing in with Microsoft did not work; ``message`` says what happened and what to do."""

    title = "Sorry, we could not sign you in"
    status = 400

    def __init__(self, message: str, *, next_url: str = "") -> None:
        super().__init__(message)
        self.next_url = next_url


class EntraSignInCancelledError(EntraSignInError):
    title = "You did not finish signing in"


class EntraSignInUnavailableError(EntraSignInError):
    title = "Sorry, signing in with Microsoft is not working"
    status = 503


MESSAGE_NO_FLOW = (
    "Your sign-in had expired or had already been used, so we did not sign you in. "
    "This can happen if you used the back button or took more than 20 minutes to sign in."
)
MESSAGE_MISMATCH = (
    "The answer from Microsoft did not match the sign-in you started in this browser, so we did not sign you in. "
    "This can happen if you started signing in in another tab."
)
MESSAGE_CANCELLED = "Signing in was cancelled at Microsoft, so we did not sign you in."
MESSAGE_NOT_ASSIGNED = (
    "Your Microsoft account has not been given access to the portal. "
    "Ask your Dynamics 365 platform team to give you a role in the portal."
)
MESSAGE_REFUSED = "Microsoft did not sign you in."
MESSAGE_BAD_RESPONSE = "The answer from Microsoft failed our security checks, so we did not sign you in."
MESSAGE_UNAVAILABLE = "We could not reach Microsoft to sign you in. Try again in a few minutes."
MESSAGE_INACTIVE = (
    "Your portal account has been switched off. "
    "Contact your Dynamics 365 platform team if you still need to use the portal."
)


@dataclass(frozen=True)
class EntraSignIn:
    """A completed sign-in: who, and where they were going before signing in."""

    user: User
    next_url: str


@dataclass(frozen=True)
class EntraIdentity:
    """What the ID token says about the person, checked and trimmed to fit the user model."""

    object_id: str
    username: str
    first_name: str
    last_name: str
    email: str
    app_roles: tuple[str, ...]

    @property
    def roles(self) -> list[Role]:
        granted = {APP_ROLES[name] for name in self.app_roles if name in APP_ROLES}
        return [role for role in Role if role in granted]

    @property
    def ignored_app_roles(self) -> list[str]:
        return sorted({name for name in self.app_roles if name not in APP_ROLES})


# --- HTTP towards the identity provider --------------------------------------------------


class _KeepNothingTokenCache(msal.TokenCache):
    """Sign-in reads the ID token's claims once; no token is kept for later."""

    def add(self, event: dict[str, Any], now: Any = None) -> None:
        return None


@dataclass(frozen=True)
class _SignInClient:
    app: msal.ConfidentialClientApplication
    issuer: str
    end_session_endpoint: str


_clients: dict[tuple[str, str], _SignInClient] = {}
_clients_lock = threading.Lock()


def entra_client_cache_clear() -> None:
    """Forget the per-process MSAL application (after a configuration change, and in tests)."""
    with _clients_lock:
        _clients.clear()


def _client(config: EntraSignInConfig) -> _SignInClient:
    """The one MSAL application of this process for the sign-in registration."""
    key = (config.authority, config.client_id)
    client = _clients.get(key)
    if client is None:
        with _clients_lock:
            client = _clients.get(key)
            if client is None:
                client = _clients[key] = _client_build(config)
    return client


def _client_build(config: EntraSignInConfig) -> _SignInClient:
    discovery_url = f"{config.authority}/v2.0/.well-known/openid-configuration"
    try:
        app = msal.ConfidentialClientApplication(
            config.client_id,
            client_credential=config.client_secret,
            authority=config.authority,
            # MSAL only knows Microsoft's hosts; any other (the tenant simulator) is taken as configured.
            instance_discovery=None if config.is_microsoft_authority else False,
            http_client=EntraHttpClient(
                session_for_ca_bundle(config.ca_bundle), timeout_seconds=HTTP_TIMEOUT_SECONDS, app=config.client_id
            ),
            token_cache=_KeepNothingTokenCache(),
        )
        # MSAL fetched this document while building the app and keeps successful
        # GETs for a day, so this read normally costs no request.
        response = app.http_client.get(discovery_url)
        document = json.loads(response.text) if response.status_code == 200 else {}
    except (requests.RequestException, ValueError, KeyError, TypeError) as exc:
        logger.warning("Entra ID discovery at %s failed: %s", discovery_url, type(exc).__name__)
        raise EntraSignInUnavailableError(MESSAGE_UNAVAILABLE) from exc
    issuer = document.get("issuer") if isinstance(document, dict) else None
    if not isinstance(issuer, str) or not issuer:
        logger.warning("Entra ID discovery at %s has no issuer", discovery_url)
        raise EntraSignInUnavailableError(MESSAGE_UNAVAILABLE)
    end_session = document.get("end_session_endpoint")
    return _SignInClient(
        app=app, issuer=issuer, end_session_endpoint=end_session if isinstance(end_session, str) else ""
    )


def _config() -> EntraSignInConfig:
    config: EntraSignInConfig = settings.ENTRA_SIGNIN
    if not config.enabled:
        raise ConfigurationError("Signing in with Microsoft is switched off.")
    return config


# --- Start, complete, sign out -------------------------------------------------------------


def _same_site_path(candidate: str) -> str:
    """``candidate`` if it is a path on this site, otherwise "" (go home)."""
    if (
        candidate
        and candidate.startswith("/")
        and not candidate.startswith(("//", "/\\"))
        and url_has_allowed_host_and_scheme(candidate, allowed_hosts=set())
    ):
        return candidate
    return ""


def _with_query(url: str, params: dict[str, str]) -> str:
    parts = urlsplit(url)
    query = "&".join(part for part in (parts.query, urlencode(params)) if part)
    return urlunsplit(parts._replace(query=query))


def entra_sign_in_start(*, request: HttpRequest, next_url: str = "") -> str:
    """Begin signing in: remember the flow in the session and return Microsoft's authorize URL."""
    next_url = _same_site_path(next_url)
    try:
        client = _client(_config())
    except EntraSignInError as error:
        error.next_url = next_url
        raise
    flow = client.app.initiate_auth_code_flow(
        scopes=[],
        redirect_uri=request.build_absolute_uri(reverse("accounts:entra_callback")),
        prompt=msal.Prompt.SELECT_ACCOUNT,
    )
    # One sign-in at a time per browser: starting again replaces an unfinished one.
    request.session[FLOW_SESSION_KEY] = {"flow": flow, "next": next_url, "started_at": time.time()}
    return flow["auth_uri"]


def _failed(error_class: type[EntraSignInError], message: str, *, reason: str, next_url: str = "") -> EntraSignInError:
    """Record a failed attempt (committed on its own) and build the error to raise."""
    with transaction.atomic():
        audit_record(
            actor=None,
            actor_name="Anonymous",
            action="auth.sign_in",
            object_type="user",
            after={"method": METHOD},
            outcome=Outcome.FAILURE,
            reason=reason,
        )
    logger.warning("Entra ID sign-in failed: %s", reason)
    return error_class(message, next_url=next_url)


def _text(value: Any, limit: int) -> str:
    return value.strip()[:limit] if isinstance(value, str) else ""


def _identity_from_claims(claims: dict[str, Any], *, config: EntraSignInConfig, issuer: str) -> EntraIdentity:
    """Check the ID token's issuer, audience and lifetime, and read the person from it.

    Raises ``ValueError`` naming the check that failed.
    """
    if claims.get("iss") != issuer:
        raise ValueError("ID token issuer is not the configured tenant")
    audience = claims.get("aud")
    if not (audience == config.client_id or (isinstance(audience, list) and config.client_id in audience)):
        raise ValueError("ID token audience is not the sign-in app")
    now = time.time()
    expires = claims.get("exp")
    if not isinstance(expires, int | float) or expires < now - CLOCK_SKEW_SECONDS:
        raise ValueError("ID token has expired")
    not_before = claims.get("nbf", claims.get("iat", now))
    if not isinstance(not_before, int | float) or not_before > now + CLOCK_SKEW_SECONDS:
        raise ValueError("ID token is not valid yet")
    object_id = _text(claims.get("oid"), 64)
    if not object_id:
        raise ValueError("ID token has no object id (oid)")

    name = _text(claims.get("name"), 300)
    given, family = _text(claims.get("given_name"), 150), _text(claims.get("family_name"), 150)
    if not (given or family) and name:
        given, _, family = name.partition(" ")  # get_full_name() puts the display name back together
    roles = claims.get("roles") or []
    if isinstance(roles, str):
        roles = [roles]
    return EntraIdentity(
        object_id=object_id,
        username=_text(claims.get("preferred_username"), 300),
        first_name=given[:150],
        last_name=family.strip()[:150],
        email=_text(claims.get("email"), 254),
        app_roles=tuple(role for role in roles if isinstance(role, str)) if isinstance(roles, list) else (),
    )


def _username_available(wanted: str, *, object_id: str) -> str:
    base = _USERNAME_UNSAFE.sub("_", wanted)[: _USERNAME_MAX - 10] or f"entra-{object_id[:36]}"
    candidate = base
    for number in range(2, 100):
        if not User.objects.filter(username__iexact=candidate).exists():
            return candidate
        candidate = f"{base}-{number}"
    return f"{base[: _USERNAME_MAX - 50]}-{object_id[:36]}"


def _user_for_identity(identity: EntraIdentity) -> tuple[User, bool]:
    """The portal user linked to this Entra ID object id, created on first sign-in.

    A local account is never linked by name: someone who controls a matching
    ``preferred_username`` in the tenant must not inherit a local account's roles.
    """
    for _attempt in range(3):
        user = User.objects.select_for_update().filter(entra_object_id=identity.object_id).first()
        if user is not None:
            return user, False
        try:
            with transaction.atomic():  # a savepoint: a concurrent first sign-in may win the race
                user = User(
                    username=_username_available(identity.username, object_id=identity.object_id),
                    entra_object_id=identity.object_id,
                    first_name=identity.first_name,
                    last_name=identity.last_name,
                    email=identity.email,
                )
                user.set_unusable_password()
                user.save()
        except IntegrityError:
            continue
        audit_record(
            actor=None,
            actor_name="System (Entra ID sign-in)",
            action="account.created",
            object_type="user",
            object_id=user.pk,
            after={"username": user.username, "name": user.get_full_name(), "method": METHOD},
        )
        return user, True
    raise IntegrityError("could not create or find the user for an Entra ID object id")


def _details_update(user: User, identity: EntraIdentity) -> None:
    wanted = {"first_name": identity.first_name, "last_name": identity.last_name, "email": identity.email}
    changed = {field: value for field, value in wanted.items() if value and getattr(user, field) != value}
    if not changed:
        return
    before = {field: getattr(user, field) for field in changed}
    for field, value in changed.items():
        setattr(user, field, value)
    user.save(update_fields=list(changed))
    audit_record(
        actor=None,
        actor_name="System (Entra ID sign-in)",
        action="account.updated",
        object_type="user",
        object_id=user.pk,
        before=before,
        after=changed,
    )


def entra_sign_in_complete(*, request: HttpRequest) -> EntraSignIn:
    """Finish signing in when Microsoft sends the browser back to the callback.

    Every refusal is audited and raised as an :class:`EntraSignInError`; on
    success the person is signed in, their portal roles are set from the app
    roles in the ID token, and the sign-in is audited in the same transaction.
    """
    config = _config()
    pending = request.session.pop(FLOW_SESSION_KEY, None)  # one use only, whatever happens next
    if not (isinstance(pending, dict) and isinstance(pending.get("flow"), dict)):
        raise _failed(EntraSignInError, MESSAGE_NO_FLOW, reason="no sign-in in progress in this session")
    flow: dict[str, Any] = pending["flow"]
    next_url = _same_site_path(str(pending.get("next") or ""))
    started_at = pending.get("started_at")
    if not isinstance(started_at, int | float) or time.time() - started_at > FLOW_MAX_AGE_SECONDS:
        raise _failed(EntraSignInError, MESSAGE_NO_FLOW, reason="sign-in started too long ago", next_url=next_url)

    answer = request.GET.dict()
    # MSAL checks the state too, but reports a mismatch and a garbled token
    # response with the same exception; checking first keeps the audit reason true.
    if not secrets.compare_digest(str(flow.get("state", "")).encode(), answer.get("state", "").encode()):
        raise _failed(EntraSignInError, MESSAGE_MISMATCH, reason="state does not match", next_url=next_url)

    try:
        client = _client(config)
        result = client.app.acquire_token_by_auth_code_flow(flow, answer)
    except EntraSignInUnavailableError:
        raise _failed(
            EntraSignInUnavailableError, MESSAGE_UNAVAILABLE, reason="identity provider unreachable", next_url=next_url
        ) from None
    except requests.RequestException as exc:
        raise _failed(
            EntraSignInUnavailableError,
            MESSAGE_UNAVAILABLE,
            reason=f"token endpoint unreachable ({type(exc).__name__})",
            next_url=next_url,
        ) from None
    except (ValueError, RuntimeError, TypeError, KeyError) as exc:
        # RuntimeError: the ID token's nonce is not the hash of this flow's nonce. The
        # others: MSAL parsing a malformed answer (token response, client_info).
        reason = "ID token nonce does not match" if "nonce" in str(exc) else "unusable answer from Microsoft"
        raise _failed(EntraSignInError, MESSAGE_BAD_RESPONSE, reason=reason, next_url=next_url) from None

    if "error" in result:
        code = _text(result.get("error"), 100)
        description = _text(result.get("error_description"), 300)
        reason = f"{code}: {description}" if description else code
        if "AADSTS50105" in description:
            raise _failed(EntraSignInError, MESSAGE_NOT_ASSIGNED, reason=reason, next_url=next_url)
        if code == "access_denied":
            raise _failed(EntraSignInCancelledError, MESSAGE_CANCELLED, reason=reason, next_url=next_url)
        raise _failed(EntraSignInError, MESSAGE_REFUSED, reason=reason, next_url=next_url)

    claims = result.get("id_token_claims")
    del result  # the tokens go no further than this function
    try:
        if not isinstance(claims, dict):
            raise ValueError("no ID token in the answer")
        identity = _identity_from_claims(claims, config=config, issuer=client.issuer)
    except ValueError as exc:
        raise _failed(EntraSignInError, MESSAGE_BAD_RESPONSE, reason=str(exc), next_url=next_url) from None

    refused = False
    with transaction.atomic():
        user, _created = _user_for_identity(identity)
        if not user.is_active:
            refused = True
            audit_record(
                actor=None,
                actor_name=identity.username or "Anonymous",
                action="auth.sign_in",
                object_type="user",
                object_id=user.pk,
                after={"method": METHOD},
                outcome=Outcome.FAILURE,
                reason="account is switched off",
            )
        else:
            _details_update(user, identity)
            # Entra ID owns the roles of these accounts: a role removed there is gone at the next sign-in.
            user_roles_set(actor=None, actor_name="System (Entra ID app roles)", user=user, roles=identity.roles)
            login(request, user, backend="django.contrib.auth.backends.ModelBackend")
            request.session[SIGN_IN_METHOD_SESSION_KEY] = METHOD
            after: dict[str, Any] = {"method": METHOD, "roles": [role.value for role in identity.roles]}
            if identity.ignored_app_roles:
                after["ignored_app_roles"] = identity.ignored_app_roles
            audit_record(actor=user, action="auth.sign_in", object_type="user", object_id=user.pk, after=after)
    if refused:
        raise EntraSignInError(MESSAGE_INACTIVE, next_url=next_url)
    return EntraSignIn(user=user, next_url=next_url)


def entra_sign_out_url(*, request: HttpRequest) -> str | None:
    """Microsoft's end-session URL, coming back to the signed-out page, if the tenant offers one."""
    config: EntraSignInConfig = settings.ENTRA_SIGNIN
    if not config.enabled:
        return None
    try:
        client = _client(config)
    except EntraSignInError:
        return None
    if not client.end_session_endpoint:
        return None
    return _with_query(
        client.end_session_endpoint,
        {"post_logout_redirect_uri": request.build_absolute_uri(reverse("accounts:signed_out"))},
    )
