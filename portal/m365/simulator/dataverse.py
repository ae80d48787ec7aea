"""The Dataverse Web API surface of the simulator (``/api/data/v9.2/``).

Requests arrive already authenticated and admitted by the server; this module answers them as
Dataverse does on the wire: the same URLs, status codes, headers (``OData-EntityId``, ``ETag``
checks, ``Preference-Applied``), error bodies and paging. It also plays the platform's
asynchronous part: a mailbox PATCHed with ``testemailconfigurationscheduled: true`` is tested
after a configurable delay, and the outcome lands in the mailbox's status columns and, on
failure, in a ``tracelogs`` alert that is updated rather than duplicated when it recurs; and it
records the email server-side sync tracks (``emails`` with their ``activitymimeattachments``).

Side effects that must not happen when a ``$batch`` change set is rolled back (scheduling a
test) are queued in an ``after_commit`` list and run only once the change is kept.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, unquote

from . import batch, odata, tables
from .core import SimRequest, SimResponse, Simulator, Store, utcnow
from .tables import DataverseError, EntitySet

API_ROOT = "/api/data/v9.2/"

FORMATTED_VALUE = "OData.Community.Display.V1.FormattedValue"
LOOKUP_LOGICAL_NAME = "Microsoft.Dynamics.CRM.lookuplogicalname"
ASSOCIATED_NAVIGATION = "Microsoft.Dynamics.CRM.associatednavigationproperty"
TOTAL_RECORD_COUNT = "Microsoft.Dynamics.CRM.totalrecordcount"
TOTAL_RECORD_COUNT_EXCEEDED = "Microsoft.Dynamics.CRM.totalrecordcountlimitexceeded"

CODE_SEGMENT_NOT_FOUND = "0x8006088a"
CODE_PRECONDITION_FAILED = "0x80060882"
CODE_PRIVILEGE_DENIED = "0x80040220"
CODE_PAYLOAD = "0x80048d19"
CODE_QUERY = "0x80060888"
CODE_UNSUPPORTED = "0x80040800"

EMPTY_GUID = "00000000-0000-0000-0000-000000000000"
APPROVAL_SETS = ("mailboxes", "queues", "systemusers")

# Trace codes of the Test & Enable alerts (31 is the code the seed uses for a mailbox Exchange cannot find).
TRACECODE_MAILBOX_NOT_IN_EXCHANGE_ONLINE = 31
TRACECODE_ADDRESS_NOT_APPROVED = 32
TRACECODE_NO_SERVER_PROFILE = 33
# Warnings server-side sync raises while it runs; the codes are the simulator's own.
TRACECODE_ATTACHMENT_TOO_LARGE = 41
TRACECODE_EXCHANGE_THROTTLING = 42

TRACE_LEVEL_INFORMATION = 1
TRACE_LEVEL_WARNING = 2
TRACE_LEVEL_ERROR = 3

STATE_COMPLETED = 1
STATUS_SENT = 3
STATUS_RECEIVED = 4

AfterCommit = list[Callable[[], None]]

_KEY_SEGMENT = re.compile(r"(?P<name>[A-Za-z_$][\w.$]*)(?:\((?P<key>[^()]*)\))?")
_BIND_PATH = re.compile(r"(?:.*/)?(?P<set>[A-Za-z_]\w*)\((?P<id>[^()]+)\)/?")
_GUID = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")
_URL_SAFE = "$,'()*:/"

# The systemuser each caller's oid resolves to, so creates and WhoAmI do not scan every user.
_CALLER_CACHE: weakref.WeakKeyDictionary[Store, dict[str, str]] = weakref.WeakKeyDictionary()


# -- entry points ------------------------------------------------------------------------------


def handle(request: SimRequest, sim: Simulator) -> SimResponse:
    """Answer one Dataverse Web API request (the server has authenticated it already)."""
    after_commit: AfterCommit = []
    response = dispatch(request, sim, after_commit)
    for action in after_commit:
        action()
    return response


def dispatch(request: SimRequest, sim: Simulator, after_commit: AfterCommit, *, in_batch: bool = False) -> SimResponse:
    """Route a request and turn refusals into Dataverse's error body; used for ``$batch`` parts too."""
    try:
        response = _route(request, sim, after_commit, in_batch=in_batch)
    except DataverseError as error:
        response = SimResponse.odata_error(error.status, error.code, error.message, headers=error.headers)
    except odata.ODataQueryError as error:
        response = SimResponse.odata_error(error.status, error.code, error.message)
    response.headers.setdefault("OData-Version", "4.0")
    return response


