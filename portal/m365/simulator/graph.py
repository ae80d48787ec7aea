"""Microsoft Graph: users and their mailbox settings, as Exchange Online reports them.

``graph_users`` rows: ``id``, ``userPrincipalName``, ``mail``, ``displayName``,
``accountEnabled``, ``userPurpose`` and ``mailbox_location`` (``exchange_online``,
``on_premises`` or ``none``). Only ``exchange_online`` mailboxes have
mailboxSettings; the others answer 404 ``MailboxNotEnabledForRESTAPI``.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from typing import Any
from urllib.parse import unquote, urlsplit

from .core import SimRequest, SimResponse, Simulator

MAX_BATCH = 20
_USER_PATH = re.compile(r"^/v1\.0/users/(?P<key>[^/]+)(?P<rest>/mailboxSettings)?/?$", re.IGNORECASE)


def graph_error(
    status: int, code: str, message: str, request: SimRequest | None = None, headers: dict[str, str] | None = None
) -> SimResponse:
    request_id = str(uuid.uuid4())
    client_request_id = request.header("client-request-id", request_id) if request else request_id
    return SimResponse.json(
        status,
        {
            "error": {
                "code": code,
                "message": message,
                "innerError": {
                    "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S"),
                    "request-id": request_id,
                    "client-request-id": client_request_id,
                },
            }
        },
        headers={
            "Content-Type": "application/json",
            "request-id": request_id,
            "client-request-id": client_request_id,
            **(headers or {}),
        },
    )


def mailbox_key(path: str) -> str | None:
    """The mailbox a Graph request concerns (for per-mailbox limits), lower-cased."""
    match = _USER_PATH.match(path)
    return unquote(match.group("key")).lower() if match else None


def find_user(sim: Simulator, key: str) -> dict[str, Any] | None:
    key = unquote(key).strip("'").lower()
    with sim.store.lock:
        users = sim.store.table("graph_users")
        if key in users:
            return dict(users[key])
        for row in users.values():
            if key in ((row.get("userPrincipalName") or "").lower(), (row.get("mail") or "").lower()):
                return dict(row)
    return None


def handle(request: SimRequest, sim: Simulator) -> SimResponse:
    if request.path.rstrip("/").lower() == "/v1.0/$batch" and request.method == "POST":
        return _batch(request, sim)
    match = _USER_PATH.match(request.path)
    if not match:
        return graph_error(
            400, "BadRequest", f"Resource not found for the segment '{request.path.strip('/')}'.", request
        )
    if request.method != "GET":
        return graph_error(
            405, "Request_BadRequest", "Specified HTTP method is not allowed for the request target.", request
        )
    return _get_user(request, sim, match.group("key"), bool(match.group("rest")))


def _get_user(request: SimRequest, sim: Simulator, key: str, mailbox_settings: bool) -> SimResponse:
    user = find_user(sim, key)
    if user is None:
        return graph_error(
            404,
            "Request_ResourceNotFound",
            f"Resource '{unquote(key)}' does not exist or one of its queried reference-property objects are not "
            "present.",
            request,
        )
    headers = _ids(request)
    base = f"{request.base_url}/v1.0/$metadata"
    if not mailbox_settings:
        body = {
            "@odata.context": f"{base}#users/$entity",
            "id": user["id"],
            "displayName": user.get("displayName"),
            "mail": user.get("mail"),
            "userPrincipalName": user.get("userPrincipalName"),
            "accountEnabled": user.get("accountEnabled", True),
        }
        return SimResponse.json(200, body, headers=headers)
    if user.get("mailbox_location") != "exchange_online":
        return graph_error(
            404,
            "MailboxNotEnabledForRESTAPI",
            "The mailbox is either inactive, soft-deleted, or is hosted on-premise.",
            request,
        )
    body = {
        "@odata.context": f"{base}#users('{user['id']}')/mailboxSettings",
        "archiveFolder": "AAMkAD" + user["id"].replace("-", "")[:20],
        "timeZone": "GMT Standard Time",
        "delegateMeetingMessageDeliveryOptions": "sendToDelegateOnly",
        "dateFormat": "dd/MM/yyyy",
        "timeFormat": "HH:mm",
        "userPurpose": user.get("userPurpose", "user"),
        "automaticRepliesSetting": {"status": "disabled", "externalAudience": "none"},
        "language": {"locale": "en-GB", "displayName": "English (United Kingdom)"},
        "workingHours": {
            "daysOfWeek": ["monday", "tuesday", "wednesday", "thursday", "friday"],
            "startTime": "09:00:00.0000000",
            "endTime": "17:00:00.0000000",
            "timeZone": {"name": "GMT Standard Time"},
        },
    }
    return SimResponse.json(200, body, headers=headers)


def _ids(request: SimRequest) -> dict[str, str]:
    request_id = str(uuid.uuid4())
    return {
        "request-id": request_id,
        "client-request-id": request.header("client-request-id", request_id),
        "Content-Type": "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;"
        "charset=utf-8",
    }


def _batch(request: SimRequest, sim: Simulator) -> SimResponse:
    try:
        payload = request.json()
        requests = payload["requests"]
        assert isinstance(requests, list)
    except (ValueError, KeyError, TypeError, AssertionError):
        return graph_error(400, "BadRequest", "Invalid batch payload format.", request)
    if len(requests) > MAX_BATCH:
        return graph_error(400, "BadRequest", f"Number of batch requests exceeds the limit of {MAX_BATCH}.", request)
    responses = []
    for item in requests:
        url = str(item.get("url", ""))
        inner = SimRequest(
            method=str(item.get("method", "GET")).upper(),
            path="/v1.0" + urlsplit(url if url.startswith("/") else "/" + url).path,
            query={},
            raw_query="",
            headers={key.lower(): str(value) for key, value in (item.get("headers") or {}).items()},
            base_url=request.base_url,
            principal=request.principal,
        )
        result = handle(inner, sim)
        responses.append(
            {
                "id": str(item.get("id", "")),
                "status": result.status,
                "headers": {key: value for key, value in result.headers.items() if key.lower() != "content-length"},
                "body": json.loads(result.body) if result.body else None,
            }
        )
    return SimResponse.json(200, {"responses": responses}, headers=_ids(request))
