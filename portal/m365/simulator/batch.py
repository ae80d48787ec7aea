"""``$batch`` for the simulated Dataverse Web API: ``multipart/mixed`` in, ``multipart/mixed`` out.

The format is OData 4.0's (section 11.7) as Dataverse documents it: one ``application/http``
part per request, change sets as nested ``multipart/mixed`` parts with their own boundary,
``Content-ID`` headers that later requests in the same change set refer to as ``$1``. Each
inner request goes through the same Dataverse handler as a lone request.

A change set is atomic: it runs under the store lock on top of a snapshot of every table, and
any failure restores the snapshot, so none of its changes stay; its answer is then the single
failing response. Work that must only follow a kept change (scheduling a mailbox test) runs
after the change set commits. Without ``Prefer: odata.continue-on-error`` the batch stops at
the first failure and answers with that failure's status, as Dataverse does.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import parse_qsl, urlsplit

from . import odata
from .core import SimRequest, SimResponse, Store

MAX_OPERATIONS = 1000
API_ROOT = "/api/data/v9.2/"
CRLF = "\r\n"
CODE_BATCH = "0x80048d19"
CODE_REFERENCE = "0x0"

AfterCommit = list[Callable[[], None]]
Dispatch = Callable[[SimRequest, AfterCommit], SimResponse]

_REFERENCE = re.compile(r"\$(?P<id>[\w-]+)(?P<rest>/.*)?")


class BatchFormatError(Exception):
    """The ``$batch`` body cannot be processed at all; answered as one 400."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ContentIdError(Exception):
    """A ``$n`` reference names no earlier request of the same change set."""

    def __init__(self, reference: str) -> None:
        self.message = f"Content-ID Reference: '${reference}' does not exist in the batch context."
        super().__init__(self.message)


@dataclass
class Operation:
    """One request inside a batch."""

    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)  # lower-cased names
    body: bytes = b""
    content_id: str | None = None


@dataclass
class ChangeSet:
    operations: list[Operation]


BatchItem = Operation | ChangeSet


@dataclass
class PartResponse:
    response: SimResponse
    content_id: str | None = None


@dataclass
class ChangeSetResponse:
    parts: list[PartResponse]


# -- parsing -----------------------------------------------------------------------------------


def content_type_boundary(content_type: str) -> str | None:
    """The ``boundary`` parameter of a ``multipart/mixed`` content type (quoted or not)."""
    media_type, *parameters = content_type.split(";")
    if media_type.strip().lower() != "multipart/mixed":
        return None
    for parameter in parameters:
        name, _, value = parameter.strip().partition("=")
        if name.strip().lower() == "boundary" and value.strip():
            return value.strip().strip('"')
    return None


def _split_parts(lines: list[str], boundary: str) -> list[list[str]]:
    """The lines of each part between ``--boundary`` delimiters; the closing ``--boundary--`` is required."""
    delimiter = f"--{boundary}"
    parts: list[list[str]] = []
    current: list[str] | None = None
    for line in lines:
        stripped = line.rstrip()
        if stripped == delimiter:
            if current is not None:
                parts.append(current)
            current = []
        elif stripped == f"{delimiter}--":
            if current is not None:
                parts.append(current)
            return parts
        elif current is not None:
            current.append(line)
    raise BatchFormatError(f"The multipart body does not end with the closing delimiter '{delimiter}--'.")


def _split_headers(lines: list[str]) -> tuple[dict[str, str], list[str]]:
    """Header lines up to the first blank line (lower-cased names), and the lines after it."""
    headers: dict[str, str] = {}
    for index, line in enumerate(lines):
        if not line.strip():
            return headers, lines[index + 1 :]
        name, separator, value = line.partition(":")
        if not separator:
            raise BatchFormatError(f"'{line.strip()}' is not a valid header line in a batch part.")
        headers[name.strip().lower()] = value.strip()
    return headers, []


def _parse_operation(part_headers: dict[str, str], lines: list[str]) -> Operation:
    content_type = part_headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/http":
        raise BatchFormatError(
            f"A batch part must have Content-Type application/http or multipart/mixed, not '{content_type}'."
        )
    while lines and not lines[0].strip():
        lines = lines[1:]
    if not lines:
        raise BatchFormatError("A batch part has no request line.")
    request_line = lines[0].split()
    if len(request_line) < 2:
        raise BatchFormatError(f"'{lines[0].strip()}' is not a valid request line.")
    method, url = request_line[0].upper(), request_line[1]
    headers, body_lines = _split_headers(lines[1:])
    body = "\n".join(body_lines).strip()
    content_id = part_headers.get("content-id") or headers.get("content-id")
    return Operation(method=method, url=url, headers=headers, body=body.encode("utf-8"), content_id=content_id)