@dataclass(frozen=True)
class Preferences:
    """The ``Prefer`` header as Dataverse reads it."""

    return_representation: bool = False
    max_page_size: int | None = None
    annotations: str | None = None

    @classmethod
    def parse(cls, request: SimRequest) -> Preferences:
        values = odata.parse_prefer(request.header("prefer"))
        page_size = None
        raw_size = values.get("odata.maxpagesize")
        if raw_size is not None:
            if not raw_size.isdigit() or int(raw_size) < 1:
                raise DataverseError(400, CODE_QUERY, f"The odata.maxpagesize preference '{raw_size}' is not valid.")
            page_size = int(raw_size)
        return cls(
            return_representation=values.get("return") == "representation",
            max_page_size=page_size,
            annotations=values.get("odata.include-annotations"),
        )

    def wants(self, term: str) -> bool:
        """Whether ``odata.include-annotations`` asks for ``term``.

        Patterns are ``*``, exact terms, ``Namespace.*``, and ``-term`` exclusions.
        """
        if not self.annotations:
            return False
        patterns = [pattern.strip() for pattern in self.annotations.split(",") if pattern.strip()]
        for pattern in patterns:
            if pattern.startswith("-") and _annotation_matches(pattern[1:], term):
                return False
        return any(not pattern.startswith("-") and _annotation_matches(pattern, term) for pattern in patterns)

    def applied(self, *, representation: bool = False, page_size: int | None = None) -> dict[str, str]:
        applied: list[str] = []
        if page_size is not None:
            applied.append(f"odata.maxpagesize={page_size}")
        if self.annotations:
            applied.append(f'odata.include-annotations="{self.annotations}"')
        if representation and self.return_representation:
            applied.append("return=representation")
        return {"Preference-Applied": ",".join(applied)} if applied else {}


def _annotation_matches(pattern: str, term: str) -> bool:
    if pattern == "*":
        return True
    if pattern.endswith(".*"):
        return term.startswith(pattern[:-1])
    return pattern == term


# -- routing -----------------------------------------------------------------------------------


def _segment_not_found(segment: str) -> DataverseError:
    return DataverseError(404, CODE_SEGMENT_NOT_FOUND, f"Resource not found for the segment '{segment}'.")


def _method_not_allowed(method: str) -> DataverseError:
    return DataverseError(405, CODE_QUERY, f"The requested resource does not support http method '{method}'.")


def _route(request: SimRequest, sim: Simulator, after_commit: AfterCommit, *, in_batch: bool) -> SimResponse:
    path = unquote(request.path)  # clients may percent-encode "$" and parentheses
    if not path.startswith(API_ROOT) and path.rstrip("/") != API_ROOT.rstrip("/"):
        first = next((part for part in path.split("/") if part), "")
        raise _segment_not_found(first)
    segments = [part for part in path[len(API_ROOT) :].split("/") if part] if path.startswith(API_ROOT) else []
    method = request.method.upper()
    if not segments:
        if method != "GET":
            raise _method_not_allowed(method)
        return _service_document(request)
    head = segments[0]
    if head in ("WhoAmI", "WhoAmI()"):
        if method != "GET" or len(segments) > 1:
            raise DataverseError(
                404, "", f"No HTTP resource was found that matches the request URI '{_api_url(request)}WhoAmI'."
            )
        return _who_am_i(request, sim)
    if head == "$batch":
        if in_batch:
            raise DataverseError(400, CODE_QUERY, "A batch request cannot contain another batch request.")
        if method != "POST" or len(segments) > 1:
            raise _method_not_allowed(method)
        return batch.execute_batch(
            request,
            sim.store,
            lambda inner, pending: dispatch(inner, sim, pending, in_batch=True),
        )
    match = _KEY_SEGMENT.fullmatch(head)
    if not match or match.group("name") not in tables.ENTITY_SETS:
        raise _segment_not_found(match.group("name") if match else head)
    schema = tables.ENTITY_SETS[match.group("name")]
    key = match.group("key")
    rest = segments[1:]
    if key is None:
        if not rest:
            if method == "GET":
                return _retrieve_multiple(request, sim, schema)
            if method == "POST":
                return _create(request, sim, schema, after_commit)
            raise _method_not_allowed(method)
        if rest == ["$count"] and method == "GET":
            return _count(request, sim, schema)
        raise _segment_not_found(rest[0])
    row_id = _parse_key(schema, key)
    if not rest:
        if method == "GET":
            return _retrieve(request, sim, schema, row_id)
        if method == "PATCH":
            return _update(request, sim, schema, row_id, after_commit)
        if method == "DELETE":
            return _delete(request, sim, schema, row_id)
        raise _method_not_allowed(method)
    return _property_request(request, sim, schema, row_id, rest, after_commit)


def _api_url(request: SimRequest) -> str:
    return f"{request.base_url}{API_ROOT}"


def _entity_url(request: SimRequest, schema: EntitySet, row_id: str) -> str:
    return f"{_api_url(request)}{schema.name}({row_id})"


def _parse_key(schema: EntitySet, key: str) -> str:
    value = key.strip()
    if "=" in value:
        name, _, value = value.partition("=")
        if name.strip() != schema.key:
            raise DataverseError(
                400, CODE_QUERY, f"'{name.strip()}' is not the key of '{schema.type_name}'; use '{schema.key}'."
            )
        value = value.strip()
    if not _GUID.fullmatch(value):
        raise DataverseError(400, CODE_QUERY, f"Unrecognized 'Edm.Guid' literal '{value}' in the key of {schema.name}.")
    return value.lower()


def _service_document(request: SimRequest) -> SimResponse:
    return SimResponse.json(
        200,
        {
            "@odata.context": f"{_api_url(request)}$metadata",
            "value": [{"name": name, "kind": "EntitySet", "url": name} for name in tables.ENTITY_SETS],
        },
    )


# -- reading -----------------------------------------------------------------------------------


def _query_target(store: Store, schema: EntitySet) -> odata.QueryTarget:
    """The table as the query engine sees it; lookups sort by the target's primary name, as Dataverse does."""
    sort_values: dict[str, Callable[[Any], Any]] = {}
    for column in schema.columns.values():
        if column.kind == "lookup":
            sort_values[column.name] = functools.partial(_lookup_sort_name, store, column.targets, {})
    return odata.QueryTarget(
        type_name=schema.logical_name, key=schema.key, kinds=schema.property_kinds(), sort_values=sort_values
    )


