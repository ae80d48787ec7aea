"""Shared HTTP plumbing for the Microsoft 365 clients.

Every client (Dataverse, Graph, Exchange admin) sits on :class:`ServiceClient`, whose one private
:meth:`ServiceClient._request` sends every call: it adds the bearer token, sets explicit connect
and read timeouts, logs one line per attempt, turns failures into the typed errors of
:mod:`portal.m365.errors` and retries only what is safe to retry. Reads (GET) are retried on
throttling, 5xx and dropped connections, waiting exactly the ``Retry-After`` the service asked
for; writes never retry here, they raise :class:`TransientError` so the job retries its whole
checked step (which first reads whether the change already applied).
"""

from __future__ import annotations

import atexit
import datetime as dt
import email.utils
import json
import logging
import os
import random
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

import certifi
import requests
from django.core.exceptions import ImproperlyConfigured
from requests.adapters import HTTPAdapter

from portal.m365.config import AppRegistration, M365Config
from portal.m365.errors import (
    AccessDeniedError,
    AuthenticationError,
    ConcurrencyError,
    M365Error,
    NotFoundError,
    ResponseFormatError,
    ThrottledError,
    TransientError,
    ValidationError,
)

logger = logging.getLogger("portal.m365")

# Where each service puts the id its support staff ask for: Dataverse (REQ_ID,
# x-ms-service-request-id), Graph (request-id, client-request-id), Entra (x-ms-request-id).
REQUEST_ID_HEADERS = ("REQ_ID", "x-ms-service-request-id", "request-id", "client-request-id", "x-ms-request-id")
CONNECT_TIMEOUT_CAP = 10.0
USER_AGENT = "email-integration-portal"


class PortalSession(requests.Session):
    """A session whose own ``verify`` wins over ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE``.

    requests replaces ``Session.verify`` with those variables for every request
    (``merge_environment_settings``), which would silently drop the tenant's CA bundle
    (the simulator's CA, or a corporate TLS-inspection CA) whenever a machine sets them
    for other tools. Proxy variables are still honoured.
    """

    def merge_environment_settings(self, url, proxies, stream, verify, cert):  # type: ignore[no-untyped-def]
        settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
        if verify is None or verify is True:
            settings["verify"] = self.verify
        return settings


_sessions: dict[tuple[int, str], requests.Session] = {}
_bundles: dict[tuple[str, int, int], str] = {}
_plumbing_lock = threading.Lock()


def build_session(config: M365Config) -> requests.Session:
    """The process's session for this configuration's CA trust.

    One per process (a forked worker builds its own, so no connection pool crosses a
    fork), shared by every client and by MSAL so connections are reused.
    """
    return session_for_ca_bundle(config.ca_bundle)


def session_for_ca_bundle(ca_bundle: str) -> requests.Session:
    """A shared session trusting the public CAs plus ``ca_bundle`` (when set), whatever
    ``REQUESTS_CA_BUNDLE`` says. Used by the service clients and by Entra ID sign-in."""
    key = (os.getpid(), ca_bundle)
    with _plumbing_lock:
        session = _sessions.get(key)
        if session is None:
            session = PortalSession()
            session.verify = _combined_ca_bundle(ca_bundle) if ca_bundle else certifi.where()
            session.headers["User-Agent"] = USER_AGENT
            # Retries are ours (see ServiceClient._request), never urllib3's hidden ones.
            adapter = HTTPAdapter(pool_connections=8, pool_maxsize=32, max_retries=0)
            session.mount("https://", adapter)
            session.mount("http://", adapter)
            _sessions[key] = session
    return session


def _combined_ca_bundle(extra_path: str) -> str:
    """certifi's public CAs plus the configured PEM, written once per process to a temporary file.

    requests takes a single bundle; trusting only the extra CA would break the real
    Microsoft hosts whenever the extra CA is a proxy's or the simulator's. Call with the lock held.
    """
    stat = os.stat(extra_path)
    key = (os.path.realpath(extra_path), stat.st_size, stat.st_mtime_ns)
    existing = _bundles.get(key)
    if existing and os.path.exists(existing):
        return existing
    extra = Path(extra_path).read_bytes()
    if b"-----BEGIN CERTIFICATE-----" not in extra:
        raise ImproperlyConfigured(
            f"Environment variable M365_CA_BUNDLE points at {extra_path}, which holds no PEM certificate."
        )
    fd, path = tempfile.mkstemp(prefix="portal-m365-ca-", suffix=".pem")
    with os.fdopen(fd, "wb") as bundle:
        bundle.write(Path(certifi.where()).read_bytes().rstrip(b"\n") + b"\n")
        bundle.write(extra.rstrip(b"\n") + b"\n")
    atexit.register(_remove_quietly, path)
    _bundles[key] = path
    return path