def parse_batch(content_type: str, body: bytes) -> list[BatchItem]:
    """Parse a ``$batch`` request body into operations and change sets.

    Accepts CRLF or bare LF line endings. Refuses (with :class:`BatchFormatError`) a missing
    boundary, nested change sets, a GET inside a change set and more than 1,000 requests.
    """
    boundary = content_type_boundary(content_type)
    if boundary is None:
        raise BatchFormatError("The $batch request must have Content-Type multipart/mixed with a boundary.")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BatchFormatError("The $batch body is not valid UTF-8.") from None
    items: list[BatchItem] = []
    count = 0
    for part in _split_parts(re.split(r"\r?\n", text), boundary):
        part_headers, content = _split_headers(part)
        change_set_boundary = content_type_boundary(part_headers.get("content-type", ""))
        if change_set_boundary is None:
            items.append(_parse_operation(part_headers, content))
            count += 1
            continue
        operations: list[Operation] = []
        for inner in _split_parts(content, change_set_boundary):
            inner_headers, inner_content = _split_headers(inner)
            if content_type_boundary(inner_headers.get("content-type", "")) is not None:
                raise BatchFormatError("A change set cannot contain another change set.")
            operation = _parse_operation(inner_headers, inner_content)
            if operation.method == "GET":
                raise BatchFormatError("GET requests are not allowed in a change set; send them outside change sets.")
            operations.append(operation)
        count += len(operations)
        items.append(ChangeSet(operations))
    if count > MAX_OPERATIONS:
        raise BatchFormatError(
            f"The batch contains {count} requests; a batch can contain at most {MAX_OPERATIONS} requests."
        )
    return items


# -- building ----------------------------------------------------------------------------------


def _http_message(response: SimResponse) -> str:
    try:
        reason = HTTPStatus(response.status).phrase
    except ValueError:
        reason = ""
    lines = [f"HTTP/1.1 {response.status} {reason}".rstrip()]
    lines.extend(f"{name}: {value}" for name, value in response.headers.items())
    return CRLF.join(lines) + CRLF + CRLF + response.body.decode("utf-8")


def _application_http_part(part: PartResponse) -> str:
    headers = ["Content-Type: application/http", "Content-Transfer-Encoding: binary"]
    if part.content_id:
        headers.append(f"Content-ID: {part.content_id}")
    return CRLF.join(headers) + CRLF + CRLF + _http_message(part.response) + CRLF


def build_batch_response(results: list[PartResponse | ChangeSetResponse]) -> tuple[str, bytes]:
    """Serialise batch results; returns (content type, body). Change sets nest their own boundary."""
    boundary = f"batchresponse_{uuid.uuid4()}"
    chunks: list[str] = []
    for result in results:
        chunks.append(f"--{boundary}{CRLF}")
        if isinstance(result, PartResponse):
            chunks.append(_application_http_part(result))
            continue
        inner = f"changesetresponse_{uuid.uuid4()}"
        chunks.append(f"Content-Type: multipart/mixed; boundary={inner}{CRLF}{CRLF}")
        for part in result.parts:
            chunks.append(f"--{inner}{CRLF}")
            chunks.append(_application_http_part(part))
        chunks.append(f"--{inner}--{CRLF}")
    chunks.append(f"--{boundary}--{CRLF}")
    return f"multipart/mixed; boundary={boundary}", "".join(chunks).encode("utf-8")


# -- executing ---------------------------------------------------------------------------------


def _resolve_url(url: str, references: dict[str, str]) -> str:
    match = _REFERENCE.fullmatch(url.split("?")[0]) if url.startswith("$") else None
    if not match:
        return url
    reference = match.group("id")
    if reference not in references:
        raise ContentIdError(reference)
    query = url[len(url.split("?")[0]) :]
    return references[reference] + (match.group("rest") or "") + query


def _resolve_body(body: bytes, references: dict[str, str]) -> bytes:
    """Replace ``"$n"`` in ``…@odata.bind`` and ``@odata.id`` values with the URL of request n's record."""
    if b"$" not in body:
        return body
    try:
        payload = json.loads(body)
    except ValueError:
        return body
    if not isinstance(payload, dict):
        return body
    changed = False
    for key, value in payload.items():
        if (key.endswith("@odata.bind") or key == "@odata.id") and isinstance(value, str):
            match = _REFERENCE.fullmatch(value)
            if match:
                if match.group("id") not in references:
                    raise ContentIdError(match.group("id"))
                payload[key] = references[match.group("id")] + (match.group("rest") or "")
                changed = True
    return json.dumps(payload).encode("utf-8") if changed else body