def _lookup_sort_name(store: Store, targets: tuple[str, ...], cache: dict[str, Any], value: str) -> Any:
    if value not in cache:
        name = None
        for target in targets:
            row = store.table(target).get(value)
            if row is not None:
                name = row.get(tables.ENTITY_SETS[target].primary_name)
                break
        cache[value] = name
    return cache[value]


def _context(request: SimRequest, schema: EntitySet, select: list[str] | None, *, entity: bool = False) -> str:
    columns = f"({','.join(select)})" if select else ""
    return f"{_api_url(request)}$metadata#{schema.name}{columns}{'/$entity' if entity else ''}"


def _etag(row: dict[str, Any]) -> str:
    return f'W/"{row.get("versionnumber")}"'


def _wire_row(
    store: Store, schema: EntitySet, row: dict[str, Any], select: list[str] | None, prefs: Preferences
) -> dict:
    """A row as the Web API returns it: ETag, the selected properties (always the key), annotations first."""
    formatted = prefs.wants(FORMATTED_VALUE)
    logical_names = prefs.wants(LOOKUP_LOGICAL_NAME)
    navigations = prefs.wants(ASSOCIATED_NAVIGATION)
    names = list(select) if select else schema.properties()
    if schema.key not in names:
        names.append(schema.key)
    out: dict[str, Any] = {"@odata.etag": _etag(row)}
    for name in names:
        column = schema.columns[name]
        value = row.get(name)
        if value is not None:
            if formatted:
                label = tables.formatted_value(store, schema, column, row)
                if label is not None:
                    out[f"{name}@{FORMATTED_VALUE}"] = label
            if column.kind == "lookup" and (navigations or logical_names):
                target = tables.lookup_target(schema, column, row)
                nav = tables.lookup_navigation(column, target)
                if navigations and nav:
                    out[f"{name}@{ASSOCIATED_NAVIGATION}"] = nav
                if logical_names and target is not None:
                    out[f"{name}@{LOOKUP_LOGICAL_NAME}"] = target.logical_name
        out[name] = value
    return out


def _retrieve_multiple(request: SimRequest, sim: Simulator, schema: EntitySet) -> SimResponse:
    store = sim.store
    prefs = Preferences.parse(request)
    target = _query_target(store, schema)
    query = odata.parse_query(request.query, target)
    page_size = odata.MAX_PAGE_SIZE
    applied_size = None
    if prefs.max_page_size is not None:
        # Dataverse ignores $top when odata.maxpagesize is also given, and page sizes above 5,000.
        query.top = None
        if prefs.max_page_size <= odata.MAX_PAGE_SIZE:
            page_size = applied_size = prefs.max_page_size
    with store.lock:
        rows = list(store.table(schema.name).values())
    page = odata.execute(rows, query, target, page_size=page_size)
    body: dict[str, Any] = {"@odata.context": _context(request, schema, query.select)}
    if query.count:
        body["@odata.count"] = page.count
    if prefs.wants(TOTAL_RECORD_COUNT):
        body[f"@{TOTAL_RECORD_COUNT}"] = min(page.total, odata.MAX_COUNT) if query.count else -1
    if prefs.wants(TOTAL_RECORD_COUNT_EXCEEDED):
        body[f"@{TOTAL_RECORD_COUNT_EXCEEDED}"] = query.count and page.total > odata.MAX_COUNT
    with store.lock:
        body["value"] = [_wire_row(store, schema, row, query.select, prefs) for row in page.rows]
    if page.next_skiptoken:
        body["@odata.nextLink"] = _next_link(request, schema, page.next_skiptoken)
    return SimResponse.json(200, body, headers=prefs.applied(page_size=applied_size))


def _next_link(request: SimRequest, schema: EntitySet, skiptoken: str) -> str:
    pairs = parse_qsl(request.raw_query, keep_blank_values=True) if request.raw_query else list(request.query.items())
    pairs = [(name, value) for name, value in pairs if name != "$skiptoken"]
    pairs.append(("$skiptoken", skiptoken))
    encoded = "&".join(f"{quote(name, safe='$')}={quote(value, safe=_URL_SAFE)}" for name, value in pairs)
    return f"{_api_url(request)}{schema.name}?{encoded}"


def _count(request: SimRequest, sim: Simulator, schema: EntitySet) -> SimResponse:
    target = _query_target(sim.store, schema)
    query = odata.parse_query({key: value for key, value in request.query.items() if key == "$filter"}, target)
    with sim.store.lock:
        rows = list(sim.store.table(schema.name).values())
    matched = sum(1 for row in rows if query.predicate is None or query.predicate(row) is True)
    return SimResponse(
        status=200, body=str(min(matched, odata.MAX_COUNT)).encode("ascii"), headers={"Content-Type": "text/plain"}
    )


def _select_for_single(request: SimRequest, schema: EntitySet, target: odata.QueryTarget) -> list[str] | None:
    for name in request.query:
        if name == "$expand":
            raise odata.ODataQueryError("The query option '$expand' is not supported by the simulator.")
    raw = request.query.get("$select")
    return (odata.parse_select(raw, target) or None) if raw is not None else None


