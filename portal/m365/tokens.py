"""Access tokens for the Microsoft 365 clients: Entra ID client credentials through MSAL.

One ``msal.ConfidentialClientApplication`` per application registration per process, so MSAL's
in-memory cache serves every call until the token nears expiry (one token request for many
calls). Tokens live only in that memory: never in the database, never in a log line.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from pathlib import Path
from typing import NoReturn

import msal
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from portal.m365.config import AppRegistration, M365Config
from portal.m365.errors import AuthenticationError, M365Error, ResponseFormatError, TransientError
from portal.m365.http import (
    CONNECT_TIMEOUT_CAP,
    build_session,
    log_attempt,
    redacted_url,
    request_id_from_headers,
    transport_error,
)

SERVICE = "entra"
# Entra's OAuth error codes that mean "try again later" rather than "fix the configuration".
TRANSIENT_OAUTH_ERRORS = {"temporarily_unavailable", "server_error"}
_PRIVATE_KEY = re.compile(rb"-----BEGIN (?:RSA |EC )?PRIVATE KEY-----.+?-----END (?:RSA |EC )?PRIVATE KEY-----", re.S)
_ENCRYPTED_KEY = b"-----BEGIN ENCRYPTED PRIVATE KEY-----"
_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)

_apps: dict[tuple[int, str, str, str], msal.ConfidentialClientApplication] = {}
_app_locks: dict[tuple[int, str, str, str], threading.Lock] = {}
_apps_lock = threading.Lock()


class EntraHttpClient:
    """What MSAL needs of an HTTP client (``get``, ``post``, ``close``), on the portal's session.

    MSAL never sets timeouts on a session it is given, so they are added here, together with
    the same one-line-per-attempt log the other clients write. Request bodies (client secrets,
    assertions) and answers (tokens) are never logged.
    """

    def __init__(self, session: requests.Session, *, timeout_seconds: float, app: str) -> None:
        self._session = session
        self._timeout = (min(CONNECT_TIMEOUT_CAP, timeout_seconds), timeout_seconds)
        self._app = app

    def get(self, url, params=None, headers=None, **kwargs):  # type: ignore[no-untyped-def]
        return self._send("GET", url, params=params, headers=headers, **kwargs)

    def post(self, url, params=None, data=None, headers=None, **kwargs):  # type: ignore[no-untyped-def]
        return self._send("POST", url, params=params, data=data, headers=headers, **kwargs)

    def close(self) -> None:
        # The session is shared with the other clients; it outlives any one MSAL application.
        return None

    def _send(self, method: str, url: str, **kwargs) -> requests.Response:  # type: ignore[no-untyped-def]
        kwargs.setdefault("timeout", self._timeout)
        started = time.perf_counter()
        try:
            response = self._session.request(method, url, **kwargs)
        except requests.RequestException as exc:
            log_attempt(
                service=SERVICE,
                method=method,
                url=url,
                status=None,
                ms=(time.perf_counter() - started) * 1000,
                request_id="",
                app=self._app,
                attempt=1,
                error=exc.__class__.__name__,
            )
            raise
        log_attempt(
            service=SERVICE,
            method=method,
            url=url,
            status=response.status_code,
            ms=(time.perf_counter() - started) * 1000,
            request_id=request_id_from_headers(response.headers),
            app=self._app,
            attempt=1,
        )
        return response


class TokenProvider:
    """Bearer tokens for one application registration, any resource scope."""

    def __init__(
        self, *, config: M365Config, registration: AppRegistration, session: requests.Session | None = None
    ) -> None:
        self._config = config
        self._registration = registration
        self._session = session

    def token(self, *, scope: str) -> str:
        """An access token for ``scope`` (``<resource>/.default``), from MSAL's cache when still valid."""
        app = self._application()
        try:
            result = app.acquire_token_for_client(scopes=[scope])
        except M365Error:
            raise
        except Exception as exc:
            raise self._failure(exc, doing="requesting a token", method="POST") from exc
        if result and "access_token" in result:
            return str(result["access_token"])
        self._refuse(result or {})

    def _application(self) -> msal.ConfidentialClientApplication:
        """The process's MSAL application for this registration, created once (thread-safe).

        Creating it fetches the authority's discovery document, so a failure is not cached:
        the next call tries again.
        """
        # Keyed by process too: a forked worker must not share its parent's connections.
        key = (os.getpid(), *_app_key_without_pid(self._config, self._registration))
        with _apps_lock:
            app = _apps.get(key)
            if app is not None:
                return app
            lock = _app_locks.setdefault(key, threading.Lock())
        with lock:
            app = _apps.get(key)
            if app is None:
                try:
                    app = msal.ConfidentialClientApplication(
                        self._registration.client_id,
                        client_credential=self._credential(),
                        authority=self._config.authority,
                        # Instance discovery asks Microsoft about the host; any other host
                        # (the simulator, a sovereign test authority) must skip it.
                        instance_discovery=None if self._config.is_microsoft_authority else False,
                        http_client=EntraHttpClient(
                            self._session or build_session(self._config),
                            timeout_seconds=self._config.timeout_seconds,
                            app=self._registration.client_id,
                        ),
                    )
                except M365Error:
                    raise
                except Exception as exc:
                    raise self._failure(exc, doing="setting up the sign-in authority", method="GET") from exc
                with _apps_lock:
                    _apps[key] = app
        return app

    def _credential(self) -> str | dict[str, str]:
        if not self._registration.uses_certificate:
            return self._registration.client_secret
        return certificate_credential(self._registration)

    def _failure(self, exc: Exception, *, doing: str, method: str) -> M365Error:
        """MSAL lets transport errors, 5xx and unparseable answers escape as exceptions; type them."""
        url = redacted_url(self._config.authority)
        if isinstance(exc, requests.RequestException):
            return transport_error(exc, service=SERVICE, method=method, url=url)
        if isinstance(exc, msal.exceptions.MsalServiceError):
            return TransientError(
                message=f"Entra ID failed while {doing}: {exc}", service=SERVICE, method=method, url=url
            )
        if isinstance(exc, json.JSONDecodeError):
            return ResponseFormatError(
                message=f"Entra ID answered with something that is not JSON while {doing}.", service=SERVICE, url=url
            )
        return AuthenticationError(
            message=f"Could not authenticate app {self._registration.client_id} while {doing}: {exc}",
            code="configuration",
            service=SERVICE,
            url=url,
        )

    def _refuse(self, result: dict) -> NoReturn:
        code = str(result.get("error") or "no_token")
        message = str(result.get("error_description") or "Entra ID did not issue a token.")
        error_type = TransientError if code in TRANSIENT_OAUTH_ERRORS else AuthenticationError
        raise error_type(
            message=message,
            code=code,
            request_id=str(result.get("correlation_id") or ""),
            service=SERVICE,
            method="POST",
            url=redacted_url(self._config.authority),
        )