def _inner_request(outer: SimRequest, operation: Operation, references: dict[str, str]) -> SimRequest:
    """Turn one batch part into a request as the handler would receive it on its own."""
    url = _resolve_url(operation.url, references)
    body = _resolve_body(operation.body, references)
    parts = urlsplit(url)
    path = parts.path
    if API_ROOT in path:
        path = path[path.index(API_ROOT) :]
    elif path.startswith(API_ROOT[1:]):
        path = "/" + path
    elif not path.startswith("/"):
        path = API_ROOT + path
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    return SimRequest(
        method=operation.method,
        path=path,
        query=dict(pairs),
        raw_query=parts.query,
        headers=dict(operation.headers),
        body=body,
        base_url=outer.base_url,
        principal=outer.principal,
    )


def _reference_failure(error: ContentIdError) -> SimResponse:
    response = SimResponse.odata_error(400, CODE_REFERENCE, error.message)
    response.headers.setdefault("OData-Version", "4.0")
    return response


def _with_request_id(response: SimResponse) -> SimResponse:
    """Inner answers carry ``REQ_ID`` and, for creates, ``Location`` beside ``OData-EntityId``, as Dataverse's do."""
    response.headers.setdefault("REQ_ID", str(uuid.uuid4()))
    if "OData-EntityId" in response.headers and response.status == 204:
        response.headers.setdefault("Location", response.headers["OData-EntityId"])
    return response


def _restore(store: Store, snapshot: dict[str, dict[str, dict]]) -> None:
    """Put every table back as it was (rows are replaced on update, so shallow copies suffice)."""
    for name, rows in store.tables.items():
        rows.clear()
        rows.update(snapshot.get(name, {}))
    store.touch()


def _run_change_set(
    outer: SimRequest, store: Store, dispatch: Dispatch, change_set: ChangeSet
) -> tuple[PartResponse | ChangeSetResponse, bool]:
    """Run a change set all-or-nothing; returns its result and whether it failed."""
    after_commit: AfterCommit = []
    parts: list[PartResponse] = []
    references: dict[str, str] = {}
    with store.lock:
        snapshot = {name: dict(rows) for name, rows in store.tables.items()}
        try:
            for operation in change_set.operations:
                try:
                    inner = _inner_request(outer, operation, references)
                except ContentIdError as error:
                    response = _reference_failure(error)
                else:
                    response = _with_request_id(dispatch(inner, after_commit))
                if response.status >= 400:
                    _restore(store, snapshot)
                    response.applied = False
                    return PartResponse(response, operation.content_id), True
                parts.append(PartResponse(response, operation.content_id))
                entity = response.headers.get("OData-EntityId")
                if operation.content_id and entity:
                    references[operation.content_id] = entity
        except BaseException:
            _restore(store, snapshot)
            raise
    for action in after_commit:
        action()
    return ChangeSetResponse(parts), False


def execute_batch(request: SimRequest, store: Store, dispatch: Dispatch) -> SimResponse:
    """Answer ``POST $batch``: run each request or change set in order and return the multipart answer."""
    try:
        items = parse_batch(request.header("content-type"), request.body)
    except BatchFormatError as error:
        return SimResponse.odata_error(400, CODE_BATCH, error.message)
    continue_on_error = "odata.continue-on-error" in odata.parse_prefer(request.header("prefer"))
    results: list[PartResponse | ChangeSetResponse] = []
    status = 200
    applied = False
    for item in items:
        if isinstance(item, ChangeSet):
            result, failed = _run_change_set(request, store, dispatch, item)
            if isinstance(result, ChangeSetResponse):
                failure_status = 200
                applied = applied or any(part.response.applied for part in result.parts)
            else:
                failure_status = result.response.status
        else:
            after_commit: AfterCommit = []
            try:
                inner = _inner_request(request, item, {})
            except ContentIdError as error:
                response = _reference_failure(error)
            else:
                response = _with_request_id(dispatch(inner, after_commit))
            for action in after_commit:
                action()
            result = PartResponse(response, item.content_id)
            failed = response.status >= 400
            failure_status = response.status
            applied = applied or response.applied
        results.append(result)
        if failed and not continue_on_error:
            status = failure_status
            break
    content_type, body = build_batch_response(results)
    headers = {"Content-Type": content_type, "OData-Version": "4.0"}
    if continue_on_error:
        headers["Preference-Applied"] = "odata.continue-on-error"
    return SimResponse(status=status, body=body, headers=headers, applied=applied)