def _retrieve(request: SimRequest, sim: Simulator, schema: EntitySet, row_id: str) -> SimResponse:
    store = sim.store
    prefs = Preferences.parse(request)
    select = _select_for_single(request, schema, _query_target(store, schema))
    with store.lock:
        row = store.table(schema.name).get(row_id)
        if row is None:
            raise schema.not_found(row_id)
        if_none_match = request.header("if-none-match").strip()
        if if_none_match and if_none_match != "null" and not prefs.annotations and _etag_matches(if_none_match, row):
            return SimResponse.empty(304, headers={"ETag": _etag(row)})
        body = {"@odata.context": _context(request, schema, select, entity=True)}
        body.update(_wire_row(store, schema, row, select, prefs))
        etag = _etag(row)
    return SimResponse.json(200, body, headers={"ETag": etag, **prefs.applied()})


def _etag_matches(header: str, row: dict[str, Any]) -> bool:
    current = str(row.get("versionnumber"))
    for tag in header.split(","):
        tag = tag.strip()
        if tag == "*":
            return True
        if tag.startswith("W/"):
            tag = tag[2:]
        if tag.strip('"') == current:
            return True
    return False


def _check_if_match(request: SimRequest, row: dict[str, Any]) -> None:
    header = request.header("if-match").strip()
    if header and not _etag_matches(header, row):
        raise DataverseError(
            412,
            CODE_PRECONDITION_FAILED,
            "The version of the existing record doesn't match the RowVersion property provided.",
        )


# -- writing -----------------------------------------------------------------------------------


def _json_object(request: SimRequest, schema: EntitySet) -> dict[str, Any]:
    """The request body as a JSON object, or Dataverse's payload error."""
    try:
        payload = request.json()
    except (UnicodeDecodeError, ValueError) as error:
        raise DataverseError(
            400,
            CODE_PAYLOAD,
            f"Error identified in Payload provided by the user for Entity :'{schema.name}'  ---->  "
            f"InnerException : Microsoft.OData.ODataException: The payload is not valid JSON ({error}).",
        ) from None
    if not isinstance(payload, dict):
        raise DataverseError(
            400,
            CODE_PAYLOAD,
            f"Error identified in Payload provided by the user for Entity :'{schema.name}'  ---->  "
            "InnerException : Microsoft.OData.ODataException: The payload must be a JSON object.",
        )
    return payload


def _parse_bind(store: Store, column: tables.Column, nav: str, value: Any) -> tuple[EntitySet, str]:
    """Resolve ``"/queues(<guid>)"`` (or an absolute URL to it) for a navigation property."""
    match = _BIND_PATH.fullmatch(value) if isinstance(value, str) else None
    if not match or not _GUID.fullmatch(match.group("id").strip()):
        raise DataverseError(
            400,
            CODE_PAYLOAD,
            f"The value of '{nav}@odata.bind' must be a reference such as '/entityset(guid)'; got {value!r}.",
        )
    entity_set = tables.BIND_ALIASES.get(match.group("set"), match.group("set"))
    allowed = column.navigations[nav]
    if entity_set not in allowed:
        raise DataverseError(
            400,
            CODE_PAYLOAD,
            f"The navigation property '{nav}' refers to {', '.join(allowed)}, not to '{match.group('set')}'.",
        )
    target = tables.ENTITY_SETS[entity_set]
    target_id = match.group("id").strip().lower()
    if target_id not in store.table(entity_set):
        raise DataverseError(400, tables.CODE_NOT_FOUND, f"{target.logical_name} With Id = {target_id} Does Not Exist")
    return target, target_id


def _check_writable(schema: EntitySet, column: tables.Column, *, creating: bool, shown_as: str | None = None) -> None:
    allowed = column.create if creating else column.update
    if not allowed:
        operation = "create" if creating else "update"
        raise DataverseError(
            400,
            tables.CODE_INVALID_ARGUMENT,
            f"The property '{shown_as or column.name}' of '{schema.type_name}' is read-only for {operation}: "
            f"Dataverse sets it and does not accept it in a {operation} request.",
        )


def _values_from_payload(
    store: Store, schema: EntitySet, payload: dict[str, Any], *, creating: bool, row_id: str | None = None
) -> dict[str, Any]:
    """Translate a Web API body into stored column values, refusing what Dataverse refuses."""
    values: dict[str, Any] = {}
    for key, value in payload.items():
        if key.startswith("@"):
            continue
        if key.endswith("@odata.bind"):
            nav = key[: -len("@odata.bind")]
            column = schema.navigation(nav)
            if column is None:
                raise DataverseError(
                    400,
                    CODE_PAYLOAD,
                    f"Error identified in Payload provided by the user for Entity :'{schema.name}'  ---->  "
                    f"InnerException : Microsoft.OData.ODataException: An undeclared property '{nav}' which only "
                    "has property annotations in the payload but no property value was found in the payload. In "
                    "OData, only declared navigation properties and declared named streams can be represented as "
                    "properties without values.",
                )
            _check_writable(schema, column, creating=creating, shown_as=nav)
            if value is None:
                values[column.name] = None
                if column.type_column:
                    values[column.type_column] = None
                continue
            target, target_id = _parse_bind(store, column, nav, value)
            values[column.name] = target_id
            if column.type_column:
                values[column.type_column] = target.logical_name
            continue
        if "@" in key:
            continue  # instance annotations (formatted values and the like) are not data
        column = schema.column(key)
        if column is None or column.hidden:
            if schema.navigation(key) is not None:
                raise DataverseError(
                    400,
                    CODE_PAYLOAD,
                    f"Setting '{key}' with a nested record is not supported by the simulator; "
                    f"bind an existing record with '{key}@odata.bind'.",
                )
            raise DataverseError(
                400,
                tables.CODE_INPUT,
                "An error occurred while validating input parameters: Microsoft.Crm.CrmException: "
                f"Invalid property '{key}' was found in entity '{schema.type_name}'.",
            )
        if column.kind == "lookup":
            raise DataverseError(
                400,
                CODE_QUERY,
                "CRM do not support direct update of Entity Reference properties, Use Navigation properties instead.",
            )
        if column.name == schema.key:
            key_value = tables.coerce(schema, column, value)
            if creating:
                values[column.name] = key_value
            elif key_value != row_id:
                raise DataverseError(400, tables.CODE_INVALID_ARGUMENT, f"The key '{schema.key}' cannot be changed.")
            continue
        _check_writable(schema, column, creating=creating)
        values[column.name] = tables.coerce(schema, column, value)
    return values


