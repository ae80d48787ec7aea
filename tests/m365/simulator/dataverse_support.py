"""Calling the simulated Dataverse handler directly, as the HTTPS server does, and reading its answers."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from portal.m365.simulator import dataverse, tables
from portal.m365.simulator.core import AppPrincipal, Scheduler, SimRequest, SimResponse, Simulator, Store

BASE_URL = "https://127.0.0.1:8443"
SURFACE_URL = f"{BASE_URL}/dataverse"
API_URL = f"{SURFACE_URL}/api/data/v9.2/"
APP = AppPrincipal(
    client_id="6f1c1c52-3a0e-4c39-8d8f-3b8f7d7b0a11",
    oid="0b7f6a4e-5d2c-4e55-9b1a-2c3d4e5f6a7b",
    name="Email integration portal",
    audience=SURFACE_URL,
)


def make_simulator(**settings: Any) -> Simulator:
    """A real store and scheduler; Test & Enable finishes quickly unless a test says otherwise."""
    simulator = Simulator(store=Store(), scheduler=Scheduler(), tenant_id="contoso-tenant", base_url=BASE_URL)
    simulator.settings.update({"test_enable_delay_seconds": 0.05, **settings})
    return simulator


@dataclass
class Organisation:
    business_unit: dict[str, Any]
    exchange_online: dict[str, Any]
    legacy_profile: dict[str, Any]
    organization: dict[str, Any]
    rows: dict[str, Any] = field(default_factory=dict)


def seed_organisation(store: Store, **organization: Any) -> Organisation:
    """The minimum a tenant has: a root business unit, an Exchange Online profile, a legacy one, the org row."""
    unit = tables.insert(store, "businessunits", {"name": "Contoso"})
    exchange_online = tables.insert(
        store,
        "emailserverprofiles",
        {"name": "Microsoft Exchange Online", "servertype": 0, "incomingcredentialretrieval": 2},
    )
    legacy = tables.insert(
        store, "emailserverprofiles", {"name": "Legacy POP3/SMTP", "servertype": 1, "incomingcredentialretrieval": 0}
    )
    org = tables.insert(
        store,
        "organizations",
        {
            "name": "Contoso",
            "_defaultemailserverprofileid_value": exchange_online["emailserverprofileid"],
            **organization,
        },
    )
    return Organisation(unit, exchange_online, legacy, org)


def add_graph_user(store: Store, address: str, *, location: str = "exchange_online", purpose: str = "shared") -> None:
    """A recipient as Graph knows it; ``location`` says where its mailbox lives."""
    object_id = f"{abs(hash(address)) % 10**12:012d}"
    store.table("graph_users")[object_id] = {
        "id": object_id,
        "userPrincipalName": address,
        "mail": address,
        "displayName": address.split("@")[0],
        "accountEnabled": purpose != "shared",
        "userPurpose": purpose,
        "mailbox_location": location,
    }


@dataclass
class DataverseClient:
    """Builds :class:`SimRequest` objects the way the server does and calls :func:`dataverse.handle`."""

    sim: Simulator
    principal: AppPrincipal = APP

    def request(
        self,
        method: str,
        target: str,
        *,
        query: str = "",
        headers: dict[str, str] | None = None,
        json_body: Any = None,
        body: bytes | None = None,
    ) -> SimResponse:
        """``target`` is a path below ``/api/data/v9.2/`` or an absolute URL (such as a nextLink)."""
        if target.startswith("https://"):
            parts = urlsplit(target)
            path = parts.path.removeprefix("/dataverse")
            query = parts.query
        else:
            path = target if target.startswith("/") else f"/api/data/v9.2/{target}"
        if body is None:
            body = json.dumps(json_body).encode("utf-8") if json_body is not None else b""
        request = SimRequest(
            method=method,
            path=path,
            query=dict(parse_qsl(query, keep_blank_values=True)),
            raw_query=query,
            headers={name.lower(): value for name, value in (headers or {}).items()},
            body=body,
            base_url=SURFACE_URL,
            principal=self.principal,
        )
        return dataverse.handle(request, self.sim)

    def get(self, target: str, *, query: str = "", headers: dict[str, str] | None = None) -> SimResponse:
        return self.request("GET", target, query=query, headers=headers)

    def post(self, target: str, payload: Any, *, headers: dict[str, str] | None = None) -> SimResponse:
        return self.request("POST", target, json_body=payload, headers=headers)

    def patch(self, target: str, payload: Any, *, headers: dict[str, str] | None = None) -> SimResponse:
        return self.request("PATCH", target, json_body=payload, headers=headers)

    def delete(self, target: str, *, headers: dict[str, str] | None = None) -> SimResponse:
        return self.request("DELETE", target, headers=headers)

    def all_pages(self, target: str, *, query: str = "", headers: dict[str, str] | None = None) -> list[dict]:
        """Follow ``@odata.nextLink`` to the end, as a client must (Dataverse offers no ``$skip``)."""
        rows: list[dict] = []
        response = self.get(target, query=query, headers=headers)
        while True:
            assert response.status == 200, response.payload()
            payload = response.payload()
            rows.extend(payload["value"])
            next_link = payload.get("@odata.nextLink")
            if not next_link:
                return rows
            response = self.get(next_link, headers=headers)


def entity_id(response: SimResponse) -> str:
    """The GUID in an ``OData-EntityId`` header."""
    match = re.search(r"\(([0-9a-f-]{36})\)$", response.headers["OData-EntityId"])
    assert match, response.headers
    return match.group(1)


def wait_until(condition: Callable[[], bool], *, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the simulated platform did not finish in time")
        time.sleep(0.01)


# -- $batch ------------------------------------------------------------------------------------


def batch_body(boundary: str, items: list[Any], *, newline: str = "\r\n") -> bytes:
    """A ``$batch`` body.

    Each item is a request ``(method, url, payload, content_id)``, or a list of them for a change set.
    """
    lines: list[str] = []

    def request_lines(method: str, url: str, payload: Any, content_id: str | None) -> list[str]:
        part = ["Content-Type: application/http", "Content-Transfer-Encoding: binary"]
        if content_id:
            part.append(f"Content-ID: {content_id}")
        part += ["", f"{method} {url} HTTP/1.1"]
        if payload is not None:
            part += ["Content-Type: application/json; type=entry", "", json.dumps(payload)]
        else:
            part += ["", ""]
        return part

    for index, item in enumerate(items):
        lines.append(f"--{boundary}")
        if isinstance(item, list):
            change_set = f"changeset_{boundary}_{index}"
            lines += [f"Content-Type: multipart/mixed; boundary={change_set}", ""]
            for request in item:
                lines.append(f"--{change_set}")
                lines += request_lines(*request)
            lines.append(f"--{change_set}--")
        else:
            lines += request_lines(*item)
    lines.append(f"--{boundary}--")
    return (newline.join(lines) + newline).encode("utf-8")


@dataclass
class InnerResponse:
    status: int
    headers: dict[str, str]
    body: str
    content_id: str | None = None

    def payload(self) -> Any:
        return json.loads(self.body) if self.body.strip() else None


def parse_batch_response(response: SimResponse) -> list[InnerResponse | list[InnerResponse]]:
    """Read a multipart ``$batch`` answer independently of the simulator's own parser."""
    boundary = re.search(r"boundary=([^;\s]+)", response.headers["Content-Type"]).group(1)
    return _parse_multipart(response.body.decode("utf-8"), boundary)


def _parse_multipart(text: str, boundary: str) -> list[InnerResponse | list[InnerResponse]]:
    assert text.rstrip().endswith(f"--{boundary}--"), text[-200:]
    chunks = text.split(f"--{boundary}")[1:-1]
    results: list[InnerResponse | list[InnerResponse]] = []
    for chunk in chunks:
        head, _, rest = chunk.strip("\r\n").partition("\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.split("\r\n"))
        if headers["Content-Type"].startswith("multipart/mixed"):
            inner = headers["Content-Type"].split("boundary=")[1]
            results.append(_parse_multipart(rest, inner))  # type: ignore[arg-type]
            continue
        status_line, _, message = rest.partition("\r\n")
        header_text, _, body = message.partition("\r\n\r\n")
        inner_headers = dict(line.split(": ", 1) for line in header_text.split("\r\n") if line)
        results.append(
            InnerResponse(int(status_line.split()[1]), inner_headers, body.strip(), headers.get("Content-ID"))
        )
    return results
