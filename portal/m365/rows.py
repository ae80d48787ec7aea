"""Dataverse rows as small typed objects, parsed once at the boundary.

Each row type names its entity set, its key column and the columns it reads (``SELECT``), and
``from_row`` turns the Web API's JSON into the object: lookups ``_x_value`` become plain
``…_id`` fields, choice columns become the ``IntEnum`` named after their values, date-times become
aware datetimes. Optional columns may be missing (a narrower ``$select``, an older schema) and
read as ``None``; the id may not, and a value of the wrong type or an unknown choice value is a
:class:`ResponseFormatError` naming the column, never a silent guess.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, ClassVar, TypeVar

from portal.m365.errors import ResponseFormatError

E = TypeVar("E", bound=IntEnum)


class IncomingDeliveryMethod(IntEnum):
    """``incomingemaildeliverymethod`` on mailboxes, queues and users."""

    NONE = 0
    OUTLOOK = 1  # Dynamics 365 for Outlook
    SERVER_SIDE_SYNC_OR_EMAIL_ROUTER = 2
    FORWARD_MAILBOX = 3


class OutgoingDeliveryMethod(IntEnum):
    """``outgoingemaildeliverymethod`` on mailboxes, queues and users."""

    NONE = 0
    OUTLOOK = 1  # Dynamics 365 for Outlook
    SERVER_SIDE_SYNC_OR_EMAIL_ROUTER = 2


class ActDeliveryMethod(IntEnum):
    """``actdeliverymethod`` (appointments, contacts, tasks): numbered differently from email!"""

    OUTLOOK = 0  # Microsoft Dynamics 365 for Outlook
    SERVER_SIDE_SYNC = 1
    NONE = 2


class EmailApproval(IntEnum):
    """``emailrouteraccessapproval``: whether the address is approved for server-side sync."""

    EMPTY = 0
    APPROVED = 1
    PENDING_APPROVAL = 2
    REJECTED = 3


class TestStatus(IntEnum):
    """``incomingemailstatus``, ``outgoingemailstatus``, ``actstatus``, ``mailboxstatus``."""

    __test__ = False  # a Dataverse value, not a pytest test class

    NOT_RUN = 0
    SUCCESS = 1
    FAILURE = 2


class IncomingFilteringMethod(IntEnum):
    """``incomingemailfilteringmethod``: which incoming email is tracked."""

    ALL_EMAIL_MESSAGES = 0
    IN_RESPONSE_TO_DYNAMICS_EMAIL = 1
    FROM_LEADS_CONTACTS_AND_ACCOUNTS = 2
    FROM_EMAIL_ENABLED_RECORDS = 3
    NO_EMAIL_MESSAGES = 4


class QueueViewType(IntEnum):
    """``queueviewtype``: public or private (``queuetypecode`` is read-only and something else)."""

    PUBLIC = 0
    PRIVATE = 1


class ServerType(IntEnum):
    """``servertype`` of an email server profile; there is no plain "Exchange Online" value."""

    EXCHANGE_SERVER = 0
    OTHER_POP3_SMTP = 1
    EXCHANGE_SERVER_HYBRID = 2
    EXCHANGE_ONLINE_HYBRID = 3
    IMAP_SMTP = 4


class CredentialRetrieval(IntEnum):
    """``incomingcredentialretrieval`` / ``outgoingcredentialretrieval`` of an email server profile."""

    CREDENTIALS_SPECIFIED_BY_USER_OR_QUEUE = 0
    CREDENTIALS_SPECIFIED_IN_PROFILE = 1
    SERVER_TO_SERVER_AUTHENTICATION = 2
    WINDOWS_INTEGRATED_AUTHENTICATION = 3
    WITHOUT_CREDENTIALS = 4
    GMAIL_OAUTH = 5
    EXCHANGE_HYBRID_MODERN_AUTH = 6
    OAUTH = 7  # OAuth with Microsoft Entra ID


class EmailConnectionChannel(IntEnum):
    """``emailconnectionchannel`` on the organization ("Process Email Using")."""

    SERVER_SIDE_SYNCHRONIZATION = 0
    EMAIL_ROUTER = 1


class TraceLevel(IntEnum):
    """``level`` of a tracelog (a mailbox or server profile alert)."""

    INFORMATION = 1
    WARNING = 2
    ERROR = 3


class StateCode(IntEnum):
    ACTIVE = 0
    INACTIVE = 1


# --- column readers --------------------------------------------------------------------------


def _problem(table: str, column: str, value: Any, expected: str) -> ResponseFormatError:
    return ResponseFormatError(
        message=f"Dataverse {table}.{column} should be {expected}, not {value!r}.", service="dataverse"
    )


def _id(row: Mapping[str, Any], table: str, column: str) -> str:
    value = row.get(column)
    if value is None:
        raise ResponseFormatError(message=f"Dataverse {table} row has no {column}.", service="dataverse")
    return _guid_value(value, table, column)


def _guid_value(value: Any, table: str, column: str) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise _problem(table, column, value, "a GUID") from None


def _lookup(row: Mapping[str, Any], table: str, navigation: str) -> str | None:
    column = f"_{navigation}_value"
    value = row.get(column)
    return None if value is None else _guid_value(value, table, column)


def _str(row: Mapping[str, Any], table: str, column: str) -> str | None:
    value = row.get(column)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _problem(table, column, value, "text")
    return value


def _bool(row: Mapping[str, Any], table: str, column: str) -> bool | None:
    value = row.get(column)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise _problem(table, column, value, "true or false")
    return value


def _int(row: Mapping[str, Any], table: str, column: str) -> int | None:
    value = row.get(column)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _problem(table, column, value, "a whole number")
    return value


def _choice(row: Mapping[str, Any], table: str, column: str, choices: type[E]) -> E | None:
    value = _int(row, table, column)
    if value is None:
        return None
    try:
        return choices(value)
    except ValueError:
        raise _problem(table, column, value, f"one of {', '.join(str(c.value) for c in choices)}") from None


def _datetime(row: Mapping[str, Any], table: str, column: str) -> dt.datetime | None:
    value = _str(row, table, column)
    if value is None:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise _problem(table, column, value, "an ISO 8601 date-time") from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)


def _etag(row: Mapping[str, Any]) -> str | None:
    value = row.get("@odata.etag")
    return value if isinstance(value, str) else None


# --- rows ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WhoAmI:
    """``GET WhoAmI``: the application user the portal acts as, and where."""

    user_id: str
    business_unit_id: str
    organization_id: str

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> WhoAmI:
        return cls(
            user_id=_id(body, "WhoAmI", "UserId"),
            business_unit_id=_id(body, "WhoAmI", "BusinessUnitId"),
            organization_id=_id(body, "WhoAmI", "OrganizationId"),
        )


@dataclass(frozen=True)
class Mailbox:
    ENTITY_SET: ClassVar[str] = "mailboxes"
    KEY: ClassVar[str] = "mailboxid"
    SELECT: ClassVar[tuple[str, ...]] = (
        "mailboxid",
        "name",
        "emailaddress",
        "_emailserverprofile_value",
        "incomingemaildeliverymethod",
        "outgoingemaildeliverymethod",
        "actdeliverymethod",
        "emailrouteraccessapproval",
        "incomingemailstatus",
        "outgoingemailstatus",
        "actstatus",
        "mailboxstatus",
        "enabledforincomingemail",
        "enabledforoutgoingemail",
        "enabledforact",
        "testemailconfigurationscheduled",
        "postponetestemailconfigurationuntil",
        "testemailconfigurationretrycount",
        "testmailboxaccesscompletedon",
        "_regardingobjectid_value",
        "isforwardmailbox",
        "statecode",
        "statuscode",
    )

    id: str
    etag: str | None = None
    name: str | None = None
    email_address: str | None = None
    email_server_profile_id: str | None = None
    incoming_delivery_method: IncomingDeliveryMethod | None = None
    outgoing_delivery_method: OutgoingDeliveryMethod | None = None
    act_delivery_method: ActDeliveryMethod | None = None
    email_approval: EmailApproval | None = None
    incoming_status: TestStatus | None = None
    outgoing_status: TestStatus | None = None
    act_status: TestStatus | None = None
    mailbox_status: TestStatus | None = None
    enabled_for_incoming: bool | None = None
    enabled_for_outgoing: bool | None = None
    enabled_for_act: bool | None = None
    test_scheduled: bool | None = None
    postpone_test_until: dt.datetime | None = None
    test_retry_count: int | None = None
    test_completed_on: dt.datetime | None = None
    regarding_id: str | None = None  # the queue or user that owns the mailbox
    is_forward_mailbox: bool | None = None
    state_code: StateCode | None = None
    status_code: int | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Mailbox:
        t = "mailbox"
        return cls(
            id=_id(row, t, cls.KEY),
            etag=_etag(row),
            name=_str(row, t, "name"),
            email_address=_str(row, t, "emailaddress"),
            email_server_profile_id=_lookup(row, t, "emailserverprofile"),
            incoming_delivery_method=_choice(row, t, "incomingemaildeliverymethod", IncomingDeliveryMethod),
            outgoing_delivery_method=_choice(row, t, "outgoingemaildeliverymethod", OutgoingDeliveryMethod),
            act_delivery_method=_choice(row, t, "actdeliverymethod", ActDeliveryMethod),
            email_approval=_choice(row, t, "emailrouteraccessapproval", EmailApproval),
            incoming_status=_choice(row, t, "incomingemailstatus", TestStatus),
            outgoing_status=_choice(row, t, "outgoingemailstatus", TestStatus),
            act_status=_choice(row, t, "actstatus", TestStatus),
            mailbox_status=_choice(row, t, "mailboxstatus", TestStatus),
            enabled_for_incoming=_bool(row, t, "enabledforincomingemail"),
            enabled_for_outgoing=_bool(row, t, "enabledforoutgoingemail"),
            enabled_for_act=_bool(row, t, "enabledforact"),
            test_scheduled=_bool(row, t, "testemailconfigurationscheduled"),
            postpone_test_until=_datetime(row, t, "postponetestemailconfigurationuntil"),
            test_retry_count=_int(row, t, "testemailconfigurationretrycount"),
            test_completed_on=_datetime(row, t, "testmailboxaccesscompletedon"),
            regarding_id=_lookup(row, t, "regardingobjectid"),
            is_forward_mailbox=_bool(row, t, "isforwardmailbox"),
            state_code=_choice(row, t, "statecode", StateCode),
            status_code=_int(row, t, "statuscode"),
        )


@dataclass(frozen=True)
class Queue:
    ENTITY_SET: ClassVar[str] = "queues"
    KEY: ClassVar[str] = "queueid"
    SELECT: ClassVar[tuple[str, ...]] = (
        "queueid",
        "name",
        "description",
        "emailaddress",
        "queueviewtype",
        "incomingemailfilteringmethod",
        "incomingemaildeliverymethod",
        "outgoingemaildeliverymethod",
        "emailrouteraccessapproval",
        "_defaultmailbox_value",
        "_ownerid_value",
        "_businessunitid_value",
        "statecode",
    )

    id: str
    etag: str | None = None
    name: str | None = None
    description: str | None = None
    email_address: str | None = None
    view_type: QueueViewType | None = None
    incoming_filtering_method: IncomingFilteringMethod | None = None
    incoming_delivery_method: IncomingDeliveryMethod | None = None
    outgoing_delivery_method: OutgoingDeliveryMethod | None = None
    email_approval: EmailApproval | None = None
    default_mailbox_id: str | None = None
    owner_id: str | None = None
    business_unit_id: str | None = None
    state_code: StateCode | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Queue:
        t = "queue"
        return cls(
            id=_id(row, t, cls.KEY),
            etag=_etag(row),
            name=_str(row, t, "name"),
            description=_str(row, t, "description"),
            email_address=_str(row, t, "emailaddress"),
            view_type=_choice(row, t, "queueviewtype", QueueViewType),
            incoming_filtering_method=_choice(row, t, "incomingemailfilteringmethod", IncomingFilteringMethod),
            incoming_delivery_method=_choice(row, t, "incomingemaildeliverymethod", IncomingDeliveryMethod),
            outgoing_delivery_method=_choice(row, t, "outgoingemaildeliverymethod", OutgoingDeliveryMethod),
            email_approval=_choice(row, t, "emailrouteraccessapproval", EmailApproval),
            default_mailbox_id=_lookup(row, t, "defaultmailbox"),
            owner_id=_lookup(row, t, "ownerid"),
            business_unit_id=_lookup(row, t, "businessunitid"),
            state_code=_choice(row, t, "statecode", StateCode),
        )


@dataclass(frozen=True)
class SystemUser:
    ENTITY_SET: ClassVar[str] = "systemusers"
    KEY: ClassVar[str] = "systemuserid"
    SELECT: ClassVar[tuple[str, ...]] = (
        "systemuserid",
        "fullname",
        "domainname",
        "internalemailaddress",
        "emailrouteraccessapproval",
        "incomingemaildeliverymethod",
        "outgoingemaildeliverymethod",
        "_defaultmailbox_value",
        "azureactivedirectoryobjectid",
        "_businessunitid_value",
        "isdisabled",
    )

    id: str
    etag: str | None = None
    full_name: str | None = None
    domain_name: str | None = None
    internal_email_address: str | None = None
    email_approval: EmailApproval | None = None
    incoming_delivery_method: IncomingDeliveryMethod | None = None
    outgoing_delivery_method: OutgoingDeliveryMethod | None = None
    default_mailbox_id: str | None = None
    entra_object_id: str | None = None
    business_unit_id: str | None = None
    is_disabled: bool | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> SystemUser:
        t = "systemuser"
        object_id = row.get("azureactivedirectoryobjectid")
        return cls(
            id=_id(row, t, cls.KEY),
            etag=_etag(row),
            full_name=_str(row, t, "fullname"),
            domain_name=_str(row, t, "domainname"),
            internal_email_address=_str(row, t, "internalemailaddress"),
            email_approval=_choice(row, t, "emailrouteraccessapproval", EmailApproval),
            incoming_delivery_method=_choice(row, t, "incomingemaildeliverymethod", IncomingDeliveryMethod),
            outgoing_delivery_method=_choice(row, t, "outgoingemaildeliverymethod", OutgoingDeliveryMethod),
            default_mailbox_id=_lookup(row, t, "defaultmailbox"),
            entra_object_id=None if object_id is None else _guid_value(object_id, t, "azureactivedirectoryobjectid"),
            business_unit_id=_lookup(row, t, "businessunitid"),
            is_disabled=_bool(row, t, "isdisabled"),
        )


@dataclass(frozen=True)
class EmailServerProfile:
    ENTITY_SET: ClassVar[str] = "emailserverprofiles"
    KEY: ClassVar[str] = "emailserverprofileid"
    SELECT: ClassVar[tuple[str, ...]] = (
        "emailserverprofileid",
        "name",
        "servertype",
        "incomingcredentialretrieval",
        "outgoingcredentialretrieval",
        "useautodiscover",
        "sendemailalert",
        "statecode",
    )

    id: str
    etag: str | None = None
    name: str | None = None
    server_type: ServerType | None = None
    incoming_credential_retrieval: CredentialRetrieval | None = None
    outgoing_credential_retrieval: CredentialRetrieval | None = None
    use_autodiscover: bool | None = None
    send_email_alert: bool | None = None
    state_code: StateCode | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> EmailServerProfile:
        t = "emailserverprofile"
        return cls(
            id=_id(row, t, cls.KEY),
            etag=_etag(row),
            name=_str(row, t, "name"),
            server_type=_choice(row, t, "servertype", ServerType),
            incoming_credential_retrieval=_choice(row, t, "incomingcredentialretrieval", CredentialRetrieval),
            outgoing_credential_retrieval=_choice(row, t, "outgoingcredentialretrieval", CredentialRetrieval),
            use_autodiscover=_bool(row, t, "useautodiscover"),
            send_email_alert=_bool(row, t, "sendemailalert"),
            state_code=_choice(row, t, "statecode", StateCode),
        )


@dataclass(frozen=True)
class Organization:
    ENTITY_SET: ClassVar[str] = "organizations"
    KEY: ClassVar[str] = "organizationid"
    SELECT: ClassVar[tuple[str, ...]] = (
        "organizationid",
        "name",
        "_defaultemailserverprofileid_value",
        "emailconnectionchannel",
        "requireapprovalforuseremail",
        "requireapprovalforqueueemail",
        "maxuploadfilesize",
    )

    id: str
    etag: str | None = None
    name: str | None = None
    default_email_server_profile_id: str | None = None
    email_connection_channel: EmailConnectionChannel | None = None
    require_approval_for_user_email: bool | None = None
    require_approval_for_queue_email: bool | None = None
    max_upload_file_size: int | None = None  # bytes

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Organization:
        t = "organization"
        return cls(
            id=_id(row, t, cls.KEY),
            etag=_etag(row),
            name=_str(row, t, "name"),
            default_email_server_profile_id=_lookup(row, t, "defaultemailserverprofileid"),
            email_connection_channel=_choice(row, t, "emailconnectionchannel", EmailConnectionChannel),
            require_approval_for_user_email=_bool(row, t, "requireapprovalforuseremail"),
            require_approval_for_queue_email=_bool(row, t, "requireapprovalforqueueemail"),
            max_upload_file_size=_int(row, t, "maxuploadfilesize"),
        )


@dataclass(frozen=True)
class TraceLog:
    ENTITY_SET: ClassVar[str] = "tracelogs"
    KEY: ClassVar[str] = "tracelogid"
    SELECT: ClassVar[tuple[str, ...]] = (
        "tracelogid",
        "level",
        "tracecode",
        "text",
        "_regardingobjectid_value",
        "errordetails",
        "createdon",
        "modifiedon",
    )

    id: str
    etag: str | None = None
    level: TraceLevel | None = None
    trace_code: int | None = None
    text: str | None = None
    regarding_id: str | None = None  # the mailbox or server profile the alert is about
    error_details: str | None = None
    created_on: dt.datetime | None = None
    modified_on: dt.datetime | None = None  # bumped when the same alert recurs

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> TraceLog:
        t = "tracelog"
        return cls(
            id=_id(row, t, cls.KEY),
            etag=_etag(row),
            level=_choice(row, t, "level", TraceLevel),
            trace_code=_int(row, t, "tracecode"),
            text=_str(row, t, "text"),
            regarding_id=_lookup(row, t, "regardingobjectid"),
            error_details=_str(row, t, "errordetails"),
            created_on=_datetime(row, t, "createdon"),
            modified_on=_datetime(row, t, "modifiedon"),
        )


ROW_TYPES = (Mailbox, Queue, SystemUser, EmailServerProfile, Organization, TraceLog)