def _check_address_approval(request: SimRequest, sim: Simulator, schema: EntitySet, values: dict[str, Any]) -> None:
    """Approving an address needs a privilege the tenant may withhold (``deny_address_approval``)."""
    if schema.name not in APPROVAL_SETS or values.get("emailrouteraccessapproval") != 1:
        return
    if not sim.settings.get("deny_address_approval"):
        return
    caller = _caller_user_id(sim.store, request) or (request.principal.oid if request.principal else EMPTY_GUID)
    raise DataverseError(
        403,
        CODE_PRIVILEGE_DENIED,
        f"Principal user (Id={caller}, type=8) is missing prvApproveRejectEmailAddress privilege. Approving the "
        f'email address of a {schema.logical_name} needs the "Approve Email Addresses for Users or Queues" '
        "privilege; ask an administrator to grant it or to approve the address.",
    )


def _caller_user_id(store: Store, request: SimRequest) -> str | None:
    """The systemuser behind the token: the application user whose Entra object id is the token's ``oid``."""
    principal = request.principal
    if principal is None:
        return None
    users = store.table("systemusers")
    cache = _CALLER_CACHE.setdefault(store, {})
    cached = cache.get(principal.oid)
    if cached and users.get(cached, {}).get("azureactivedirectoryobjectid") == principal.oid:
        return cached
    for user_id, user in users.items():
        if user.get("azureactivedirectoryobjectid") == principal.oid:
            cache[principal.oid] = user_id
            return user_id
    return None


def _representation(
    request: SimRequest, sim: Simulator, schema: EntitySet, row: dict[str, Any], prefs: Preferences, status: int
) -> SimResponse:
    select = _select_for_single(request, schema, _query_target(sim.store, schema))
    with sim.store.lock:
        body = {"@odata.context": _context(request, schema, select, entity=True)}
        body.update(_wire_row(sim.store, schema, row, select, prefs))
    headers = {
        "OData-EntityId": _entity_url(request, schema, row[schema.key]),
        "ETag": _etag(row),
        **prefs.applied(representation=True),
    }
    return SimResponse.json(status, body, headers=headers, applied=True)


def _create(request: SimRequest, sim: Simulator, schema: EntitySet, after_commit: AfterCommit) -> SimResponse:
    if not schema.api_create:
        raise DataverseError(
            400, CODE_UNSUPPORTED, f"The 'Create' method does not support entities of type '{schema.logical_name}'."
        )
    prefs = Preferences.parse(request)
    payload = _json_object(request, schema)
    store = sim.store
    with store.lock:
        values = _values_from_payload(store, schema, payload, creating=True)
        _check_address_approval(request, sim, schema, values)
        if schema.column("_ownerid_value") is not None and "_ownerid_value" not in values:
            caller = _caller_user_id(store, request)
            if caller:
                values["_ownerid_value"] = caller
                values["owneridtype"] = "systemuser"
        row = tables.insert(store, schema.name, values)
    if schema.name == "mailboxes" and row.get("testemailconfigurationscheduled"):
        after_commit.append(functools.partial(schedule_test_and_enable, sim, row["mailboxid"]))
    if prefs.return_representation:
        return _representation(request, sim, schema, row, prefs, 201)
    return SimResponse.empty(
        204, headers={"OData-EntityId": _entity_url(request, schema, row[schema.key])}, applied=True
    )


def _update(
    request: SimRequest, sim: Simulator, schema: EntitySet, row_id: str, after_commit: AfterCommit
) -> SimResponse:
    prefs = Preferences.parse(request)
    payload = _json_object(request, schema)
    row = _apply_update(request, sim, schema, row_id, payload, after_commit)
    if prefs.return_representation:
        return _representation(request, sim, schema, row, prefs, 200)
    return SimResponse.empty(204, headers={"OData-EntityId": _entity_url(request, schema, row_id)}, applied=True)


