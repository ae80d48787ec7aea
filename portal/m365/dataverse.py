"""The Dataverse Web API client: rows, paging, conditional writes and ``$batch``.

Every request goes through the rate budget of its application user (portal/m365/budget.py), so
all workers together stay under the service protection limits; :class:`DataverseClientPool`
spreads work over every configured application registration, each with its own budget.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal, Protocol, Self, TypeVar, overload
from urllib.parse import quote, urlencode

import requests
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError
from requests.structures import CaseInsensitiveDict

from portal.m365.budget import RateBudget, dataverse_budget
from portal.m365.config import AppRegistration, M365Config
from portal.m365.errors import M365Error, ResponseFormatError
from portal.m365.http import RetryPolicy, ServiceClient, TokenSource, error_from_status, parse_json, redacted_url
from portal.m365.rows import WhoAmI
from portal.m365.tokens import TokenProvider

API_PATH = "api/data/v9.2/"
MAX_PAGE_SIZE = 5000
MAX_BATCH_REQUESTS = 1000
_ENTITY_SET = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_GUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_ENTITY_ID = re.compile(rf"\(({_GUID})\)\s*$")
_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.I)
_STATUS_LINE = re.compile(r"^HTTP/\d(?:\.\d)?\s+(\d{3})\s*(.*)$")
_CRLF = "\r\n"
# How long a pool trusts the policy's list of application users before reading it again.
APPLICATION_USERS_CACHE_SECONDS = 30.0

logger = logging.getLogger(__name__)


class _RowType(Protocol):
    ENTITY_SET: ClassVar[str]
    SELECT: ClassVar[tuple[str, ...]]

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Self: ...


R = TypeVar("R", bound=_RowType)


def row_id(value: str) -> str:
    """A row id in canonical GUID form; anything else is refused before it reaches a URL."""
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise ValueError(f"{value!r} is not a Dataverse row id (a GUID).") from None


def entity_set_name(value: str) -> str:
    if not _ENTITY_SET.match(value):
        raise ValueError(f"{value!r} is not a Dataverse entity set name.")
    return value


def bind(entity_set: str, row_id_value: str) -> str:
    """The value of a ``<navigation property>@odata.bind`` column: ``/<entityset>(<guid>)``."""
    return f"/{entity_set_name(entity_set)}({row_id(row_id_value)})"


def odata_string(value: str) -> str:
    """A string literal for ``$filter``: single quotes, with embedded quotes doubled."""
    return "'" + value.replace("'", "''") + "'"


def odata_ids_filter(column: str, ids: Iterable[object]) -> str:
    """``column eq <id> or …``: a ``$filter`` for rows by id (GUIDs need no quotes)."""
    return " or ".join(f"{column} eq {value}" for value in ids)


def odata_datetime(moment: dt.datetime) -> str:
    """A ``$filter`` date-time literal in UTC, to the second (Dataverse stores no finer)."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def entity_id_from(url: str | None) -> str | None:
    """The GUID at the end of an ``OData-EntityId`` (or ``Location``) URL."""
    match = _ENTITY_ID.search(url or "")
    return match.group(1).lower() if match else None


