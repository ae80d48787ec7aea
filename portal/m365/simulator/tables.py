"""The simulated Dataverse tables: their columns, and the row operations every surface shares.

Rows are plain dicts keyed by the names the Web API uses on the wire (``mailboxid``,
``emailaddress``, ``_emailserverprofile_value``), so what is stored is what a GET returns.
The schema says, per column, its type, its choice labels, and whether the Web API accepts it
on create and on update (Microsoft's ``IsValidForCreate`` / ``IsValidForUpdate``), so the
Dataverse handler can refuse what the real service refuses. The seed, the control endpoints
and the Dataverse handler all write through :func:`insert`, :func:`update` and :func:`delete`,
which keep the platform's own side effects consistent: a queue or user gets its mailbox, the
mailbox follows its owner's address, approval and delivery methods.

Updates replace a row's dict instead of mutating it, so a shallow copy of a table is a
consistent snapshot (``$batch`` change sets roll back by restoring one).
"""

from __future__ import annotations

import datetime as dt
import functools
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .core import Store, new_guid, odata_timestamp, utcnow

ColumnKind = Literal[
    "string", "memo", "int", "bigint", "decimal", "bool", "datetime", "guid", "choice", "lookup", "entityname"
]

EDM_TYPES: dict[str, str] = {
    "string": "Edm.String",
    "memo": "Edm.String",
    "int": "Edm.Int32",
    "bigint": "Edm.Int64",
    "decimal": "Edm.Decimal",
    "bool": "Edm.Boolean",
    "datetime": "Edm.DateTimeOffset",
    "guid": "Edm.Guid",
    "choice": "Edm.Int32",
    "lookup": "Edm.Guid",
    "entityname": "Edm.String",
}

# Dataverse error codes the row operations answer with.
CODE_NOT_FOUND = "0x80040217"
CODE_DUPLICATE = "0x80040237"
CODE_VALIDATION = "0x80044331"
CODE_INVALID_ARGUMENT = "0x80040203"
CODE_INPUT = "0x0"

YES_NO = {True: "Yes", False: "No"}
ACTIVE_INACTIVE = {0: "Active", 1: "Inactive"}
STATUS_ACTIVE_INACTIVE = {1: "Active", 2: "Inactive"}
EMAIL_ADDRESS_APPROVAL = {0: "Empty", 1: "Approved", 2: "Pending Approval", 3: "Rejected"}
TEST_STATUS = {0: "Not Run", 1: "Success", 2: "Failure"}
INCOMING_DELIVERY = {
    0: "None",
    1: "Microsoft Dynamics 365 for Outlook",
    2: "Server-Side Synchronization or Email Router",
    3: "Forward Mailbox",
}
OUTGOING_DELIVERY = {
    0: "None",
    1: "Microsoft Dynamics 365 for Outlook",
    2: "Server-Side Synchronization or Email Router",
}
# Numbered differently from the email delivery methods, exactly as Dataverse does.
ACT_DELIVERY = {0: "Microsoft Dynamics 365 for Outlook", 1: "Server-Side Synchronization", 2: "None"}
EMAIL_FILTERING = {
    0: "All email messages",
    1: "Email messages in response to Dynamics 365 email",
    2: "Email messages from Dynamics 365 Leads, Contacts and Accounts",
    3: "Email messages from Dynamics 365 records that are email enabled",
    4: "No email messages",
}
CREDENTIAL_RETRIEVAL = {
    0: "Credentials Specified by a User or Queue",
    1: "Credentials Specified in Email Server Profile",
    2: "Server to Server Authentication",
    3: "Windows Integrated Authentication",
    4: "Without Credentials (Anonymous)",
    5: "Gmail OAuth",
    6: "Exchange Hybrid Modern Auth (HMA)",
    7: "OAuth with Microsoft Entra ID",
}

# Columns a mailbox shares with the queue or user it belongs to; Dataverse keeps them in step.
OWNER_SYNCED_COLUMNS = ("emailrouteraccessapproval", "incomingemaildeliverymethod", "outgoingemaildeliverymethod")
MAILBOX_OWNER_SETS = ("queues", "systemusers")