def _apply_update(
    request: SimRequest,
    sim: Simulator,
    schema: EntitySet,
    row_id: str,
    payload: dict[str, Any],
    after_commit: AfterCommit,
) -> dict[str, Any]:
    """PATCH semantics shared by entity and property requests; no upsert (a missing row is 404)."""
    store = sim.store
    with store.lock:
        row = store.table(schema.name).get(row_id)
        if row is None:
            raise schema.not_found(row_id)
        _check_if_match(request, row)
        if request.header("if-none-match").strip() == "*":
            raise DataverseError(412, tables.CODE_DUPLICATE, "A record with matching key values already exists.")
        values = _values_from_payload(store, schema, payload, creating=False, row_id=row_id)
        _check_address_approval(request, sim, schema, values)
        updated = tables.update(store, schema.name, row_id, values)
    if schema.name == "mailboxes" and values.get("testemailconfigurationscheduled") is True:
        after_commit.append(functools.partial(schedule_test_and_enable, sim, row_id))
    return updated


def _delete(request: SimRequest, sim: Simulator, schema: EntitySet, row_id: str) -> SimResponse:
    if not schema.api_delete:
        raise DataverseError(
            400, CODE_UNSUPPORTED, f"The 'Delete' method does not support entities of type '{schema.logical_name}'."
        )
    store = sim.store
    with store.lock:
        row = store.table(schema.name).get(row_id)
        if row is None:
            raise schema.not_found(row_id)
        _check_if_match(request, row)
        tables.delete(store, schema.name, row_id)
    return SimResponse.empty(204, applied=True)


def _property_request(
    request: SimRequest,
    sim: Simulator,
    schema: EntitySet,
    row_id: str,
    rest: list[str],
    after_commit: AfterCommit,
) -> SimResponse:
    """``entityset(id)/property`` reads or writes one value; ``entityset(id)/nav/$ref`` sets or clears a lookup."""
    method = request.method.upper()
    name = rest[0]
    column = schema.column(name)
    if len(rest) == 1 and column is not None and not column.hidden:
        if method == "GET":
            with sim.store.lock:
                row = sim.store.table(schema.name).get(row_id)
                if row is None:
                    raise schema.not_found(row_id)
                value = row.get(name)
            if value is None:
                return SimResponse.empty(204)
            context = f"{_api_url(request)}$metadata#{schema.name}({row_id})/{name}"
            return SimResponse.json(200, {"@odata.context": context, "value": value})
        if method == "PUT":
            body = _json_object(request, schema)
            if "value" not in body:
                raise DataverseError(400, CODE_PAYLOAD, f"The body of a PUT to '{name}' must be {{\"value\": …}}.")
            _apply_update(request, sim, schema, row_id, {name: body["value"]}, after_commit)
            return SimResponse.empty(204, applied=True)
        if method == "DELETE":
            _apply_update(request, sim, schema, row_id, {name: None}, after_commit)
            return SimResponse.empty(204, applied=True)
        raise _method_not_allowed(method)
    lookup = schema.navigation(name)
    if lookup is not None and rest[1:] == ["$ref"]:
        if method == "PUT":
            body = _json_object(request, schema)
            reference = body.get("@odata.id")
            _apply_update(request, sim, schema, row_id, {f"{name}@odata.bind": reference}, after_commit)
            return SimResponse.empty(204, applied=True)
        if method == "DELETE":
            _apply_update(request, sim, schema, row_id, {f"{name}@odata.bind": None}, after_commit)
            return SimResponse.empty(204, applied=True)
        raise _method_not_allowed(method)
    raise _segment_not_found(rest[-1] if lookup is not None else name)


# -- WhoAmI ------------------------------------------------------------------------------------


def _who_am_i(request: SimRequest, sim: Simulator) -> SimResponse:
    """``UserId`` is the caller's systemuser (its application user) when one exists, else the token's ``oid``."""
    store = sim.store
    with store.lock:
        user_id = _caller_user_id(store, request)
        user = store.table("systemusers").get(user_id) if user_id else None
        root = tables.root_business_unit(store)
        business_unit = (user or {}).get("_businessunitid_value") or (root["businessunitid"] if root else EMPTY_GUID)
        organization = tables.organization_row(store)
    return SimResponse.json(
        200,
        {
            "@odata.context": f"{_api_url(request)}$metadata#Microsoft.Dynamics.CRM.WhoAmIResponse",
            "BusinessUnitId": business_unit,
            "UserId": user_id or (request.principal.oid if request.principal else EMPTY_GUID),
            "OrganizationId": organization["organizationid"] if organization else EMPTY_GUID,
        },
    )


# -- Test & Enable -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Alert:
    """An alert the platform writes to ``tracelogs`` about a mailbox or server profile (why a test failed, say)."""

    tracecode: int
    text: str
    errordetails: str | None = None
    level: int = TRACE_LEVEL_ERROR


def schedule_test_and_enable(sim: Simulator, mailbox_id: str) -> None:
    """Queue the platform's asynchronous mailbox test, honouring ``postponetestemailconfigurationuntil``."""
    delay = float(sim.settings.get("test_enable_delay_seconds", 2.0))
    with sim.store.lock:
        mailbox = sim.store.table("mailboxes").get(mailbox_id)
        postpone = mailbox.get("postponetestemailconfigurationuntil") if mailbox else None
    if postpone:
        wait = (tables.parse_datetime(postpone) - utcnow()).total_seconds()
        delay = max(delay, wait)
    sim.scheduler.call_later(delay, functools.partial(complete_test_and_enable, sim, mailbox_id))


