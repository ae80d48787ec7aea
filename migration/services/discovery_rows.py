"""The Dataverse rows discovery reads, parsed once at the boundary into small typed tuples.

Discovery reads every mailbox and every owner of the organisation, so the parsing here is lean
(plain tuples, no enum objects) while still refusing what it cannot trust: a malformed id, a
value of the wrong type or an unknown choice value is a :class:`ResponseFormatError` naming the
column, never a silent guess. Choice values are those of DESIGN 4.2 (see portal.m365.rows).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from typing import Any, NamedTuple

from migration.models import OwnerType
from migration.services.discovery_scratch import OwnerRow
from portal.m365.errors import ResponseFormatError
from portal.m365.rows import (
    ActDeliveryMethod,
    EmailApproval,
    IncomingDeliveryMethod,
    OutgoingDeliveryMethod,
    TestStatus,
)

MAILBOX_COLUMNS = (
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
    "_regardingobjectid_value",
    "isforwardmailbox",
    "modifiedon",
)
USER_COLUMNS = (
    "systemuserid",
    "fullname",
    "domainname",
    "isdisabled",
    "_businessunitid_value",
    "azureactivedirectoryobjectid",
    "modifiedon",
)
QUEUE_COLUMNS = ("queueid", "name", "_ownerid_value", "_businessunitid_value", "modifiedon")

_INCOMING = frozenset(int(value) for value in IncomingDeliveryMethod)
_OUTGOING = frozenset(int(value) for value in OutgoingDeliveryMethod)
_ACT = frozenset(int(value) for value in ActDeliveryMethod)
_APPROVAL = frozenset(int(value) for value in EmailApproval)
_STATUS = frozenset(int(value) for value in TestStatus)


class MailboxRow(NamedTuple):
    id: uuid.UUID
    name: str
    email_address: str
    profile_id: uuid.UUID | None
    incoming_delivery: int | None
    outgoing_delivery: int | None
    act_delivery: int | None
    email_approval: int | None
    incoming_status: int | None
    outgoing_status: int | None
    act_status: int | None
    regarding_id: uuid.UUID | None  # the queue or user that owns the mailbox
    is_forward_mailbox: bool
    modified_on: dt.datetime | None


def mailbox_row(row: Mapping[str, Any]) -> MailboxRow:
    table = "mailbox"
    return MailboxRow(
        id=_id(row, table, "mailboxid"),
        name=_text(row, table, "name"),
        email_address=_text(row, table, "emailaddress").strip(),
        profile_id=_guid(row, table, "_emailserverprofile_value"),
        incoming_delivery=_choice(row, table, "incomingemaildeliverymethod", _INCOMING),
        outgoing_delivery=_choice(row, table, "outgoingemaildeliverymethod", _OUTGOING),
        act_delivery=_choice(row, table, "actdeliverymethod", _ACT),
        email_approval=_choice(row, table, "emailrouteraccessapproval", _APPROVAL),
        incoming_status=_choice(row, table, "incomingemailstatus", _STATUS),
        outgoing_status=_choice(row, table, "outgoingemailstatus", _STATUS),
        act_status=_choice(row, table, "actstatus", _STATUS),
        regarding_id=_guid(row, table, "_regardingobjectid_value"),
        is_forward_mailbox=_flag(row, table, "isforwardmailbox"),
        modified_on=modified_on(row, table),
    )


def user_owner(row: Mapping[str, Any]) -> tuple[OwnerRow, dt.datetime | None]:
    table = "systemuser"
    entra = _guid(row, table, "azureactivedirectoryobjectid")
    owner = OwnerRow(
        id=_id(row, table, "systemuserid"),
        kind=OwnerType.USER.value,
        name=_text(row, table, "fullname") or _text(row, table, "domainname"),
        disabled=_flag(row, table, "isdisabled"),
        business_unit_id=_guid(row, table, "_businessunitid_value"),
        owning_team_id=None,
        entra_object_id=str(entra) if entra else None,
    )
    return owner, modified_on(row, table)


def queue_owner(row: Mapping[str, Any]) -> tuple[OwnerRow, dt.datetime | None]:
    table = "queue"
    owner = OwnerRow(
        id=_id(row, table, "queueid"),
        kind=OwnerType.QUEUE.value,
        name=_text(row, table, "name"),
        disabled=False,
        business_unit_id=_guid(row, table, "_businessunitid_value"),
        # A team or a user owns a queue; only a team's id finds a name among the teams.
        owning_team_id=_guid(row, table, "_ownerid_value"),
        entra_object_id=None,
    )
    return owner, modified_on(row, table)


def row_id(row: Mapping[str, Any], column: str, table: str) -> uuid.UUID:
    return _id(row, table, column)


def optional_row_id(row: Mapping[str, Any], column: str, table: str) -> uuid.UUID | None:
    return _guid(row, table, column)


def modified_on(row: Mapping[str, Any], table: str) -> dt.datetime | None:
    value = row.get("modifiedon")
    if value is None:
        return None
    if not isinstance(value, str):
        raise _problem(table, "modifiedon", value, "an ISO 8601 date-time")
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise _problem(table, "modifiedon", value, "an ISO 8601 date-time") from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)


# --- column readers --------------------------------------------------------------------------


def _problem(table: str, column: str, value: Any, expected: str) -> ResponseFormatError:
    return ResponseFormatError(
        message=f"Dataverse {table}.{column} should be {expected}, not {value!r}.", service="dataverse"
    )


def _id(row: Mapping[str, Any], table: str, column: str) -> uuid.UUID:
    value = _guid(row, table, column)
    if value is None:
        raise ResponseFormatError(message=f"Dataverse {table} row has no {column}.", service="dataverse")
    return value


def _guid(row: Mapping[str, Any], table: str, column: str) -> uuid.UUID | None:
    value = row.get(column)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _problem(table, column, value, "a GUID")
    try:
        return uuid.UUID(value)
    except ValueError:
        raise _problem(table, column, value, "a GUID") from None


def _text(row: Mapping[str, Any], table: str, column: str) -> str:
    value = row.get(column)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _problem(table, column, value, "text")
    return value


def _flag(row: Mapping[str, Any], table: str, column: str) -> bool:
    value = row.get(column)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _problem(table, column, value, "true or false")
    return value


def _choice(row: Mapping[str, Any], table: str, column: str, allowed: frozenset[int]) -> int | None:
    value = row.get(column)
    if value is None:
        return None
    if type(value) is not int or value not in allowed:
        raise _problem(table, column, value, f"one of {', '.join(str(v) for v in sorted(allowed))}")
    return value
