"""The Microsoft Graph client: who a user is and whether their mailbox lives in Exchange Online.

Server-side synchronization only works for mailboxes hosted in Exchange Online. Graph's
``mailboxSettings`` answers for those (with ``userPurpose``: user, shared, room, …) and answers
404 ``MailboxNotEnabledForRESTAPI`` for mailboxes that are on-premises, inactive or soft-deleted,
which is exactly the check the inventory and the pre-flight need. Graph's Outlook limits are per
application per mailbox (4 concurrent), so calls about one mailbox go through that mailbox's
slot in the shared limiter.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import quote

import requests
from requests.structures import CaseInsensitiveDict

from portal.m365.budget import MailboxLimiter, graph_mailbox_limiter
from portal.m365.config import AppRegistration, M365Config
from portal.m365.errors import M365Error, NotFoundError, ResponseFormatError, ThrottledError, TransientError
from portal.m365.http import (
    RetryPolicy,
    ServiceClient,
    TokenSource,
    default_registration,
    error_from_status,
    parse_json,
    request_id_from_headers,
)
from portal.m365.tokens import TokenProvider

MAX_BATCH_REQUESTS = 20
USER_FIELDS = ("id", "displayName", "mail", "userPrincipalName", "accountEnabled")
# 404 codes that already say the user does not exist (directory lookups, Exchange's own wording).
_USER_MISSING_CODES = {"Request_ResourceNotFound", "ErrorInvalidUser"}


class PresenceReason(StrEnum):
    """Why a mailbox is not (usable) in Exchange Online."""

    MAILBOX_NOT_ENABLED_FOR_REST_API = "mailbox_not_enabled_for_rest_api"  # on-premises, inactive or soft-deleted
    MAILBOX_NOT_FOUND = "mailbox_not_found"  # the user exists but Exchange Online has no mailbox for it
    USER_NOT_FOUND = "user_not_found"


@dataclass(frozen=True)
class GraphUser:
    id: str
    user_principal_name: str | None
    display_name: str | None
    mail: str | None
    account_enabled: bool | None

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> GraphUser:
        user_id = body.get("id")
        if not isinstance(user_id, str) or not user_id:
            raise ResponseFormatError(message="Graph returned a user without an id.", service="graph")
        enabled = body.get("accountEnabled")
        return cls(
            id=user_id,
            user_principal_name=_text(body.get("userPrincipalName")),
            display_name=_text(body.get("displayName")),
            mail=_text(body.get("mail")),
            account_enabled=enabled if isinstance(enabled, bool) else None,
        )


@dataclass(frozen=True)
class MailboxPresence:
    """Whether ``mailbox`` is hosted in Exchange Online, what kind it is, and if not, why not."""

    mailbox: str
    in_exchange_online: bool
    user_purpose: str | None = None  # user, linked, shared, room, equipment, others
    reason: PresenceReason | None = None
    detail: str = ""  # the service's own words
    request_id: str = ""


class GraphClient(ServiceClient):
    service = "graph"

    def __init__(
        self,
        config: M365Config,
        registration: AppRegistration | None = None,
        *,
        session: requests.Session | None = None,
        limiter: MailboxLimiter | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        tokens: TokenSource | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        registration = registration or default_registration(config)
        super().__init__(
            config=config,
            registration=registration,
            base_url=f"{config.graph_url}/v1.0/",
            scope=config.scope_for(config.graph_url),
            tokens=tokens or TokenProvider(config=config, registration=registration, session=session),
            session=session,
            retry=retry,
            sleep=sleep,
            clock=clock,
        )
        self.limiter = limiter or graph_mailbox_limiter(config)

    def _slot(self, *, mailbox: str | None) -> AbstractContextManager[object]:
        if mailbox is None:
            return nullcontext()
        return self.limiter.acquire(app_key=self.app_key, mailbox=mailbox)

    def _throttled(self, *, seconds: float, mailbox: str | None) -> None:
        if mailbox is not None:
            self.limiter.block(app_key=self.app_key, mailbox=mailbox, seconds=seconds)

    def get_user(self, id_or_upn: str) -> GraphUser | None:
        """The directory user, or ``None`` when there is no such user."""
        try:
            response = self._request(
                "GET",
                f"users/{_segment(id_or_upn)}",
                params={"$select": ",".join(USER_FIELDS)},
                headers={"Accept": "application/json"},
            )
        except NotFoundError:
            return None
        return GraphUser.from_body(self._object(response))

    def mailbox_presence(self, id_or_upn: str) -> MailboxPresence:
        """Whether the user's mailbox is in Exchange Online (and its ``userPurpose``)."""
        try:
            response = self._request(
                "GET",
                f"users/{_segment(id_or_upn)}/mailboxSettings",
                headers={"Accept": "application/json"},
                mailbox=id_or_upn,
            )
        except NotFoundError as error:
            return self._absent(id_or_upn, error)
        return _present(id_or_upn, self._object(response), request_id=request_id_from_headers(response.headers))

    def batch_mailbox_presence(self, mailboxes: Iterable[str]) -> dict[str, MailboxPresence]:
        """:meth:`mailbox_presence` for many mailboxes, 20 to a JSON ``$batch``.

        Throttled or failed items are retried (after their ``Retry-After``) within the same
        bounds as any read; what is still throttled after that raises :class:`ThrottledError`.
        """
        unique = list(dict.fromkeys(mailbox.strip() for mailbox in mailboxes if mailbox.strip()))
        results: dict[str, MailboxPresence] = {}
        for start in range(0, len(unique), MAX_BATCH_REQUESTS):
            results.update(self._presence_batch(unique[start : start + MAX_BATCH_REQUESTS]))
        return results

    # --- internals ----------------------------------------------------------------------------

    def _presence_batch(self, chunk: list[str]) -> dict[str, MailboxPresence]:
        pending = {str(number): mailbox for number, mailbox in enumerate(chunk, start=1)}
        results: dict[str, MailboxPresence] = {}
        waited = 0.0
        attempt = 0
        while pending:
            attempt += 1
            answers = self._send_batch(pending)
            retry: dict[str, str] = {}
            delay = 0.0
            last_error: M365Error | None = None
            for answer_id, mailbox in pending.items():
                answer = answers.get(answer_id)
                if answer is None:
                    raise ResponseFormatError(
                        message=f"The Graph $batch answer has no response for request {answer_id}.",
                        service=self.service,
                    )
                status, headers, body = answer
                if status == 200 and isinstance(body, dict):
                    results[mailbox] = _present(mailbox, body, request_id=str(headers.get("request-id") or ""))
                    continue
                error = error_from_status(
                    status=status,
                    headers=headers,
                    body=body,
                    text="",
                    reason="",
                    service=self.service,
                    method="GET",
                    url=f"{self.base_url}users/{_segment(mailbox)}/mailboxSettings",
                )
                if isinstance(error, NotFoundError):
                    results[mailbox] = self._absent(mailbox, error)
                elif isinstance(error, TransientError):
                    if isinstance(error, ThrottledError) and error.retry_after is not None:
                        self.limiter.block(app_key=self.app_key, mailbox=mailbox, seconds=error.retry_after)
                    retry[answer_id] = mailbox
                    delay = max(delay, error.retry_after if error.retry_after is not None else 0.0)
                    last_error = error
                else:
                    raise error
            pending = retry
            if pending and last_error is not None:
                delay = delay or self._retry.backoff(attempt)
                if attempt >= self._retry.max_attempts or waited + delay > self._retry.max_total_wait:
                    raise last_error
                self._wait(delay)
                waited += delay
        return results

    def _send_batch(self, pending: Mapping[str, str]) -> dict[str, tuple[int, CaseInsensitiveDict, Any]]:
        body = {
            "requests": [
                {"id": answer_id, "method": "GET", "url": f"/users/{_segment(mailbox)}/mailboxSettings"}
                for answer_id, mailbox in pending.items()
            ]
        }
        # Each request in the batch counts against its own mailbox's concurrency.
        leases = self.limiter.acquire_many(app_key=self.app_key, mailboxes=list(pending.values()))
        try:
            # Only reads inside, so the batch as a whole is safe to send again.
            response = self._request(
                "POST", "$batch", json_body=body, headers={"Accept": "application/json"}, idempotent=True
            )
        finally:
            self.limiter.release_many(leases)
        payload = self._object(response)
        items = payload.get("responses")
        if not isinstance(items, list):
            raise ResponseFormatError(message="The Graph $batch answer has no 'responses' list.", service=self.service)
        answers: dict[str, tuple[int, CaseInsensitiveDict, Any]] = {}
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get("status"), int):
                raise ResponseFormatError(message="A Graph $batch response has no status.", service=self.service)
            headers = CaseInsensitiveDict({str(k): str(v) for k, v in (item.get("headers") or {}).items()})
            answers[str(item.get("id"))] = (item["status"], headers, item.get("body"))
        return answers

    def _absent(self, mailbox: str, error: M365Error) -> MailboxPresence:
        if error.code == "MailboxNotEnabledForRESTAPI":
            reason = PresenceReason.MAILBOX_NOT_ENABLED_FOR_REST_API
        elif error.code in _USER_MISSING_CODES:
            reason = PresenceReason.USER_NOT_FOUND
        else:
            # ResourceNotFound on mailboxSettings is ambiguous: ask the directory.
            exists = self.get_user(mailbox) is not None
            reason = PresenceReason.MAILBOX_NOT_FOUND if exists else PresenceReason.USER_NOT_FOUND
        return MailboxPresence(
            mailbox=mailbox,
            in_exchange_online=False,
            reason=reason,
            detail=error.message,
            request_id=error.request_id,
        )

    def _object(self, response: requests.Response) -> dict[str, Any]:
        body = parse_json(response, service=self.service)
        if not isinstance(body, dict):
            raise ResponseFormatError(message="Expected a JSON object from Graph.", service=self.service)
        return body


def _present(mailbox: str, body: Mapping[str, Any], *, request_id: str) -> MailboxPresence:
    purpose = body.get("userPurpose")
    if isinstance(purpose, Mapping):  # the beta shape: {"value": "shared"}
        purpose = purpose.get("value")
    return MailboxPresence(
        mailbox=mailbox,
        in_exchange_online=True,
        user_purpose=purpose if isinstance(purpose, str) else None,
        request_id=request_id,
    )


def _segment(id_or_upn: str) -> str:
    """A user id or UPN as one path segment (``/``, ``#``, ``?``, quotes escaped; ``@`` kept)."""
    value = id_or_upn.strip()
    if not value:
        raise ValueError("A user id or user principal name is required.")
    return quote(value, safe="@")


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None