def _tested_directions(mailbox: dict[str, Any]) -> list[tuple[str, str | None]]:
    """(status column, enabled column) for each direction that synchronises through server-side sync."""
    directions: list[tuple[str, str | None]] = []
    if mailbox.get("incomingemaildeliverymethod") == 2:
        directions.append(("incomingemailstatus", "enabledforincomingemail"))
    if mailbox.get("outgoingemaildeliverymethod") == 2:
        directions.append(("outgoingemailstatus", "enabledforoutgoingemail"))
    if mailbox.get("enabledforact") and mailbox.get("actdeliverymethod") == 1:
        directions.append(("actstatus", None))
    return directions


def diagnose_mailbox(store: Store, mailbox: dict[str, Any]) -> Alert | None:
    """The permanent failures the platform reports at once, in the order it checks them; None when the test passes."""
    name = mailbox.get("name") or mailbox.get("emailaddress") or mailbox.get("mailboxid")
    address = mailbox.get("emailaddress") or ""
    profile_id = mailbox.get("_emailserverprofile_value")
    if profile_id is None or profile_id not in store.table("emailserverprofiles"):
        return Alert(
            TRACECODE_NO_SERVER_PROFILE,
            f"The mailbox {name} can't be tested because no email server profile is associated with it. Associate "
            "the mailbox with an email server profile, and then test and enable the mailbox.",
            "No email server profile is associated with the mailbox.",
        )
    organization = tables.organization_row(store) or {}
    owner_kind = mailbox.get("regardingobjecttypecode")
    setting = "requireapprovalforqueueemail" if owner_kind == "queue" else "requireapprovalforuseremail"
    if organization.get(setting, True) and mailbox.get("emailrouteraccessapproval") != 1:
        return Alert(
            TRACECODE_ADDRESS_NOT_APPROVED,
            f"Email can't be received or sent for the mailbox {name} because the email address of the mailbox "
            f"{address} isn't approved. The mailbox has been disabled for synchronizing appointments, contacts, "
            "and tasks, and for sending and receiving email. To fix the problem, approve the email address of the "
            "mailbox, and then test and enable the mailbox.",
            f"The email address {address} has not been approved (emailrouteraccessapproval is not Approved).",
        )
    wanted = address.casefold()
    graph_user = None
    if wanted:
        for user in store.table("graph_users").values():
            if wanted in ((user.get("mail") or "").casefold(), (user.get("userPrincipalName") or "").casefold()):
                graph_user = user
                break
    if graph_user is None or graph_user.get("mailbox_location") != "exchange_online":
        reason = (
            "MailboxNotEnabledForRESTAPI: The mailbox is either inactive, soft-deleted, or is hosted on-premise."
            if graph_user is not None
            else f"ErrorNonExistentMailbox: The SMTP address {address} has no mailbox associated with it."
        )
        return Alert(
            TRACECODE_MAILBOX_NOT_IN_EXCHANGE_ONLINE,
            f"The mailbox {name} can't be accessed. The email address {address} was not found in Exchange Online: "
            "the mailbox may be inactive, soft-deleted or hosted on-premises. Make sure the mailbox is hosted in "
            "Exchange Online and the server profile is correct, and then test and enable the mailbox.",
            reason,
        )
    return None


def complete_test_and_enable(sim: Simulator, mailbox_id: str) -> None:
    """Finish a scheduled test: success enables the tested directions; failure marks them and raises an alert."""
    store = sim.store
    with store.lock:
        mailbox = store.table("mailboxes").get(mailbox_id)
        if mailbox is None or not mailbox.get("testemailconfigurationscheduled"):
            return  # deleted meanwhile, or the schedule was withdrawn
        now = utcnow()
        failure = diagnose_mailbox(store, mailbox)
        directions = _tested_directions(mailbox)
        changes: dict[str, Any] = {"testemailconfigurationscheduled": False}
        if failure is None:
            for status, enabled in directions:
                changes[status] = 1
                if enabled:
                    changes[enabled] = True
            changes["mailboxstatus"] = 1
            changes["testmailboxaccesscompletedon"] = now
        else:
            for status, _ in directions:
                changes[status] = 2
            changes["mailboxstatus"] = 2
        tables.update(store, "mailboxes", mailbox_id, changes, now=now)
        if failure is not None:
            raise_alert(store, mailbox_id, failure, now=now)


def raise_alert(store: Store, regarding_id: str, alert: Alert, *, now: dt.datetime | None = None) -> dict[str, Any]:
    """Write an alert about a mailbox or server profile; a recurring alert updates its existing record.

    An alert recurs when one with the same subject and trace code exists: its level, text and
    details are rewritten and ``modifiedon`` moves forward, so readers polling
    ``modifiedon gt <last seen>`` see it again. Raises :class:`DataverseError` (404) when
    ``regarding_id`` is neither a mailbox nor a server profile.
    """
    regarding_id = regarding_id.lower()
    moment = now or utcnow()
    with store.lock:
        subject = _alert_subject(store, regarding_id)
        details = {"level": alert.level, "text": alert.text, "errordetails": alert.errordetails}
        for trace in store.table("tracelogs").values():
            if trace.get("_regardingobjectid_value") == regarding_id and trace.get("tracecode") == alert.tracecode:
                later = _strictly_after(trace.get("modifiedon"), moment)
                return tables.update(store, "tracelogs", trace["tracelogid"], details, now=later)
        return tables.insert(
            store,
            "tracelogs",
            {
                **details,
                "tracecode": alert.tracecode,
                "tracestatus": False,
                "_regardingobjectid_value": regarding_id,
                "regardingobjecttypecode": subject.logical_name,
            },
            now=moment,
        )


