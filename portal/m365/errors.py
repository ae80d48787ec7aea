"""Typed errors for every Microsoft 365 call.

Every client raises a subclass of :class:`M365Error` carrying what an operator
and a retrying job need: HTTP status, the service's error code, its message,
the request id, ``retry_after`` seconds and whether trying again can help.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class M365Error(Exception):
    message: str
    status: int | None = None
    code: str = ""
    request_id: str = ""
    retry_after: float | None = None
    is_transient: bool = False
    service: str = ""  # "dataverse", "graph", "exchange", "entra"
    method: str = ""
    url: str = ""

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __str__(self) -> str:
        parts = [self.service or "m365"]
        if self.status is not None:
            parts.append(str(self.status))
        if self.code:
            parts.append(self.code)
        detail = f" (request id {self.request_id})" if self.request_id else ""
        return f"{' '.join(parts)}: {self.message}{detail}"


class TransientError(M365Error):
    """Worth retrying later: throttling (429), 5xx, timeouts, dropped connections.

    Writes raise this instead of retrying inside the client, so the job retries
    the whole checked step (which first reads whether the change already applied).
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("is_transient", True)
        super().__init__(*args, **kwargs)


class ThrottledError(TransientError):
    """429 from service protection limits; ``retry_after`` says how long to wait."""


class AuthenticationError(M365Error):
    """No token could be obtained, or the service rejected it (401)."""


class AccessDeniedError(M365Error):
    """The application is not allowed to do this (403), e.g. approving an address without the privilege."""


class NotFoundError(M365Error):
    """The record or resource does not exist (404)."""


class ConcurrencyError(M365Error):
    """The record changed since it was read: ``If-Match`` failed (412, Dataverse code 0x80060882)."""


class ValidationError(M365Error):
    """The service refused the request as invalid (400)."""


class ResponseFormatError(M365Error):
    """The service answered with something we cannot parse; never retried blindly."""


def describe_error(error: M365Error) -> str:
    """One sentence for a person: which service refused, its status and code, its words, and the request id."""
    service = {"exchange": "Exchange Online", "dataverse": "Dynamics 365", "graph": "Microsoft Graph"}.get(
        error.service, "Microsoft 365"
    )
    status = f" ({error.status}{' ' + error.code if error.code else ''})" if error.status else ""
    reference = f" Microsoft's request id: {error.request_id}." if error.request_id else ""
    return f"{service} answered with an error{status}: {error.message.strip()}{reference}"