def token_provider(*, config: M365Config, registration: AppRegistration) -> TokenProvider:
    return TokenProvider(config=config, registration=registration)


def _app_key_without_pid(config: M365Config, registration: AppRegistration) -> tuple[str, str, str]:
    return (config.authority, registration.client_id, _credential_fingerprint(registration))


def certificate_credential(registration: AppRegistration) -> dict[str, str]:
    """MSAL's certificate credential from a PEM file holding the certificate and its private key.

    The configured thumbprint is checked against the certificate, so a rotated certificate
    with a stale thumbprint fails here with a clear message rather than as an opaque AADSTS error.
    """
    name = f"app registration {registration.name} ({registration.client_id})"
    pem = Path(registration.cert_path).read_bytes()
    if _ENCRYPTED_KEY in pem:
        raise AuthenticationError(
            message=f"The private key in the certificate file of {name} is encrypted; supply it unencrypted.",
            code="certificate",
            service=SERVICE,
        )
    key_block = _PRIVATE_KEY.search(pem)
    if key_block is None:
        raise AuthenticationError(
            message=f"The certificate file of {name} holds no PEM private key.", code="certificate", service=SERVICE
        )
    try:
        load_pem_private_key(key_block.group(0), password=None)
    except ValueError as exc:
        raise AuthenticationError(
            message=f"The private key in the certificate file of {name} cannot be read.",
            code="certificate",
            service=SERVICE,
        ) from exc
    cert_block = _CERTIFICATE.search(pem)
    if cert_block is not None:
        certificate = x509.load_pem_x509_certificate(cert_block.group(0))
        actual = certificate.fingerprint(hashes.SHA1()).hex().upper()  # noqa: S303 - Entra's x5t is SHA-1
        if actual != registration.cert_thumbprint.upper():
            raise AuthenticationError(
                message=f"The certificate of {name} has thumbprint {actual}, not the configured "
                f"{registration.cert_thumbprint}.",
                code="certificate",
                service=SERVICE,
            )
    return {"private_key": key_block.group(0).decode("ascii"), "thumbprint": registration.cert_thumbprint}


def _credential_fingerprint(registration: AppRegistration) -> str:
    """Distinguishes credentials in the app cache without keeping the secret itself as a key."""
    material = registration.client_secret or f"{registration.cert_path}|{registration.cert_thumbprint}"
    return hashlib.sha256(material.encode("utf-8")).hexdigest()[:16]