def _alert_subject(store: Store, regarding_id: str) -> EntitySet:
    """The table the alert is about: whichever of the tracelog lookup's targets holds the id."""
    for entity_set in tables.TRACELOGS.columns["_regardingobjectid_value"].targets:
        if regarding_id in store.table(entity_set):
            return tables.ENTITY_SETS[entity_set]
    raise DataverseError(
        404, tables.CODE_NOT_FOUND, f"mailbox or emailserverprofile With Id = {regarding_id} Does Not Exist"
    )


def _strictly_after(previous: str | None, moment: dt.datetime) -> dt.datetime:
    """``moment``, or one second after ``previous`` when a recurrence lands in the same (whole) second.

    Dataverse stamps whole seconds; without this a recurrence a moment after the first alert
    would keep its ``modifiedon`` and be invisible to an incremental reader.
    """
    if previous is None:
        return moment
    floor = tables.parse_datetime(previous) + dt.timedelta(seconds=1)
    return max(moment, floor)


# -- tracked email -----------------------------------------------------------------------------

# What tracked email looks like; only the shape matters (the portal never reads bodies).
EMAIL_SUBJECTS = (
    "Enquiry about my application",
    "Change of address",
    "Request for information",
    "Invoice query",
    "Meeting follow-up",
    "Complaint about service",
    "Appointment request",
    "Documents attached",
    "Payment confirmation",
    "Question about eligibility",
    "Update on your case",
    "Feedback on the website",
)
CORRESPONDENTS = (
    "j.morgan@example.com",
    "accounts@supplier.example.co.uk",
    "sarah.lewis@example.org",
    "info@partner.example.gov.uk",
    "m.khan@example.net",
    "casework@council.example.gov.uk",
)
ATTACHMENT_KINDS = (
    ("Scanned letter", "pdf", "application/pdf"),
    ("Photo", "jpg", "image/jpeg"),
    ("Invoice", "pdf", "application/pdf"),
    ("Budget", "xlsx", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
    ("Report", "docx", "application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
    ("Screenshot", "png", "image/png"),
)


def record_emails(
    store: Store,
    mailbox_id: str,
    *,
    outgoing: bool,
    moments: Sequence[dt.datetime],
    attachments: Sequence[Sequence[int]] = (),
) -> tuple[list[str], list[str]]:
    """Record email that server-side sync tracked for a mailbox, with its attachments; returns their ids.

    One completed email per moment (its ``createdon`` and ``modifiedon``): received into the
    mailbox, or sent from it, and regarding the mailbox's queue or user when it has one.
    ``attachments[i]`` lists the sizes in bytes of email ``i``'s attachments, which share its
    moment. Raises :class:`DataverseError` (404) for an unknown mailbox.
    """
    with store.lock:
        mailbox = store.table("mailboxes").get(mailbox_id.lower())
        if mailbox is None:
            raise tables.MAILBOXES.not_found(mailbox_id)
        shared = _email_columns(mailbox, outgoing=outgoing)
        first = len(store.table("emails"))
        email_ids: list[str] = []
        attachment_ids: list[str] = []
        for index, moment in enumerate(moments):
            number = first + index
            subject = EMAIL_SUBJECTS[number % len(EMAIL_SUBJECTS)]
            correspondent = CORRESPONDENTS[number % len(CORRESPONDENTS)]
            parties = (
                {"sender": shared["torecipients"], "torecipients": correspondent}
                if outgoing
                else {"sender": correspondent, "torecipients": shared["torecipients"]}
            )
            email = tables.insert(
                store,
                "emails",
                {**shared, **parties, "subject": f"RE: {subject}" if outgoing else subject},
                now=moment,
            )
            email_ids.append(email["activityid"])
            sizes = attachments[index] if index < len(attachments) else ()
            for position, size in enumerate(sizes):
                attachment = _attach(store, email["activityid"], size, number + position, moment)
                attachment_ids.append(attachment["activitymimeattachmentid"])
        return email_ids, attachment_ids


def _email_columns(mailbox: dict[str, Any], *, outgoing: bool) -> dict[str, Any]:
    """The columns every email a mailbox sends (or receives) shares; ``torecipients`` holds its address."""
    owner_kind = mailbox.get("regardingobjecttypecode")
    owner_id = mailbox.get("_regardingobjectid_value") if owner_kind in ("queue", "systemuser") else None
    return {
        "directioncode": outgoing,
        "statecode": STATE_COMPLETED,
        "statuscode": STATUS_SENT if outgoing else STATUS_RECEIVED,
        "_sendermailboxid_value" if outgoing else "_receivingmailboxid_value": mailbox["mailboxid"],
        "_regardingobjectid_value": owner_id,
        "regardingobjecttypecode": owner_kind if owner_id else None,
        "_ownerid_value": mailbox.get("_ownerid_value"),
        "owneridtype": mailbox.get("owneridtype"),
        "torecipients": mailbox.get("emailaddress"),
    }


def _attach(store: Store, email_id: str, size: int, number: int, moment: dt.datetime) -> dict[str, Any]:
    stem, extension, mimetype = ATTACHMENT_KINDS[number % len(ATTACHMENT_KINDS)]
    return tables.insert(
        store,
        "activitymimeattachments",
        {
            "filename": f"{stem} {number + 1}.{extension}",
            "mimetype": mimetype,
            "filesize": size,
            "_objectid_value": email_id,
            "objecttypecode": "email",
        },
        now=moment,
    )