# --- $batch ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchOperation:
    """One request inside a ``$batch``; ``path`` is relative to the Web API root, or ``$<content-id>``."""

    method: str
    path: str
    body: Mapping[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    content_id: str | None = None

    @classmethod
    def create(cls, entity_set: str, data: Mapping[str, Any], *, content_id: str | None = None) -> BatchOperation:
        return cls("POST", entity_set_name(entity_set), body=dict(data), content_id=content_id)

    @classmethod
    def update(
        cls,
        entity_set: str,
        row_id_value: str,
        data: Mapping[str, Any],
        *,
        etag: str | None = None,
        content_id: str | None = None,
    ) -> BatchOperation:
        path = f"{entity_set_name(entity_set)}({row_id(row_id_value)})"
        return cls("PATCH", path, body=dict(data), headers={"If-Match": etag or "*"}, content_id=content_id)

    @classmethod
    def delete(
        cls, entity_set: str, row_id_value: str, *, etag: str | None = None, content_id: str | None = None
    ) -> BatchOperation:
        headers = {"If-Match": etag} if etag else {}
        return cls(
            "DELETE", f"{entity_set_name(entity_set)}({row_id(row_id_value)})", headers=headers, content_id=content_id
        )

    @classmethod
    def get(
        cls, entity_set: str, row_id_value: str | None = None, *, select: Sequence[str], filter: str | None = None
    ) -> BatchOperation:
        path = entity_set_name(entity_set) + (f"({row_id(row_id_value)})" if row_id_value else "")
        params = {"$select": ",".join(select)}
        if filter:
            params["$filter"] = filter
        query = urlencode(params, quote_via=quote, safe="$,()'@")
        return cls("GET", f"{path}?{query}")


@dataclass(frozen=True, init=False)
class ChangeSet:
    """Operations applied atomically: all of them, or none (GET is not allowed inside)."""

    operations: tuple[BatchOperation, ...]

    def __init__(self, operations: Iterable[BatchOperation]) -> None:
        ops = tuple(operations)
        if not ops:
            raise ValueError("A change set needs at least one operation.")
        if any(op.method.upper() == "GET" for op in ops):
            raise ValueError("GET is not allowed inside a change set; put it outside.")
        object.__setattr__(self, "operations", ops)


@dataclass(frozen=True)
class BatchResult:
    """The outcome of one operation of a batch, in the order the operations were given.

    ``status`` is ``None`` for an operation that got no answer of its own: it was rolled back
    with a failed change set, or never ran because an earlier request failed; ``error`` says which.
    """

    operation: BatchOperation
    status: int | None
    headers: Mapping[str, str]
    body: Any
    error: M365Error | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.status is not None and self.status < 300

    @property
    def entity_id(self) -> str | None:
        return entity_id_from(self.headers.get("OData-EntityId") or self.headers.get("Location"))


@dataclass(frozen=True)
class _Answer:
    status: int
    reason: str
    headers: CaseInsensitiveDict
    text: str
    content_id: str | None

    def body(self) -> Any:
        if not self.text.strip():
            return None
        try:
            return json.loads(self.text)
        except ValueError:
            return None


# --- the client --------------------------------------------------------------------------------


class DataverseClient(ServiceClient):
    """One application user's view of Dataverse."""

    service = "dataverse"
    bind = staticmethod(bind)

    def __init__(
        self,
        config: M365Config,
        registration: AppRegistration,
        *,
        session: requests.Session | None = None,
        budget: RateBudget | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        tokens: TokenSource | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        if not config.dataverse_url:
            raise ImproperlyConfigured(
                "Environment variable DATAVERSE_URL is required to reach Dataverse, "
                "e.g. https://contoso.crm11.dynamics.com."
            )
        super().__init__(
            config=config,
            registration=registration,
            base_url=f"{config.dataverse_url}/{API_PATH}",
            scope=config.scope_for(config.dataverse_url),
            tokens=tokens or TokenProvider(config=config, registration=registration, session=session),
            session=session,
            retry=retry,
            sleep=sleep,
            clock=clock,
        )
        self.budget = budget or dataverse_budget(config)

    # --- budget hooks -----------------------------------------------------------------------

    def _slot(self, *, mailbox: str | None) -> AbstractContextManager[object]:
        return self.budget.acquire(self.app_key)

    def _throttled(self, *, seconds: float, mailbox: str | None) -> None:
        self.budget.block(self.app_key, seconds=seconds)

    def standing(self) -> tuple[float, float]:
        """``(room, blocked_for)`` of this application user's budget right now."""
        return self.budget.standing(self.app_key)

    # --- reads ------------------------------------------------------------------------------

    def who_am_i(self) -> WhoAmI:
        """Which application user the portal is, in which business unit and organisation."""
        return WhoAmI.from_body(self._object(self._request("GET", "WhoAmI", headers=self._headers())))

    def iter_rows(
        self,
        entity_set: str,
        *,
        select: Sequence[str],
        filter: str | None = None,
        orderby: str | None = None,
        page_size: int = MAX_PAGE_SIZE,
        annotations: bool = False,
    ) -> Iterator[dict[str, Any]]:
        """Every matching row, page by page, following ``@odata.nextLink`` (Dataverse has no ``$skip``).

        A generator: the next page is fetched only when the caller gets that far.
        """
        if not select:
            raise ValueError("Name the columns to read ($select); reading every column is slow and fragile.")
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be between 1 and {MAX_PAGE_SIZE}.")
        params = {"$select": ",".join(select)}
        if filter:
            params["$filter"] = filter
        if orderby:
            params["$orderby"] = orderby
        prefer = [f"odata.maxpagesize={page_size}"]
        if annotations:
            prefer.append('odata.include-annotations="*"')
        path: str | None = entity_set_name(entity_set)
        query: Mapping[str, str] | None = params
        while path is not None:
            body = self._object(self._request("GET", path, params=query, headers=self._headers(prefer=prefer)))
            rows = body.get("value")
            if not isinstance(rows, list):
                raise ResponseFormatError(
                    message=f"The {entity_set} collection has no 'value' list.", service=self.service
                )
            yield from rows
            next_link = body.get("@odata.nextLink")
            path, query = (str(next_link), None) if next_link else (None, None)

    def iter_typed(
        self,
        row_type: type[R],
        *,
        filter: str | None = None,
        orderby: str | None = None,
        page_size: int = MAX_PAGE_SIZE,
    ) -> Iterator[R]:
        """Like :meth:`iter_rows`, parsed into ``row_type`` (e.g. :class:`~portal.m365.rows.Mailbox`)."""
        for row in self.iter_rows(
            row_type.ENTITY_SET, select=row_type.SELECT, filter=filter, orderby=orderby, page_size=page_size
        ):
            yield row_type.from_row(row)

    def get(self, entity_set: str, row_id_value: str, *, select: Sequence[str]) -> dict[str, Any]:
        """One row; :class:`~portal.m365.errors.NotFoundError` when it does not exist."""
        path = f"{entity_set_name(entity_set)}({row_id(row_id_value)})"
        params = {"$select": ",".join(select)} if select else None
        return self._object(self._request("GET", path, params=params, headers=self._headers()))

    def get_typed(self, row_type: type[R], row_id_value: str) -> R:
        return row_type.from_row(self.get(row_type.ENTITY_SET, row_id_value, select=row_type.SELECT))

    # --- writes (never retried here: the job re-checks and retries the whole step) ------------

    @overload
    def create(
        self, entity_set: str, data: Mapping[str, Any], *, return_representation: Literal[False] = False
    ) -> str: ...

    @overload
    def create(
        self, entity_set: str, data: Mapping[str, Any], *, return_representation: Literal[True]
    ) -> dict[str, Any]: ...

    def create(
        self, entity_set: str, data: Mapping[str, Any], *, return_representation: bool = False
    ) -> str | dict[str, Any]:
        """Create a row: its id (from ``OData-EntityId``), or the created row with ``return_representation``."""
        prefer = ["return=representation"] if return_representation else []
        response = self._request(
            "POST", entity_set_name(entity_set), json_body=dict(data), headers=self._headers(prefer=prefer)
        )
        if return_representation:
            return self._object(response)
        created = entity_id_from(response.headers.get("OData-EntityId"))
        if created is None:
            raise ResponseFormatError(
                message=f"Dataverse created a {entity_set} row but sent no usable OData-EntityId header.",
                status=response.status_code,
                service=self.service,
                method="POST",
                url=redacted_url(response.url or ""),
            )
        return created

    @overload
    def update(
        self,
        entity_set: str,
        row_id_value: str,
        data: Mapping[str, Any],
        *,
        etag: str | None = None,
        return_representation: Literal[False] = False,
    ) -> None: ...

    @overload
    def update(
        self,
        entity_set: str,
        row_id_value: str,
        data: Mapping[str, Any],
        *,
        etag: str | None = None,
        return_representation: Literal[True],
    ) -> dict[str, Any]: ...

    def update(
        self,
        entity_set: str,
        row_id_value: str,
        data: Mapping[str, Any],
        *,
        etag: str | None = None,
        return_representation: bool = False,
    ) -> dict[str, Any] | None:
        """Update a row. With ``etag``, only if unchanged since read (else ConcurrencyError, 412).

        Without one it sends ``If-Match: *``: Dataverse's PATCH would otherwise create a missing
        row (upsert), and a deleted queue must come back as NotFoundError, not as a new row.
        """
        path = f"{entity_set_name(entity_set)}({row_id(row_id_value)})"
        prefer = ["return=representation"] if return_representation else []
        headers = {**self._headers(prefer=prefer), "If-Match": etag or "*"}
        response = self._request("PATCH", path, json_body=dict(data), headers=headers)
        return self._object(response) if return_representation else None

    def delete(self, entity_set: str, row_id_value: str, *, etag: str | None = None) -> None:
        path = f"{entity_set_name(entity_set)}({row_id(row_id_value)})"
        headers = self._headers()
        if etag:
            headers["If-Match"] = etag
        self._request("DELETE", path, headers=headers)

    def batch(
        self, items: Sequence[BatchOperation | ChangeSet], *, continue_on_error: bool = False
    ) -> list[BatchResult]:
        """Send operations as one ``$batch``; one result per operation, in order.

        A :class:`ChangeSet` is atomic. Without ``continue_on_error`` Dataverse stops at the
        first failure outside a change set and the rest come back as not run. The batch counts
        as one request against the budget (its execution time still counts in full).
        """
        prepared = _assign_content_ids(items)
        total = sum(len(item.operations) if isinstance(item, ChangeSet) else 1 for item in prepared)
        if not 1 <= total <= MAX_BATCH_REQUESTS:
            raise ValueError(f"A batch holds 1 to {MAX_BATCH_REQUESTS} requests, not {total}.")
        boundary = f"batch_{uuid.uuid4().hex}"
        headers = self._headers(prefer=["odata.continue-on-error"] if continue_on_error else [])
        headers["Content-Type"] = f"multipart/mixed; boundary={boundary}"
        response = self._request(
            "POST",
            "$batch",
            data=self._batch_body(prepared, boundary),
            headers=headers,
            accept=_is_multipart,
        )
        answers = _parse_multipart(response.content, response.headers.get("Content-Type", ""))
        return self._match(prepared, answers)

    # --- internals --------------------------------------------------------------------------

    def _headers(self, *, prefer: Sequence[str] = ()) -> dict[str, str]:
        headers = {"Accept": "application/json", "OData-MaxVersion": "4.0", "OData-Version": "4.0"}
        if prefer:
            headers["Prefer"] = ",".join(prefer)
        return headers

    def _object(self, response: requests.Response) -> dict[str, Any]:
        body = parse_json(response, service=self.service)
        if not isinstance(body, dict):
            raise ResponseFormatError(
                message="Expected a JSON object from Dataverse.",
                status=response.status_code,
                service=self.service,
                url=redacted_url(response.url or ""),
            )
        return body

    def _batch_body(self, items: Sequence[BatchOperation | ChangeSet], boundary: str) -> bytes:
        lines: list[str] = []
        for item in items:
            lines.append(f"--{boundary}")
            if isinstance(item, ChangeSet):
                changeset = f"changeset_{uuid.uuid4().hex}"
                lines += [f"Content-Type: multipart/mixed; boundary={changeset}", ""]
                for operation in item.operations:
                    lines.append(f"--{changeset}")
                    lines += self._http_part(operation)
                lines += [f"--{changeset}--", ""]
            else:
                lines += self._http_part(item)
        lines += [f"--{boundary}--", ""]
        return _CRLF.join(lines).encode("utf-8")

    def _http_part(self, operation: BatchOperation) -> list[str]:
        lines = ["Content-Type: application/http", "Content-Transfer-Encoding: binary"]
        if operation.content_id:
            lines.append(f"Content-ID: {operation.content_id}")
        target = operation.path if operation.path.startswith("$") else self.base_url + operation.path.lstrip("/")
        lines += ["", f"{operation.method.upper()} {target} HTTP/1.1", "Accept: application/json"]
        lines += [f"{name}: {value}" for name, value in operation.headers.items()]
        if operation.body is None:
            return [*lines, "", ""]
        payload = json.dumps(operation.body, separators=(",", ":"), ensure_ascii=False)
        lines += [
            "Content-Type: application/json; type=entry",
            f"Content-Length: {len(payload.encode('utf-8'))}",
            "",
            payload,
        ]
        return lines

    def _match(
        self, items: Sequence[BatchOperation | ChangeSet], answers: list[_Answer | list[_Answer]]
    ) -> list[BatchResult]:
        results: list[BatchResult] = []
        remaining = iter(answers)
        for item in items:
            answer = next(remaining, None)
            operations = item.operations if isinstance(item, ChangeSet) else (item,)
            if answer is None:
                results += [_not_run(operation) for operation in operations]
            elif isinstance(item, ChangeSet):
                results += self._change_set_results(item, answer if isinstance(answer, list) else [answer])
            elif isinstance(answer, list):
                raise ResponseFormatError(
                    message="The $batch answer has a change set where a single request was sent.", service=self.service
                )
            else:
                results.append(self._result(item, answer))
        return results

    def _change_set_results(self, change_set: ChangeSet, answers: list[_Answer]) -> list[BatchResult]:
        operations = change_set.operations
        if len(answers) == len(operations) and all(answer.status < 400 for answer in answers):
            by_id = {answer.content_id: answer for answer in answers if answer.content_id}
            return [
                self._result(operation, by_id.get(operation.content_id) or answers[index])
                for index, operation in enumerate(operations)
            ]
        # Atomic: nothing in the change set applied. The failing operation carries the error;
        # the others say they were rolled back because of it.
        failure = next((answer for answer in answers if answer.status >= 400), answers[-1] if answers else None)
        if failure is None:
            raise ResponseFormatError(message="The $batch answer has an empty change set.", service=self.service)
        failing = next((op for op in operations if op.content_id == failure.content_id), operations[0])
        failed = self._result(failing, failure).error
        results = []
        for operation in operations:
            if failure.content_id is None or operation.content_id == failure.content_id:
                results.append(self._result(operation, failure))
            else:
                results.append(
                    BatchResult(
                        operation=operation,
                        status=None,
                        headers={},
                        body=None,
                        error=M365Error(
                            message=f"Rolled back: operation {failure.content_id} of the same change set failed "
                            f"({failed}).",
                            code="rolled_back",
                            service=self.service,
                            method=operation.method,
                        ),
                    )
                )
        return results

    def _result(self, operation: BatchOperation, answer: _Answer) -> BatchResult:
        body = answer.body()
        error = None
        if answer.status >= 400:
            error = error_from_status(
                status=answer.status,
                headers=answer.headers,
                body=body,
                text=answer.text,
                reason=answer.reason,
                service=self.service,
                method=operation.method.upper(),
                url=self.base_url + operation.path.split("?")[0],
            )
        return BatchResult(operation=operation, status=answer.status, headers=answer.headers, body=body, error=error)


def _not_run(operation: BatchOperation) -> BatchResult:
    return BatchResult(
        operation=operation,
        status=None,
        headers={},
        body=None,
        error=M365Error(
            message="Not run: an earlier request in the batch failed.",
            code="not_run",
            service="dataverse",
            method=operation.method,
        ),
    )


def _assign_content_ids(items: Sequence[BatchOperation | ChangeSet]) -> list[BatchOperation | ChangeSet]:
    """Every change set operation needs a Content-ID unique in the batch; fill in the missing ones."""
    taken = {
        operation.content_id
        for item in items
        for operation in (item.operations if isinstance(item, ChangeSet) else (item,))
        if operation.content_id
    }
    fresh = (str(n) for n in itertools.count(1) if str(n) not in taken)
    prepared: list[BatchOperation | ChangeSet] = []
    for item in items:
        if isinstance(item, ChangeSet):
            prepared.append(
                ChangeSet(
                    operation if operation.content_id else replace(operation, content_id=next(fresh))
                    for operation in item.operations
                )
            )
        else:
            prepared.append(item)
    return prepared


def _is_multipart(response: requests.Response) -> bool:
    # Without continue-on-error a failing request makes the whole $batch answer with its
    # status (e.g. 400), but the body is still the multipart answer with every part.
    return response.headers.get("Content-Type", "").lower().startswith("multipart/mixed")


def _parse_multipart(content: bytes, content_type: str) -> list[_Answer | list[_Answer]]:
    match = _BOUNDARY.search(content_type)
    if match is None:
        raise ResponseFormatError(message="The $batch answer is not multipart/mixed.", service="dataverse")
    answers: list[_Answer | list[_Answer]] = []
    for part in _split_parts(content, match.group(1)):
        headers, payload = _split_head(part)
        part_type = headers.get("Content-Type", "")
        if part_type.lower().startswith("multipart/mixed"):
            inner = _BOUNDARY.search(part_type)
            if inner is None:
                raise ResponseFormatError(message="A change set answer has no boundary.", service="dataverse")
            answers.append(
                [_parse_http(*_split_head(inner_part)) for inner_part in _split_parts(payload, inner.group(1))]
            )
        else:
            answers.append(_parse_http(headers, payload))
    return answers


def _split_parts(content: bytes, boundary: str) -> list[bytes]:
    delimiter = b"--" + boundary.encode("ascii")
    parts: list[bytes] = []
    for segment in content.split(delimiter)[1:]:
        if segment.startswith(b"--"):
            break
        if segment.startswith(b"\r\n"):
            segment = segment[2:]
        elif segment.startswith(b"\n"):
            segment = segment[1:]
        # The line break before the next delimiter belongs to the delimiter.
        if segment.endswith(b"\r\n"):
            segment = segment[:-2]
        elif segment.endswith(b"\n"):
            segment = segment[:-1]
        parts.append(segment)
    return parts


def _partition_head(payload: bytes) -> tuple[str, bytes]:
    """Split at the first blank line: the header block (text) and what follows it."""
    for separator in (b"\r\n\r\n", b"\n\n"):
        head, found, rest = payload.partition(separator)
        if found:
            return head.decode("utf-8", "replace"), rest
    return payload.decode("utf-8", "replace"), b""


def _header_lines(text: str) -> CaseInsensitiveDict:
    headers: CaseInsensitiveDict = CaseInsensitiveDict()
    for line in text.splitlines():
        name, colon, value = line.partition(":")
        if colon:
            headers[name.strip()] = value.strip()
    return headers


def _split_head(part: bytes) -> tuple[CaseInsensitiveDict, bytes]:
    head, rest = _partition_head(part)
    return _header_lines(head), rest


def _parse_http(part_headers: CaseInsensitiveDict, payload: bytes) -> _Answer:
    head, body = _partition_head(payload)
    status_line, _, header_text = head.partition("\n")
    match = _STATUS_LINE.match(status_line.strip())
    if match is None:
        raise ResponseFormatError(
            message=f"A $batch part does not start with an HTTP status line: {status_line[:80]!r}.", service="dataverse"
        )
    return _Answer(
        status=int(match.group(1)),
        reason=match.group(2).strip(),
        headers=_header_lines(header_text),
        text=body.decode("utf-8", "replace").strip(),
        content_id=part_headers.get("Content-ID"),
    )


# --- the pool ---------------------------------------------------------------------------------


def _policy_application_users() -> list[str]:
    # Imported here: the policy's models need the app registry, which this module must not.
    from portal.policy.selectors import policy_application_users

    return policy_application_users()


class DataverseClientPool:
    """One client per application registration; :meth:`client` picks the one with most room.

    Each registration is its own application user with its own service protection budget, so
    spreading work over them multiplies throughput instead of queueing behind one user's limits.
    Only the registrations the portal's policy allows (``application_users``; empty: all) are picked.
    """

    def __init__(
        self,
        config: M365Config,
        *,
        session: requests.Session | None = None,
        budget: RateBudget | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        allowed_names: Callable[[], Iterable[str]] | None = None,
    ) -> None:
        if not config.registrations:
            raise ImproperlyConfigured("Environment variable M365_CLIENT_ID is required to reach Dataverse.")
        self.clients: tuple[DataverseClient, ...] = tuple(
            DataverseClient(config, registration, session=session, budget=budget, sleep=sleep, clock=clock)
            for registration in config.registrations
        )
        self._turn = itertools.count()
        self._clock = clock
        self._allowed_names = allowed_names or _policy_application_users
        self._allowed: tuple[DataverseClient, ...] = self.clients
        self._allowed_until: float | None = None

    def _allowed_clients(self) -> tuple[DataverseClient, ...]:
        """The clients the policy allows, read at most every ``APPLICATION_USERS_CACHE_SECONDS``."""
        now = self._clock()
        if self._allowed_until is not None and now < self._allowed_until:
            return self._allowed
        try:
            names = set(self._allowed_names())
        except DatabaseError as exc:
            # Unreadable policy (database unreachable, not migrated yet) must not stop Microsoft 365 work.
            logger.warning("Could not read the policy's application users, so every one is used (%r)", exc)
            names = set()
        allowed = tuple(client for client in self.clients if client.registration.name in names)
        if names and not allowed:
            logger.warning(
                "The policy allows application users %s, none of them configured; every configured one is used",
                ", ".join(sorted(names)),
            )
        self._allowed = allowed or self.clients
        self._allowed_until = now + APPLICATION_USERS_CACHE_SECONDS
        return self._allowed

    def client(self) -> DataverseClient:
        """The allowed client whose application user has the most room right now (ties take turns).

        When every one is blocked by a 429, the one whose block ends first.
        """
        if len(self.clients) == 1:
            return self.clients[0]
        clients = self._allowed_clients()
        if len(clients) == 1:
            return clients[0]
        standings = [(client, client.standing()) for client in clients]
        best = max((room, -blocked_for) for _, (room, blocked_for) in standings)
        candidates = [client for client, (room, blocked_for) in standings if (room, -blocked_for) == best]
        return candidates[next(self._turn) % len(candidates)]