def _remove_quietly(path: str) -> None:
    # At exit the file may already be gone (a tmp cleaner); nothing else depends on it.
    Path(path).unlink(missing_ok=True)


def default_registration(config: M365Config) -> AppRegistration:
    """The first application registration (``M365_CLIENT_ID``), for clients without a budget to spread."""
    if not config.enabled or not config.registrations:
        raise ImproperlyConfigured(
            "The Microsoft 365 integration is off: set M365_TENANT_ID and M365_CLIENT_ID to reach the tenant."
        )
    return config.registrations[0]


class TokenSource(Protocol):
    def token(self, *, scope: str) -> str: ...


@dataclass(frozen=True)
class RetryPolicy:
    """How reads are retried inside a client: a bounded number of attempts and of total waiting.

    A ``Retry-After`` longer than what is left of ``max_total_wait`` is not waited out here:
    the error goes back to the job, which can reschedule itself instead of holding a worker.
    """

    max_attempts: int = 4
    max_total_wait: float = 60.0
    backoff_base: float = 0.5
    backoff_cap: float = 8.0

    def backoff(self, attempt: int) -> float:
        """Exponential backoff with jitter (half fixed, half random) so workers do not retry in step."""
        ceiling = min(self.backoff_cap, self.backoff_base * (2 ** (attempt - 1)))
        return ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 - jitter, not a secret