class DataverseError(Exception):
    """A request or row operation Dataverse refuses, with the HTTP status, error code and message it answers."""

    def __init__(self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


@dataclass(frozen=True)
class Column:
    """One column as the Web API sees it.

    ``name`` is both the stored key and the Web API property (lookups read as ``_x_value``).
    ``create``/``update`` mirror Microsoft's metadata so the handler can refuse writes the real
    service refuses; the row operations themselves accept every column (the platform writes them).
    A lookup lists its navigation properties and the entity sets each may point at; a lookup that
    can point at several tables records the target's logical name in ``type_column``.
    """

    name: str
    kind: ColumnKind
    labels: Mapping[Any, str] = field(default_factory=dict)
    create: bool = True
    update: bool = True
    default: Any = None
    max_length: int | None = None
    navigations: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    type_column: str | None = None
    hidden: bool = False

    @property
    def attribute(self) -> str:
        """The logical attribute name: ``_emailserverprofile_value`` is the ``emailserverprofile`` lookup."""
        if self.kind == "lookup":
            return self.name[1 : -len("_value")]
        return self.name

    @property
    def edm_type(self) -> str:
        return EDM_TYPES[self.kind]

    @functools.cached_property
    def targets(self) -> tuple[str, ...]:
        """Every entity set this lookup may point at."""
        seen: list[str] = []
        for sets in self.navigations.values():
            seen.extend(name for name in sets if name not in seen)
        return tuple(seen)


class EntitySet:
    """A table: its entity set and logical names, primary key and name, and columns."""

    def __init__(
        self,
        name: str,
        logical_name: str,
        key: str,
        primary_name: str,
        columns: Iterable[Column],
        *,
        api_create: bool = True,
        api_delete: bool = True,
    ) -> None:
        self.name = name
        self.logical_name = logical_name
        self.key = key
        self.primary_name = primary_name
        self.columns: dict[str, Column] = {}
        for column in columns:
            if column.name in self.columns:
                raise ValueError(f"{name}: column {column.name} is declared twice")
            self.columns[column.name] = column
        self.api_create = api_create
        self.api_delete = api_delete
        self._navigations = {nav: column for column in self.columns.values() for nav in column.navigations}
        self.typed_lookups = tuple(
            column for column in self.columns.values() if column.kind == "lookup" and column.type_column
        )

    @property
    def type_name(self) -> str:
        return f"Microsoft.Dynamics.CRM.{self.logical_name}"

    def column(self, name: str) -> Column | None:
        return self.columns.get(name)

    def navigation(self, nav: str) -> Column | None:
        """The lookup column a single-valued navigation property sets (``emailserverprofile`` → its column)."""
        return self._navigations.get(nav)

    def properties(self) -> list[str]:
        """The Web API properties, in schema order (hidden bookkeeping columns excluded)."""
        return [name for name, column in self.columns.items() if not column.hidden]

    def property_kinds(self) -> dict[str, str]:
        return {name: column.kind for name, column in self.columns.items() if not column.hidden}

    def not_found(self, row_id: str) -> DataverseError:
        return DataverseError(404, CODE_NOT_FOUND, f"{self.logical_name} With Id = {row_id} Does Not Exist")


# -- schema ------------------------------------------------------------------------------------


def _key(name: str) -> Column:
    return Column(name, "guid", update=False)


def _audit() -> tuple[Column, ...]:
    return (
        Column("createdon", "datetime", create=False, update=False),
        Column("modifiedon", "datetime", create=False, update=False),
        Column("versionnumber", "bigint", create=False, update=False),
    )


def _state(default_status: int = 1) -> tuple[Column, ...]:
    return (
        Column("statecode", "choice", ACTIVE_INACTIVE, create=False, default=0),
        Column("statuscode", "choice", STATUS_ACTIVE_INACTIVE, default=default_status),
    )


def _owner() -> tuple[Column, ...]:
    return (
        Column(
            "_ownerid_value", "lookup", navigations={"ownerid": ("systemusers", "teams")}, type_column="owneridtype"
        ),
        Column("owneridtype", "entityname", hidden=True),
    )


def _lookup(attribute: str, navigations: Mapping[str, tuple[str, ...]], **options: Any) -> Column:
    return Column(f"_{attribute}_value", "lookup", navigations=dict(navigations), **options)


MAILBOXES = EntitySet(
    "mailboxes",
    "mailbox",
    "mailboxid",
    "name",
    (
        _key("mailboxid"),
        Column("name", "string", max_length=200),
        Column("emailaddress", "string", max_length=100),
        _lookup("emailserverprofile", {"emailserverprofile": ("emailserverprofiles",)}),
        Column("incomingemaildeliverymethod", "choice", INCOMING_DELIVERY, default=0),
        Column("outgoingemaildeliverymethod", "choice", OUTGOING_DELIVERY, default=0),
        Column("actdeliverymethod", "choice", ACT_DELIVERY, default=2),
        Column("emailrouteraccessapproval", "choice", EMAIL_ADDRESS_APPROVAL, default=0),
        Column("isemailaddressapprovedbyo365admin", "bool", YES_NO, create=False, default=False),
        # Microsoft's metadata: not valid for create, valid for update (the platform writes them after a test).
        Column("incomingemailstatus", "choice", TEST_STATUS, create=False, default=0),
        Column("outgoingemailstatus", "choice", TEST_STATUS, create=False, default=0),
        Column("actstatus", "choice", TEST_STATUS, create=False, default=0),
        Column("mailboxstatus", "choice", TEST_STATUS, create=False, update=False, default=0),
        Column("enabledforincomingemail", "bool", YES_NO, create=False, default=True),
        Column("enabledforoutgoingemail", "bool", YES_NO, create=False, default=True),
        Column("enabledforact", "bool", YES_NO, create=False, default=True),
        Column("testemailconfigurationscheduled", "bool", YES_NO, default=False),
        Column("postponetestemailconfigurationuntil", "datetime"),
        Column("testemailconfigurationretrycount", "int", default=0),
        Column("testmailboxaccesscompletedon", "datetime", create=False),
        Column("allowemailconnectortousecredentials", "bool", YES_NO, default=False),
        Column("processemailreceivedafter", "datetime"),
        Column("isforwardmailbox", "bool", YES_NO, create=False, update=False, default=False),
        _lookup(
            "regardingobjectid",
            {"regardingobjectid_queue": ("queues",), "regardingobjectid": ("systemusers",)},
            create=False,
            update=False,
            type_column="regardingobjecttypecode",
        ),
        Column("regardingobjecttypecode", "entityname", create=False, update=False, hidden=True),
        *_owner(),
        _lookup("owningbusinessunit", {"owningbusinessunit": ("businessunits",)}, create=False, update=False),
        *_state(),
        *_audit(),
    ),
)

QUEUES = EntitySet(
    "queues",
    "queue",
    "queueid",
    "name",
    (
        _key("queueid"),
        Column("name", "string", max_length=200),
        Column("description", "memo", max_length=2000),
        Column("emailaddress", "string", max_length=100),
        Column("emailrouteraccessapproval", "choice", EMAIL_ADDRESS_APPROVAL, create=False, default=0),
        Column("isemailaddressapprovedbyo365admin", "bool", YES_NO, create=False, update=False, default=False),
        Column(
            "incomingemaildeliverymethod",
            "choice",
            {0: "None", 2: "Server-Side Synchronization or Email Router", 3: "Forward Mailbox"},
            default=2,
        ),
        Column(
            "outgoingemaildeliverymethod",
            "choice",
            {0: "None", 2: "Server-Side Synchronization or Email Router"},
            default=2,
        ),
        Column("incomingemailfilteringmethod", "choice", EMAIL_FILTERING, default=0),
        Column("queueviewtype", "choice", {0: "Public", 1: "Private"}, default=0),
        Column("queuetypecode", "choice", {1: "Default Value"}, create=False, update=False, default=1),
        Column(
            "ignoreunsolicitedemail",
            "bool",
            {True: "Only specific Emails", False: "All incoming Emails"},
            default=False,
        ),
        _lookup("defaultmailbox", {"defaultmailbox": ("mailboxes",)}, create=False, update=False),
        *_owner(),
        _lookup("businessunitid", {"businessunitid": ("businessunits",)}),
        *_state(),
        *_audit(),
    ),
)

SYSTEMUSERS = EntitySet(
    "systemusers",
    "systemuser",
    "systemuserid",
    "fullname",
    (
        _key("systemuserid"),
        Column("firstname", "string", max_length=256),
        Column("lastname", "string", max_length=256),
        Column("fullname", "string", create=False, update=False, max_length=200),
        Column("domainname", "string", max_length=1024),
        Column("internalemailaddress", "string", max_length=100),
        Column("title", "string", max_length=128),
        Column("isdisabled", "bool", {True: "Disabled", False: "Enabled"}, default=False),
        Column("islicensed", "bool", YES_NO, default=True),
        Column("azureactivedirectoryobjectid", "guid"),
        Column("applicationid", "guid"),
        Column(
            "accessmode",
            "choice",
            {
                0: "Read-Write",
                1: "Administrative",
                2: "Read",
                3: "Support User",
                4: "Non-interactive",
                5: "Delegated Admin",
            },
            default=0,
        ),
        Column("emailrouteraccessapproval", "choice", EMAIL_ADDRESS_APPROVAL, create=False, default=0),
        Column("isemailaddressapprovedbyo365admin", "bool", YES_NO, create=False, update=False, default=False),
        Column("incomingemaildeliverymethod", "choice", INCOMING_DELIVERY, default=2),
        Column("outgoingemaildeliverymethod", "choice", OUTGOING_DELIVERY, default=2),
        _lookup("defaultmailbox", {"defaultmailbox": ("mailboxes",)}, create=False, update=False),
        _lookup("businessunitid", {"businessunitid": ("businessunits",)}),
        *_audit(),
    ),
    api_delete=False,
)

# A user's personal options, one row per user keyed by the user's id (Dataverse creates it with the
# user and removes it with them). The email tracking option defaults to "from Dynamics 365 leads,
# contacts and accounts" for users.
USERSETTINGS = EntitySet(
    "usersettingscollection",
    "usersettings",
    "systemuserid",
    "systemuserid",
    (
        _key("systemuserid"),
        Column("incomingemailfilteringmethod", "choice", EMAIL_FILTERING, default=2),
        Column("timezonecode", "int", default=85),
        Column("uilanguageid", "int", default=1033),
        Column("paginglimit", "int", default=50),
        _lookup("businessunitid", {"businessunitid": ("businessunits",)}, create=False, update=False),
        Column("createdon", "datetime", create=False, update=False),
        Column("modifiedon", "datetime", create=False, update=False),
        Column("versionnumber", "bigint", create=False, update=False),
    ),
    api_create=False,
    api_delete=False,
)

EMAILSERVERPROFILES = EntitySet(
    "emailserverprofiles",
    "emailserverprofile",
    "emailserverprofileid",
    "name",
    (
        _key("emailserverprofileid"),
        Column("name", "string", max_length=100),
        Column("description", "memo", max_length=2000),
        Column(
            "servertype",
            "choice",
            {
                0: "Exchange Server",
                1: "Other (POP3/SMTP)",
                2: "Exchange Server (Hybrid)",
                3: "Exchange Online (Hybrid)",
                4: "IMAP/SMTP",
            },
            default=0,
        ),
        Column("incomingcredentialretrieval", "choice", CREDENTIAL_RETRIEVAL, default=0),
        Column("outgoingcredentialretrieval", "choice", CREDENTIAL_RETRIEVAL, default=0),
        Column("incomingserverlocation", "string", max_length=2048),
        Column("outgoingserverlocation", "string", max_length=2048),
        Column("useautodiscover", "bool", YES_NO, default=True),
        Column("sendemailalert", "bool", YES_NO, default=False),
        *_owner(),
        *_state(),
        *_audit(),
    ),
)

ORGANIZATIONS = EntitySet(
    "organizations",
    "organization",
    "organizationid",
    "name",
    (
        _key("organizationid"),
        Column("name", "string", update=False, max_length=160),
        _lookup("defaultemailserverprofileid", {"defaultemailserverprofileid": ("emailserverprofiles",)}),
        Column(
            "emailconnectionchannel",
            "choice",
            {0: "Server-Side Synchronization", 1: "Microsoft Dynamics 365 Email Router"},
            default=0,
        ),
        Column("requireapprovalforuseremail", "bool", YES_NO, default=True),
        Column("requireapprovalforqueueemail", "bool", YES_NO, default=True),
        Column("maxuploadfilesize", "int", default=5_242_880),
        *_audit(),
    ),
    api_create=False,
    api_delete=False,
)

TRACELOGS = EntitySet(
    "tracelogs",
    "tracelog",
    "tracelogid",
    "text",
    (
        _key("tracelogid"),
        Column("level", "choice", {1: "Information", 2: "Warning", 3: "Error"}, update=False, default=1),
        Column("tracecode", "int", update=False, default=0),
        Column("text", "string", update=False, max_length=2000),
        Column("errordetails", "string", max_length=2048),
        Column("machinename", "string", max_length=320),
        Column("tracestatus", "bool", {True: "Success", False: "Failure"}, update=False, default=False),
        _lookup(
            "regardingobjectid",
            {
                "regardingobjectid_mailbox": ("mailboxes",),
                "regardingobjectid_emailserverprofile": ("emailserverprofiles",),
            },
            update=False,
            type_column="regardingobjecttypecode",
        ),
        Column("regardingobjecttypecode", "entityname", update=False, hidden=True),
        *_audit(),
    ),
)

BUSINESSUNITS = EntitySet(
    "businessunits",
    "businessunit",
    "businessunitid",
    "name",
    (
        _key("businessunitid"),
        Column("name", "string", max_length=160),
        _lookup("parentbusinessunitid", {"parentbusinessunitid": ("businessunits",)}),
        Column("isdisabled", "bool", YES_NO, create=False, default=False),
        *_audit(),
    ),
)

TEAMS = EntitySet(
    "teams",
    "team",
    "teamid",
    "name",
    (
        _key("teamid"),
        Column("name", "string", max_length=160),
        Column("description", "memo", max_length=2000),
        Column("teamtype", "choice", {0: "Owner", 1: "Access", 2: "Security Group", 3: "Office Group"}, default=0),
        Column("azureactivedirectoryobjectid", "guid"),
        _lookup("businessunitid", {"businessunitid": ("businessunits",)}),
        *_audit(),
    ),
)

EMAILS = EntitySet(
    "emails",
    "email",
    "activityid",
    "subject",
    (
        _key("activityid"),
        Column("subject", "string", max_length=800),
        Column("sender", "string", max_length=250),
        Column("torecipients", "string", max_length=500),
        Column("directioncode", "bool", {True: "Outgoing", False: "Incoming"}, default=True),
        Column("messageid", "string", max_length=320),
        _lookup("sendermailboxid", {"sendermailboxid": ("mailboxes",)}),
        _lookup("receivingmailboxid", {"receivingmailboxid": ("mailboxes",)}),
        _lookup(
            "regardingobjectid",
            {"regardingobjectid_queue": ("queues",), "regardingobjectid_systemuser": ("systemusers",)},
            type_column="regardingobjecttypecode",
        ),
        Column("regardingobjecttypecode", "entityname", hidden=True),
        *_owner(),
        Column("statecode", "choice", {0: "Open", 1: "Completed", 2: "Canceled"}, create=False, default=0),
        Column(
            "statuscode",
            "choice",
            {
                1: "Draft",
                2: "Completed",
                3: "Sent",
                4: "Received",
                5: "Canceled",
                6: "Pending Send",
                7: "Sending",
                8: "Failed",
            },
            default=1,
        ),
        *_audit(),
    ),
)

ACTIVITYMIMEATTACHMENTS = EntitySet(
    "activitymimeattachments",
    "activitymimeattachment",
    "activitymimeattachmentid",
    "filename",
    (
        _key("activitymimeattachmentid"),
        Column("filename", "string", max_length=255),
        Column("filesize", "int", create=False, update=False, default=0),
        Column("mimetype", "string", max_length=256),
        Column("subject", "string", max_length=2000),
        _lookup(
            "objectid",
            {"objectid_activitypointer": ("emails",)},
            type_column="objecttypecode",
        ),
        Column("objecttypecode", "entityname", hidden=True),
        *_audit(),
    ),
)

ENTITY_SETS: dict[str, EntitySet] = {
    schema.name: schema
    for schema in (
        MAILBOXES,
        QUEUES,
        SYSTEMUSERS,
        USERSETTINGS,
        EMAILSERVERPROFILES,
        ORGANIZATIONS,
        TRACELOGS,
        BUSINESSUNITS,
        TEAMS,
        EMAILS,
        ACTIVITYMIMEATTACHMENTS,
    )
}
LOGICAL_NAMES: dict[str, EntitySet] = {schema.logical_name: schema for schema in ENTITY_SETS.values()}
# Entity sets a bind may name for a table it is stored in here (activities live in ``emails``).
BIND_ALIASES: dict[str, str] = {"activitypointers": "emails"}


def schema_for(entity_set: str) -> EntitySet:
    try:
        return ENTITY_SETS[entity_set]
    except KeyError:
        raise KeyError(f"{entity_set!r} is not a simulated Dataverse entity set") from None


# -- values ------------------------------------------------------------------------------------


_CANONICAL_GUID = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")


def parse_datetime(value: str) -> dt.datetime:
    """Parse an ISO 8601 date or date-time as Dataverse accepts it; naive values are taken as UTC."""
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    parsed = dt.datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed


def _literal(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _type_error(column: Column, value: Any) -> DataverseError:
    return DataverseError(
        400,
        CODE_INPUT,
        "An error occurred while validating input parameters: Microsoft.OData.ODataException: "
        f"Cannot convert the literal '{_literal(value)}' to the expected type '{column.edm_type}'.",
    )


def coerce(schema: EntitySet, column: Column, value: Any) -> Any:
    """Check ``value`` against the column's type and return it in stored form.

    Date-times are stored as Dataverse writes them (``2026-11-26T18:37:25Z``) and GUIDs in lower
    case, so rows stay JSON-serialisable and compare consistently. Raises :class:`DataverseError`
    with the message the Web API gives for the same mistake.
    """
    if value is None:
        if column.name == schema.key:
            raise DataverseError(400, CODE_INVALID_ARGUMENT, f"The primary key '{schema.key}' cannot be null.")
        return None
    kind = column.kind
    if kind in ("string", "memo", "entityname"):
        if not isinstance(value, str):
            raise _type_error(column, value)
        if column.max_length is not None and len(value) > column.max_length:
            raise DataverseError(
                400,
                CODE_VALIDATION,
                f"A validation error occurred.  The length of the '{column.attribute}' attribute of the "
                f"'{schema.logical_name}' entity exceeded the maximum allowed length of '{column.max_length}'.",
            )
        return value
    if kind in ("int", "bigint", "choice"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise _type_error(column, value)
        if kind == "choice" and value not in column.labels:
            accepted = ",".join(str(option) for option in column.labels)
            raise DataverseError(
                400,
                CODE_VALIDATION,
                f"A validation error occurred. The value {value} of '{column.attribute}' on record of type "
                f"'{schema.logical_name}' is outside the valid range. Accepted Values: {accepted}",
            )
        return value
    if kind == "decimal":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _type_error(column, value)
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise _type_error(column, value)
        return value
    if kind == "datetime":
        if isinstance(value, dt.datetime):
            moment = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
            return odata_timestamp(moment)
        if not isinstance(value, str):
            raise _type_error(column, value)
        try:
            return odata_timestamp(parse_datetime(value))
        except ValueError:
            raise _type_error(column, value) from None
    if kind in ("guid", "lookup"):
        if not isinstance(value, str):
            raise _type_error(column, value)
        if _CANONICAL_GUID.fullmatch(value):
            return value.lower()
        try:
            return str(uuid.UUID(value))
        except ValueError:
            raise _type_error(column, value) from None
    raise AssertionError(f"unhandled column kind {kind}")


def _coerce_values(schema: EntitySet, values: Mapping[str, Any]) -> dict[str, Any]:
    coerced: dict[str, Any] = {}
    for name, value in values.items():
        column = schema.column(name)
        if column is None:
            raise DataverseError(
                400,
                CODE_INPUT,
                f"'{name}' is not a column of the simulated '{schema.logical_name}' table ({schema.name}).",
            )
        coerced[name] = coerce(schema, column, value)
    return coerced


# -- reading -----------------------------------------------------------------------------------


def lookup_target(schema: EntitySet, column: Column, row: Mapping[str, Any]) -> EntitySet | None:
    """The table a lookup value points at: from its type column, else its only possible target."""
    if column.type_column:
        logical = row.get(column.type_column)
        if logical in LOGICAL_NAMES:
            return LOGICAL_NAMES[logical]
    targets = column.targets
    if len(targets) == 1:
        return ENTITY_SETS[targets[0]]
    return None


def lookup_navigation(column: Column, target: EntitySet | None) -> str | None:
    """The navigation property that reaches ``target`` through this lookup."""
    for nav, sets in column.navigations.items():
        if target is not None and target.name in sets:
            return nav
    return None


def primary_name_of(store: Store, target: EntitySet, row_id: str) -> str | None:
    row = store.table(target.name).get(row_id)
    if row is None:
        return None
    value = row.get(target.primary_name)
    return None if value is None else str(value)


def formatted_value(store: Store, schema: EntitySet, column: Column, row: Mapping[str, Any]) -> str | None:
    """What Dataverse puts in ``…@OData.Community.Display.V1.FormattedValue`` for this column.

    Choices and booleans give their label; lookups give the target's primary name; other
    columns have no formatted value here.
    """
    value = row.get(column.name)
    if value is None:
        return None
    if column.kind in ("choice", "bool"):
        return column.labels.get(value)
    if column.kind == "lookup":
        target = lookup_target(schema, column, row)
        return primary_name_of(store, target, value) if target else None
    return None


def find_row(store: Store, entity_set: str, row_id: str) -> dict[str, Any] | None:
    return store.table(entity_set).get(row_id.lower())


def organization_row(store: Store) -> dict[str, Any] | None:
    """The organisation's settings row (Dataverse has exactly one)."""
    for row in store.table("organizations").values():
        return row
    return None


def root_business_unit(store: Store) -> dict[str, Any] | None:
    for row in store.table("businessunits").values():
        if row.get("_parentbusinessunitid_value") is None:
            return row
    return None


# -- writing -----------------------------------------------------------------------------------


def _stamp(now: dt.datetime | None) -> str:
    return _formatted_moment(now) if now is not None else odata_timestamp(utcnow())


@functools.lru_cache(maxsize=64)
def _formatted_moment(moment: dt.datetime) -> str:
    """Seeds stamp thousands of rows with one moment; format it once."""
    return odata_timestamp(moment)


def _infer_type_columns(store: Store, schema: EntitySet, row: dict[str, Any]) -> None:
    """Fill a multi-target lookup's type column from whichever target table holds the id."""
    for column in schema.typed_lookups:
        value = row.get(column.name)
        if value is None:
            row[column.type_column] = None
            continue
        current = row.get(column.type_column)
        if current in LOGICAL_NAMES and LOGICAL_NAMES[current].name in column.targets:
            continue
        for target in column.targets:
            if value in store.table(target):
                row[column.type_column] = ENTITY_SETS[target].logical_name
                break


def insert(store: Store, entity_set: str, values: dict[str, Any], *, now: dt.datetime | None = None) -> dict[str, Any]:
    """Create a row as a Web API POST would, with the platform's side effects.

    Defaults fill unspecified columns; a new id is made unless ``values`` has the key; the row
    gets ``versionnumber``, ``createdon`` and ``modifiedon``. Creating a queue or a user creates
    its mailbox (unless ``values`` already names one in ``_defaultmailbox_value``). Returns the
    stored row. Raises :class:`DataverseError` for unknown columns, bad values or a duplicate id.
    """
    schema = schema_for(entity_set)
    with store.lock:
        coerced = _coerce_values(schema, values)
        stamp = _stamp(now)
        row: dict[str, Any] = {name: column.default for name, column in schema.columns.items()}
        row["createdon"] = stamp
        row["modifiedon"] = stamp
        if schema.name == "mailboxes" and "isforwardmailbox" not in coerced:
            # Only forward mailboxes are created directly; the others come with their user or queue.
            row["isforwardmailbox"] = coerced.get("_regardingobjectid_value") is None
        row.update(coerced)
        row["versionnumber"] = store.next_version()
        row_id = row.get(schema.key) or new_guid()
        row[schema.key] = row_id
        table = store.table(schema.name)
        if row_id in table:
            raise DataverseError(412, CODE_DUPLICATE, "A record with matching key values already exists.")
        _infer_type_columns(store, schema, row)
        if schema.name == "systemusers" and "fullname" not in coerced:
            row["fullname"] = _full_name(row)
        if schema.name in MAILBOX_OWNER_SETS and row.get("_businessunitid_value") is None:
            root = root_business_unit(store)
            row["_businessunitid_value"] = root["businessunitid"] if root else None
        table[row_id] = row
        if schema.name in MAILBOX_OWNER_SETS and row.get("_defaultmailbox_value") is None:
            _create_owner_mailbox(store, schema, row, now)
        if schema.name == "systemusers":
            _create_user_settings(store, row, now)
        store.touch()
        return table[row_id]


def _full_name(user: Mapping[str, Any]) -> str | None:
    name = " ".join(part for part in (user.get("firstname"), user.get("lastname")) if part)
    return name or user.get("domainname") or user.get("internalemailaddress")


def _owner_address(schema: EntitySet, owner: Mapping[str, Any]) -> str | None:
    return owner.get("emailaddress") if schema.name == "queues" else owner.get("internalemailaddress")


def _owner_name(schema: EntitySet, owner: Mapping[str, Any]) -> str | None:
    return owner.get(schema.primary_name)


def _create_owner_mailbox(store: Store, schema: EntitySet, owner: dict[str, Any], now: dt.datetime | None) -> None:
    """Dataverse creates one mailbox per user and per queue, bound to the organisation's default profile."""
    organization = organization_row(store)
    if schema.name == "queues":
        owner_id, owner_type = owner.get("_ownerid_value"), owner.get("owneridtype")
    else:
        owner_id, owner_type = owner["systemuserid"], "systemuser"
    values: dict[str, Any] = {
        "name": _owner_name(schema, owner),
        "emailaddress": _owner_address(schema, owner),
        "_regardingobjectid_value": owner[schema.key],
        "regardingobjecttypecode": schema.logical_name,
        "isforwardmailbox": False,
        "_emailserverprofile_value": organization.get("_defaultemailserverprofileid_value") if organization else None,
        "_ownerid_value": owner_id,
        "owneridtype": owner_type if owner_id else None,
        "_owningbusinessunit_value": owner.get("_businessunitid_value"),
    }
    for name in OWNER_SYNCED_COLUMNS:
        if owner.get(name) in MAILBOXES.columns[name].labels:
            values[name] = owner[name]
    mailbox = insert(store, "mailboxes", values, now=now)
    table = store.table(schema.name)
    table[owner[schema.key]] = {**table[owner[schema.key]], "_defaultmailbox_value": mailbox["mailboxid"]}


def _create_user_settings(store: Store, user: Mapping[str, Any], now: dt.datetime | None) -> None:
    """Dataverse gives every user a personal options row, keyed by the user's id."""
    if user["systemuserid"] in store.table(USERSETTINGS.name):
        return
    insert(
        store,
        USERSETTINGS.name,
        {"systemuserid": user["systemuserid"], "_businessunitid_value": user.get("_businessunitid_value")},
        now=now,
    )


def _write(
    store: Store, schema: EntitySet, row_id: str, changes: Mapping[str, Any], now: dt.datetime | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Apply already-checked changes to one row (new version, new modifiedon); returns (old, new)."""
    table = store.table(schema.name)
    old = table.get(row_id)
    if old is None:
        raise schema.not_found(row_id)
    new = {**old, **changes}
    new["versionnumber"] = store.next_version()
    if "modifiedon" not in changes:
        new["modifiedon"] = _stamp(now)
    _infer_type_columns(store, schema, new)
    if schema.name == "systemusers" and ("firstname" in changes or "lastname" in changes) and "fullname" not in changes:
        new["fullname"] = _full_name(new)
    standard_state = schema.column("statecode") is not None and set(schema.columns["statecode"].labels) == {0, 1}
    if standard_state and "statecode" in changes and "statuscode" not in changes:
        new["statuscode"] = 1 if changes["statecode"] == 0 else 2
    table[row_id] = new
    return old, new


def update(
    store: Store, entity_set: str, row_id: str, changes: dict[str, Any], *, now: dt.datetime | None = None
) -> dict[str, Any]:
    """Change a row as a Web API PATCH would: new ``versionnumber`` and ``modifiedon``, side effects kept.

    A queue's or user's address, name, approval and delivery methods flow to its mailbox (setting
    a queue's address creates the mailbox if it has none); a mailbox's approval and delivery
    methods flow back to its owner. Raises :class:`DataverseError` (404 for a missing row).
    """
    schema = schema_for(entity_set)
    row_id = row_id.lower()
    with store.lock:
        coerced = _coerce_values(schema, changes)
        if schema.key in coerced and coerced[schema.key] != row_id:
            raise DataverseError(400, CODE_INVALID_ARGUMENT, f"The primary key '{schema.key}' cannot be changed.")
        old, new = _write(store, schema, row_id, coerced, now)
        if schema.name in MAILBOX_OWNER_SETS:
            _sync_owner_to_mailbox(store, schema, old, new, now)
        elif schema.name == "mailboxes":
            _sync_mailbox_to_owner(store, old, new, now)
        store.touch()
        return store.table(schema.name)[row_id]


def _sync_owner_to_mailbox(
    store: Store, schema: EntitySet, old: Mapping[str, Any], new: dict[str, Any], now: dt.datetime | None
) -> None:
    address_before, address_after = _owner_address(schema, old), _owner_address(schema, new)
    mailbox_id = new.get("_defaultmailbox_value")
    if mailbox_id is None or mailbox_id not in store.table("mailboxes"):
        if schema.name == "queues" and address_after and address_after != address_before:
            _create_owner_mailbox(store, schema, new, now)
        return
    changes: dict[str, Any] = {}
    if address_after != address_before:
        changes["emailaddress"] = address_after
    name_after = _owner_name(schema, new)
    if name_after != _owner_name(schema, old):
        changes["name"] = name_after
    for name in OWNER_SYNCED_COLUMNS:
        if new.get(name) != old.get(name) and new.get(name) in MAILBOXES.columns[name].labels:
            changes[name] = new[name]
    if changes:
        _write(store, MAILBOXES, mailbox_id, changes, now)


def _sync_mailbox_to_owner(
    store: Store, old: Mapping[str, Any], new: Mapping[str, Any], now: dt.datetime | None
) -> None:
    owner_schema = lookup_target(MAILBOXES, MAILBOXES.columns["_regardingobjectid_value"], new)
    owner_id = new.get("_regardingobjectid_value")
    if owner_schema is None or owner_id is None or owner_id not in store.table(owner_schema.name):
        return
    owner = store.table(owner_schema.name)[owner_id]
    changes = {
        name: new[name]
        for name in OWNER_SYNCED_COLUMNS
        if new.get(name) != old.get(name)
        and new.get(name) != owner.get(name)
        and new.get(name) in owner_schema.columns[name].labels
    }
    if changes:
        _write(store, owner_schema, owner_id, changes, now)


def delete(store: Store, entity_set: str, row_id: str) -> None:
    """Delete a row. A queue's or user's mailbox goes with it; a deleted mailbox is unlinked from its owner."""
    schema = schema_for(entity_set)
    row_id = row_id.lower()
    with store.lock:
        table = store.table(schema.name)
        row = table.pop(row_id, None)
        if row is None:
            raise schema.not_found(row_id)
        if schema.name == "systemusers":
            store.table(USERSETTINGS.name).pop(row_id, None)
        if schema.name in MAILBOX_OWNER_SETS:
            mailboxes = store.table("mailboxes")
            for mailbox_id in [
                mailbox_id
                for mailbox_id, mailbox in mailboxes.items()
                if mailbox.get("_regardingobjectid_value") == row_id
            ]:
                del mailboxes[mailbox_id]
        elif schema.name == "mailboxes":
            for owner_set in MAILBOX_OWNER_SETS:
                owners = store.table(owner_set)
                owner_id = row.get("_regardingobjectid_value")
                if owner_id in owners and owners[owner_id].get("_defaultmailbox_value") == row_id:
                    owners[owner_id] = {**owners[owner_id], "_defaultmailbox_value": None}
        store.touch()