def request_id_from_headers(headers: Mapping[str, str]) -> str:
    for name in REQUEST_ID_HEADERS:
        value = headers.get(name)
        if value:
            return str(value)
    return ""


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header: whole seconds (Microsoft's form) or an HTTP date."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        seconds = (when - dt.datetime.now(dt.UTC)).total_seconds()
    return max(0.0, seconds)


def parse_error_body(body: Any) -> tuple[str, str, str]:
    """``(code, message, request id)`` from the error bodies the Microsoft services send.

    Dataverse and Exchange admin: ``{"error": {"code", "message"}}``; Graph adds
    ``innerError: {"request-id", "date"}``; Entra ID: ``{"error": "invalid_client",
    "error_description", "correlation_id"}``.
    """
    if not isinstance(body, Mapping):
        return "", "", ""
    error = body.get("error")
    if isinstance(error, Mapping):
        code = str(error.get("code") or "")
        message = str(error.get("message") or "")
        inner = error.get("innerError") or error.get("innererror")
        request_id = ""
        if isinstance(inner, Mapping):
            request_id = str(inner.get("request-id") or inner.get("client-request-id") or "")
        return code, message, request_id
    if isinstance(error, str):
        request_id = str(body.get("correlation_id") or body.get("trace_id") or "")
        return error, str(body.get("error_description") or ""), request_id
    return "", "", ""


def redacted_url(url: str) -> str:
    """The URL without its query: filters can hold addresses, and errors travel to logs and pages."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


_STATUS_ERRORS: dict[int, type[M365Error]] = {
    400: ValidationError,
    401: AuthenticationError,
    403: AccessDeniedError,
    404: NotFoundError,
    408: TransientError,
    412: ConcurrencyError,
    429: ThrottledError,
}


def error_from_status(
    *,
    status: int,
    headers: Mapping[str, str],
    body: Any,
    text: str,
    reason: str,
    service: str,
    method: str,
    url: str,
) -> M365Error:
    """The typed error for an HTTP error answer (also used for the parts of a batch answer)."""
    code, message, body_request_id = parse_error_body(body)
    if not message:
        excerpt = " ".join(text.split())[:200] if body is None and text else ""
        message = f"{status} {reason}".strip() + (f": {excerpt}" if excerpt else "")
    error_type = _STATUS_ERRORS.get(status) or (TransientError if status >= 500 else M365Error)
    return error_type(
        message=message,
        status=status,
        code=code,
        request_id=request_id_from_headers(headers) or body_request_id,
        retry_after=parse_retry_after(headers.get("Retry-After")),
        service=service,
        method=method,
        url=redacted_url(url),
    )


def error_from_response(response: requests.Response, *, service: str, method: str) -> M365Error:
    try:
        body = response.json() if response.content else None
    except ValueError:
        body = None
    return error_from_status(
        status=response.status_code,
        headers=response.headers,
        body=body,
        text=response.text if body is None else "",
        reason=response.reason or "",
        service=service,
        method=method,
        url=response.url or "",
    )


def parse_json(response: requests.Response, *, service: str) -> Any:
    """The JSON body of a successful answer, or :class:`ResponseFormatError` (never retried blindly)."""
    method = response.request.method if response.request is not None else ""
    try:
        return response.json()
    except ValueError as exc:
        raise ResponseFormatError(
            message=f"Expected JSON but the answer was {response.headers.get('Content-Type') or 'untyped'} "
            f"({len(response.content)} bytes).",
            status=response.status_code,
            request_id=request_id_from_headers(response.headers),
            service=service,
            method=method or "",
            url=redacted_url(response.url or ""),
        ) from exc


def transport_error(exc: requests.RequestException, *, service: str, method: str, url: str) -> M365Error:
    """A failure before any HTTP answer. Timeouts and dropped connections are transient; TLS trust is not."""
    common = {"service": service, "method": method, "url": redacted_url(url)}
    if isinstance(exc, requests.exceptions.SSLError):
        return M365Error(
            message=f"TLS verification failed ({exc.__class__.__name__}); check M365_CA_BUNDLE and the host name.",
            code="tls_error",
            **common,
        )
    if isinstance(exc, requests.Timeout):
        return TransientError(message=f"No answer in time ({exc.__class__.__name__}).", code="timeout", **common)
    if isinstance(exc, requests.ConnectionError | requests.exceptions.ChunkedEncodingError):
        return TransientError(
            message=f"The connection failed or was dropped ({exc.__class__.__name__}).", code="connection", **common
        )
    return M365Error(message=f"The request could not be sent ({exc.__class__.__name__}).", code="request", **common)


def log_attempt(
    *,
    service: str,
    method: str,
    url: str,
    status: int | None,
    ms: float,
    request_id: str,
    app: str,
    attempt: int,
    error: str = "",
) -> None:
    """One line per attempt, the same shape for every service (never a token, never a body)."""
    level = logging.INFO if status is not None and status < 400 else logging.WARNING
    logger.log(
        level,
        "service=%s method=%s path=%s status=%s ms=%d request_id=%s app=%s attempt=%d%s",
        service,
        method,
        urlsplit(url).path,
        status if status is not None else "-",
        round(ms),
        request_id or "-",
        app,
        attempt,
        f" error={error}" if error else "",
    )


class ServiceClient:
    """Base of the Microsoft 365 clients: one session, one token source, one request method."""

    service: ClassVar[str] = "m365"

    def __init__(
        self,
        *,
        config: M365Config,
        registration: AppRegistration,
        base_url: str,
        scope: str,
        tokens: TokenSource,
        session: requests.Session | None = None,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.registration = registration
        self.base_url = base_url.rstrip("/") + "/"
        self._scope = scope
        self._tokens = tokens
        self._session = session or build_session(config)
        self._retry = retry or RetryPolicy()
        self._sleep = sleep
        self._clock = clock
        self._timeout = (min(CONNECT_TIMEOUT_CAP, config.timeout_seconds), config.timeout_seconds)

    @property
    def app_key(self) -> str:
        """Whose budget a call spends: the application (client) id, i.e. the application user."""
        return self.registration.client_id

    # Hooks for the rate budgets; the base client has none.
    def _slot(self, *, mailbox: str | None) -> AbstractContextManager[object]:
        return nullcontext()

    def _throttled(self, *, seconds: float, mailbox: str | None) -> None:
        return None

    def _url(self, path_or_url: str) -> str:
        if "://" in path_or_url:
            # Only links the service gave us back (nextLink) and only below our own base:
            # the bearer token must never travel to another host.
            if not path_or_url.startswith(self.base_url):
                raise ResponseFormatError(
                    message="The service returned a link outside its own address; refusing to follow it.",
                    service=self.service,
                    url=redacted_url(path_or_url),
                )
            return path_or_url
        return self.base_url + path_or_url.lstrip("/")

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool | None = None,
        mailbox: str | None = None,
        accept: Callable[[requests.Response], bool] | None = None,
    ) -> requests.Response:
        """Send one call, retrying reads deliberately; every other outcome is a typed error.

        ``idempotent`` defaults to true for GET only. ``mailbox`` names the mailbox a Graph
        call touches (for its concurrency limit). ``accept`` lets a caller take an error
        status it parses itself (a ``$batch`` answer carrying its parts).
        """
        url = self._url(path)
        if params:
            # OData query options read as in Microsoft's documentation: $select, commas, quotes and
            # parentheses unescaped, spaces as %20 (never "+").
            url += ("&" if "?" in url else "?") + urlencode(params, quote_via=quote, safe="$,()'@:/")
        method = method.upper()
        if idempotent is None:
            idempotent = method in ("GET", "HEAD")
        send_headers = dict(headers or {})
        body = data
        if json_body is not None:
            body = json.dumps(json_body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
            send_headers.setdefault("Content-Type", "application/json; charset=utf-8")
        waited = 0.0
        attempt = 0
        while True:
            attempt += 1
            try:
                return self._attempt(
                    method,
                    url,
                    body=body,
                    headers=send_headers,
                    mailbox=mailbox,
                    accept=accept,
                    attempt=attempt,
                )
            except TransientError as error:
                delay = self._retry_delay(error, attempt=attempt, waited=waited, idempotent=idempotent)
                if delay is None:
                    raise
                self._wait(delay)
                waited += delay

    def _attempt(
        self,
        method: str,
        url: str,
        *,
        body: bytes | None,
        headers: Mapping[str, str],
        mailbox: str | None,
        accept: Callable[[requests.Response], bool] | None,
        attempt: int,
    ) -> requests.Response:
        token = self._tokens.token(scope=self._scope)
        send_headers = {**headers, "Authorization": f"Bearer {token}"}
        with self._slot(mailbox=mailbox):
            started = time.perf_counter()
            try:
                response = self._session.request(
                    method,
                    url,
                    data=body,
                    headers=send_headers,
                    timeout=self._timeout,
                    allow_redirects=False,
                )
            except requests.RequestException as exc:
                log_attempt(
                    service=self.service,
                    method=method,
                    url=url,
                    status=None,
                    ms=(time.perf_counter() - started) * 1000,
                    request_id="",
                    app=self.app_key,
                    attempt=attempt,
                    error=exc.__class__.__name__,
                )
                raise transport_error(exc, service=self.service, method=method, url=url) from exc
            elapsed_ms = (time.perf_counter() - started) * 1000
        log_attempt(
            service=self.service,
            method=method,
            url=url,
            status=response.status_code,
            ms=elapsed_ms,
            request_id=request_id_from_headers(response.headers),
            app=self.app_key,
            attempt=attempt,
        )
        if 300 <= response.status_code < 400:
            location = redacted_url(response.headers.get("Location", ""))
            raise ResponseFormatError(
                message=f"Unexpected redirect ({response.status_code}) to {location}; not followed.",
                status=response.status_code,
                request_id=request_id_from_headers(response.headers),
                service=self.service,
                method=method,
                url=redacted_url(url),
            )
        if response.status_code < 300 or (accept is not None and accept(response)):
            return response
        error = error_from_response(response, service=self.service, method=method)
        if error.status == 429 and error.retry_after is not None:
            # Tell every worker sharing this application user, not just this one.
            self._throttled(seconds=error.retry_after, mailbox=mailbox)
        raise error

    def _retry_delay(self, error: TransientError, *, attempt: int, waited: float, idempotent: bool) -> float | None:
        # An error that has already done its waiting (the rate budget's) says so with
        # ``retry_inside_client = False``; waiting again here would only hold the worker longer.
        if not idempotent or not error.is_transient or getattr(error, "retry_inside_client", True) is False:
            return None
        if attempt >= self._retry.max_attempts:
            return None
        delay = error.retry_after if error.retry_after is not None else self._retry.backoff(attempt)
        if waited + delay > self._retry.max_total_wait:
            return None
        return delay

    def _wait(self, seconds: float) -> None:
        """Sleep at least ``seconds`` by the monotonic clock: a service that asked for N seconds gets N."""
        deadline = self._clock() + seconds
        remaining = seconds
        while remaining > 0:
            self._sleep(remaining)
            remaining = deadline - self._clock()
