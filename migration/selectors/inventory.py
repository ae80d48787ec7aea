"""Reading the inventory: filters, keyset pages, the summary and one mailbox's whole record.

Every page here costs the same number of queries whatever the number of rows,
and no list query uses OFFSET or counts the whole filtered set: a page is found
by comparing the sort key and id of the last (or first) row seen, which the
composite indexes on ``InventoryMailbox`` answer directly at any depth.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.db import connection
from django.db.models import Count, Exists, F, OuterRef, Prefetch, Q, QuerySet, Subquery

# Row-value comparison, ``(a, b, id) > (x, y, z)``: PostgreSQL turns it into one
# index range condition, so the thousandth page starts as fast as the first.
from django.db.models.fields.tuple_lookups import Tuple, TupleGreaterThan, TupleLessThan
from django.db.models.functions import Coalesce
from django.utils import dateformat, timezone

from migration.models import (
    Classification,
    ExchangePresence,
    InventoryChange,
    InventoryMailbox,
    InventorySync,
    LegacyMailboxLink,
    LegacySource,
    OwnerType,
    Readiness,
)

PAGE_SIZE = 50
TOP_TEAMS = 10
HISTORY_LIMIT = 50
LINKS_LIMIT = 100
MAX_FILTER_OPTIONS = 1000
SEARCH_MAX_LENGTH = 200

# A filter value meaning "the field is blank", e.g. mailboxes with no team.
BLANK = "__blank__"

# Dataverse's labels for the choice values discovery stores (DESIGN 4.2).
INCOMING_DELIVERY_LABELS = {
    0: "None",
    1: "Microsoft Dynamics 365 for Outlook",
    2: "Server-Side Synchronization or Email Router",
    3: "Forward Mailbox",
}
OUTGOING_DELIVERY_LABELS = {
    0: "None",
    1: "Microsoft Dynamics 365 for Outlook",
    2: "Server-Side Synchronization or Email Router",
}
ACT_DELIVERY_LABELS = {0: "Microsoft Dynamics 365 for Outlook", 1: "Server-Side Synchronization", 2: "None"}
APPROVAL_LABELS = {0: "Empty", 1: "Approved", 2: "Pending Approval", 3: "Rejected"}
TEST_STATUS_LABELS = {0: "Not Run", 1: "Success", 2: "Failure"}


def dataverse_label(labels: dict[int, str], value: int | None) -> str:
    """``"Server-Side Synchronization or Email Router (2)"``, the way Dynamics 365 names it."""
    if value is None:
        return "Not set"
    return f"{labels.get(value, 'Unknown value')} ({value})"


# --- filters ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class InventoryFilters:
    classification: str = ""
    readiness: str = ""
    team: str = ""
    business_unit: str = ""
    legacy_source: int | None = None
    owner_type: str = ""
    include_removed: bool = False
    q: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items() if value not in ("", None, False)}


def inventory_mailboxes_filtered(filters: InventoryFilters) -> QuerySet[InventoryMailbox]:
    mailboxes = InventoryMailbox.objects.all()
    if not filters.include_removed:
        mailboxes = mailboxes.filter(removed_at__isnull=True)
    if filters.classification:
        mailboxes = mailboxes.filter(classification=filters.classification)
    if filters.readiness:
        mailboxes = mailboxes.filter(readiness=filters.readiness)
    if filters.team:
        mailboxes = mailboxes.filter(team_name="" if filters.team == BLANK else filters.team)
    if filters.business_unit:
        mailboxes = mailboxes.filter(business_unit_name="" if filters.business_unit == BLANK else filters.business_unit)
    if filters.owner_type:
        mailboxes = mailboxes.filter(owner_type=filters.owner_type)
    if filters.legacy_source is not None:
        # A semi-join, so a mailbox listed by several imports of one router appears once.
        mailboxes = mailboxes.filter(
            Exists(LegacyMailboxLink.objects.filter(source_id=filters.legacy_source, mailbox_id=OuterRef("pk")))
        )
    if filters.q:
        # On PostgreSQL the trigram indexes on UPPER(name) and UPPER(email_address)
        # (migration 0002) answer these; elsewhere it is a plain scan.
        mailboxes = mailboxes.filter(Q(name__icontains=filters.q) | Q(email_address__icontains=filters.q))
    return mailboxes


def _distinct_values(column: str) -> list[str]:
    """Every distinct value of an indexed text column, by skipping through its index.

    A plain ``SELECT DISTINCT`` reads every row; this recursive query asks the
    index for "the next value after this one" once per value, so it costs the
    number of teams, not the number of mailboxes.
    """
    table = connection.ops.quote_name(InventoryMailbox._meta.db_table)
    col = connection.ops.quote_name(column)
    sql = (
        f"WITH RECURSIVE found(value) AS ("  # noqa: S608 - table and column names come from the model
        f" SELECT MIN({col}) FROM {table}"
        f" UNION ALL"
        f" SELECT (SELECT MIN({col}) FROM {table} WHERE {col} > found.value) FROM found WHERE found.value IS NOT NULL"
        f") SELECT value FROM found WHERE value IS NOT NULL LIMIT %s"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [MAX_FILTER_OPTIONS])
        return [row[0] for row in cursor.fetchall()]


def inventory_team_names() -> list[str]:
    return _distinct_values("team_name")


def inventory_business_unit_names() -> list[str]:
    return _distinct_values("business_unit_name")


def legacy_sources_for_choice() -> list[tuple[int, str]]:
    return list(LegacySource.objects.order_by("name", "id").values_list("id", "name"))


# --- sorting and keyset pages -----------------------------------------------------------------

# Each sort's key columns, all served by one composite index ending in id.
SORT_KEYS: dict[str, tuple[str, ...]] = {
    "name": ("name",),
    "address": ("email_address",),
    "classification": ("classification", "name"),
    "team": ("team_name", "name"),
}
DEFAULT_SORT = "name"
SORT_CHOICES: list[tuple[str, str]] = [
    ("name", "Name (A to Z)"),
    ("-name", "Name (Z to A)"),
    ("address", "Email address (A to Z)"),
    ("-address", "Email address (Z to A)"),
    ("classification", "Classification (A to Z)"),
    ("-classification", "Classification (Z to A)"),
    ("team", "Team (A to Z)"),
    ("-team", "Team (Z to A)"),
]
_CURSOR_MAX_LENGTH = 2000


def sort_columns(sort: str) -> tuple[tuple[str, ...], bool]:
    """The key columns (id last) and whether the order is descending."""
    descending = sort.startswith("-")
    keys = SORT_KEYS.get(sort.lstrip("-"), SORT_KEYS[DEFAULT_SORT])
    return (*keys, "id"), descending


def cursor_encode(values: tuple[Any, ...]) -> str:
    raw = json.dumps(list(values), separators=(",", ":"), ensure_ascii=False).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def cursor_decode(token: str | None, sort: str) -> tuple[Any, ...] | None:
    """The key a page link carries, or None when it is missing or not one of ours."""
    if not token or len(token) > _CURSOR_MAX_LENGTH:
        return None
    try:
        values = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError, RecursionError):  # RecursionError: "[[[[…" nested past the limit
        return None
    columns, _ = sort_columns(sort)
    if not isinstance(values, list) or len(values) != len(columns):
        return None
    *keys, pk = values
    if not all(isinstance(key, str) and "\x00" not in key for key in keys):
        return None
    if not isinstance(pk, int) or isinstance(pk, bool) or not 0 < pk < 2**63:
        return None
    return (*keys, pk)


def row_key(mailbox: Mapping[str, Any], sort: str) -> tuple[Any, ...]:
    """The values of a mailbox's row (``.values()``) that place it in ``sort`` order."""
    columns, _ = sort_columns(sort)
    return tuple(mailbox[column] for column in columns)


def _after(columns: tuple[str, ...], key: tuple[Any, ...]) -> TupleGreaterThan:
    return TupleGreaterThan(Tuple(*(F(column) for column in columns)), key)


def _before(columns: tuple[str, ...], key: tuple[Any, ...]) -> TupleLessThan:
    return TupleLessThan(Tuple(*(F(column) for column in columns)), key)


@dataclass(frozen=True)
class InventoryPage:
    mailboxes: list[dict[str, Any]]  # each mailbox's LIST_COLUMNS, read as plain values
    next_cursor: str | None  # pass as ?after= for the next page
    previous_cursor: str | None  # pass as ?before= for the previous page


LIST_COLUMNS = (
    "id",
    "name",
    "email_address",
    "owner_type",
    "owner_name",
    "team_name",
    "business_unit_name",
    "classification",
    "readiness",
    "removed_at",
    "annotation__excluded",
)


def inventory_page(
    mailboxes: QuerySet[InventoryMailbox],
    *,
    sort: str = DEFAULT_SORT,
    after: tuple[Any, ...] | None = None,
    before: tuple[Any, ...] | None = None,
    size: int = PAGE_SIZE,
) -> InventoryPage:
    """``size`` mailboxes in ``sort`` order, after or before a key, found by key comparison, not OFFSET."""
    columns, descending = sort_columns(sort)
    forwards = [f"-{column}" if descending else column for column in columns]
    backwards = [column if descending else f"-{column}" for column in columns]
    # "Later in the list" is "greater" ascending and "smaller" descending.
    later, earlier = (_before, _after) if descending else (_after, _before)
    rows_query = mailboxes.values(*LIST_COLUMNS)

    if before is not None:
        rows = list(rows_query.filter(earlier(columns, before)).order_by(*backwards)[: size + 1])
        has_previous = len(rows) > size
        rows = list(reversed(rows[:size]))
        has_next = bool(rows) and mailboxes.filter(later(columns, row_key(rows[-1], sort))).exists()
    else:
        scoped = rows_query.filter(later(columns, after)) if after is not None else rows_query
        rows = list(scoped.order_by(*forwards)[: size + 1])
        has_next = len(rows) > size
        rows = rows[:size]
        has_previous = (
            after is not None and bool(rows) and mailboxes.filter(earlier(columns, row_key(rows[0], sort))).exists()
        )
    return InventoryPage(
        mailboxes=rows,
        next_cursor=cursor_encode(row_key(rows[-1], sort)) if rows and has_next else None,
        previous_cursor=cursor_encode(row_key(rows[0], sort)) if rows and has_previous else None,
    )


def inventory_ordered(mailboxes: QuerySet[InventoryMailbox], sort: str) -> QuerySet[InventoryMailbox]:
    columns, descending = sort_columns(sort)
    return mailboxes.order_by(*(f"-{column}" if descending else column for column in columns))


def inventory_export_rows(mailboxes: QuerySet[InventoryMailbox], sort: str) -> QuerySet[InventoryMailbox]:
    """Everything the CSV export needs, for streaming with ``.iterator(chunk_size=…)``."""
    return inventory_ordered(mailboxes, sort).select_related("annotation").prefetch_related(_links_with_sources())


def _links_with_sources() -> Prefetch:
    """Each mailbox's legacy links as a plain list (``mailbox.legacy_link_list``), sources joined."""
    return Prefetch(
        "legacy_links",
        queryset=LegacyMailboxLink.objects.select_related("source")
        .only("id", "mailbox_id", "email_address", "source__id", "source__name", "source__kind")
        .order_by("source__name", "id"),
        to_attr="legacy_link_list",
    )


# --- the summary ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CountRow:
    value: str  # the filter value for links; "" for rows that link nowhere
    label: str
    count: int
    percent: int  # share of the whole, rounded, for the text
    bar: int  # 0-100, the bar's length against the longest bar


@dataclass(frozen=True)
class TeamRow:
    value: str
    label: str
    total: int
    compliant: int
    ready: int
    blocked: int
    bar_compliant: int
    bar_ready: int
    bar_blocked: int


@dataclass(frozen=True)
class SourceRow:
    id: int
    name: str
    kind: str
    mailboxes: int
    unmatched: int
    bar: int


@dataclass(frozen=True)
class InventorySummary:
    total: int
    removed: int
    by_classification: list[CountRow]
    by_readiness: list[CountRow]
    top_teams: list[TeamRow]
    legacy_sources: list[SourceRow]
    last_sync: InventorySync | None
    not_compliant: int


def _bar(count: int, longest: int) -> int:
    """A bar length in whole percent; any non-zero count stays visible."""
    if not count or not longest:
        return 0
    return max(1, round(100 * count / longest))


def _percent(count: int, total: int) -> int:
    return round(100 * count / total) if total else 0


def _count_rows(counts: dict[str, int], choices: list[tuple[str, str]], total: int) -> list[CountRow]:
    longest = max(counts.values(), default=0)
    return [
        CountRow(
            value,
            label,
            counts.get(value, 0),
            _percent(counts.get(value, 0), total),
            _bar(counts.get(value, 0), longest),
        )
        for value, label in choices
    ]


def inventory_summary() -> InventorySummary:
    """The dashboard's numbers from a few GROUP BY queries (the summary index answers the first two alone)."""
    active = InventoryMailbox.objects.filter(removed_at__isnull=True)
    by_classification: dict[str, int] = {}
    by_readiness: dict[str, int] = {}
    for group in active.values("classification", "readiness").annotate(count=Count("*")).order_by():
        by_classification[group["classification"]] = by_classification.get(group["classification"], 0) + group["count"]
        by_readiness[group["readiness"]] = by_readiness.get(group["readiness"], 0) + group["count"]
    total = sum(by_classification.values())
    removed = InventoryMailbox.objects.filter(removed_at__isnull=False).count()

    teams = list(
        active.values("team_name")
        .annotate(
            total=Count("*"),
            compliant=Count("readiness", filter=Q(readiness=Readiness.COMPLIANT)),
            ready=Count("readiness", filter=Q(readiness=Readiness.READY)),
            blocked=Count("readiness", filter=Q(readiness=Readiness.BLOCKED)),
        )
        .order_by("-total", "team_name")[:TOP_TEAMS]
    )
    longest_team = max((team["total"] for team in teams), default=0)
    top_teams = [
        TeamRow(
            value=team["team_name"] or BLANK,
            label=team["team_name"] or "No team",
            total=team["total"],
            compliant=team["compliant"],
            ready=team["ready"],
            blocked=team["blocked"],
            bar_compliant=_bar(team["compliant"], longest_team),
            bar_ready=_bar(team["ready"], longest_team),
            bar_blocked=_bar(team["blocked"], longest_team),
        )
        for team in teams
    ]

    # Per source, from the links' own (source, mailbox) index; removed mailboxes are the
    # few rows the NOT IN list holds, so no join reads the mailbox table.
    links = LegacyMailboxLink.objects.filter(source=OuterRef("pk")).order_by().values("source")
    removed_ids = InventoryMailbox.objects.filter(removed_at__isnull=False).values("id")
    sources = list(
        LegacySource.objects.annotate(
            mailbox_count=Coalesce(
                Subquery(
                    links.filter(mailbox_id__isnull=False)
                    .exclude(mailbox_id__in=removed_ids)
                    .annotate(count=Count("mailbox_id", distinct=True))
                    .values("count")
                ),
                0,
            ),
            unmatched_count=Coalesce(
                Subquery(
                    links.filter(mailbox_id__isnull=True)
                    .annotate(count=Count("email_address", distinct=True))
                    .values("count")
                ),
                0,
            ),
        )
        .order_by("name", "id")
        .values("id", "name", "kind", "mailbox_count", "unmatched_count")
    )
    longest_source = max((source["mailbox_count"] for source in sources), default=0)
    legacy_sources = [
        SourceRow(
            id=source["id"],
            name=source["name"],
            kind=LegacySource(kind=source["kind"]).get_kind_display(),
            mailboxes=source["mailbox_count"],
            unmatched=source["unmatched_count"],
            bar=_bar(source["mailbox_count"], longest_source),
        )
        for source in sources
    ]

    syncs = InventorySync.objects.select_related("requested_by").order_by("-requested_at", "-id")
    return InventorySummary(
        total=total,
        removed=removed,
        by_classification=_count_rows(by_classification, Classification.choices, total),
        by_readiness=_count_rows(by_readiness, Readiness.choices, total),
        top_teams=top_teams,
        legacy_sources=legacy_sources,
        last_sync=syncs.first(),
        not_compliant=total - by_readiness.get(Readiness.COMPLIANT, 0),
    )


# --- one mailbox ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fact:
    label: str
    value: str


@dataclass(frozen=True)
class FieldChange:
    label: str
    before: str
    after: str


@dataclass(frozen=True)
class HistoryEntry:
    change: InventoryChange
    fields: list[FieldChange]


@dataclass(frozen=True)
class InventoryMailboxRecord:
    mailbox: InventoryMailbox
    owner: list[Fact]
    email_settings: list[Fact]
    tests: list[Fact]
    exchange: list[Fact]
    links: list[LegacyMailboxLink]
    more_links: bool
    history: list[HistoryEntry]
    more_history: bool


_DATAVERSE_VALUE_LABELS: dict[str, dict[int, str]] = {
    "incoming_delivery": INCOMING_DELIVERY_LABELS,
    "outgoing_delivery": OUTGOING_DELIVERY_LABELS,
    "act_delivery": ACT_DELIVERY_LABELS,
    "email_approval": APPROVAL_LABELS,
    "incoming_status": TEST_STATUS_LABELS,
    "outgoing_status": TEST_STATUS_LABELS,
    "act_status": TEST_STATUS_LABELS,
}
_CHOICE_LABELS: dict[str, dict[str, str]] = {
    "classification": dict(Classification.choices),
    "readiness": dict(Readiness.choices),
    "owner_type": dict(OwnerType.choices),
    "exchange_presence": dict(ExchangePresence.choices),
}
_FIELD_LABELS: dict[str, str] = {
    "name": "Name",
    "email_address": "Email address",
    "owner_name": "Owner",
    "team_name": "Team",
    "business_unit_name": "Business unit",
    "profile_name": "Email server profile",
    "profile_id": "Email server profile",
    "incoming_delivery": "Incoming email",
    "outgoing_delivery": "Outgoing email",
    "act_delivery": "Appointments, contacts and tasks",
    "email_approval": "Email address approval",
    "incoming_status": "Incoming email test",
    "outgoing_status": "Outgoing email test",
    "act_status": "Appointments, contacts and tasks test",
    "exchange_presence": "Exchange Online",
    "user_purpose": "Mailbox type",
    "open_error_alerts": "Open error alerts",
    "removed_at": "Removed",
}


def _change_value(name: str, value: Any) -> str:
    if value is None or value == "":
        return "Not set"
    if isinstance(value, bool):
        return _yes_no(value)
    if name in _DATAVERSE_VALUE_LABELS and isinstance(value, int):
        return dataverse_label(_DATAVERSE_VALUE_LABELS[name], value)
    if name in _CHOICE_LABELS:
        return _CHOICE_LABELS[name].get(str(value), str(value))
    if isinstance(value, list):
        items = [item.get("code", "") if isinstance(item, dict) else str(item) for item in value]
        return ", ".join(item for item in items if item) or "None"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _history_entry(change: InventoryChange) -> HistoryEntry:
    fields = []
    changes = change.changes if isinstance(change.changes, dict) else {}
    for name, pair in changes.items():
        before, after = pair if isinstance(pair, list | tuple) and len(pair) == 2 else (None, pair)
        label = _FIELD_LABELS.get(name, name.replace("_", " ").capitalize())
        fields.append(FieldChange(label, _change_value(name, before), _change_value(name, after)))
    return HistoryEntry(change=change, fields=fields)


def _when(value: dt.datetime | None) -> str:
    return dateformat.format(timezone.localtime(value), "j F Y, H:i") if value else ""


def _yes_no(value: bool) -> str:
    return "Yes" if value else "No"


def inventory_mailbox_facts(mailbox: InventoryMailbox) -> dict[str, list[Fact]]:
    """The mailbox's facts as people read them, with Dataverse's own labels for choice values."""
    owner = [Fact("Owner type", mailbox.get_owner_type_display())]
    if mailbox.owner_type != OwnerType.NONE:
        owner += [
            Fact("Owner", mailbox.owner_name or "Not known"),
            Fact("Owner disabled in Dynamics 365", _yes_no(mailbox.owner_disabled)),
        ]
    owner += [
        Fact("Team", mailbox.team_name or "No team"),
        Fact("Business unit", mailbox.business_unit_name or "Not known"),
    ]
    email_settings = [
        Fact("Incoming email", dataverse_label(INCOMING_DELIVERY_LABELS, mailbox.incoming_delivery)),
        Fact("Outgoing email", dataverse_label(OUTGOING_DELIVERY_LABELS, mailbox.outgoing_delivery)),
        Fact(
            "Appointments, contacts and tasks",
            dataverse_label(ACT_DELIVERY_LABELS, mailbox.act_delivery),
        ),
        Fact(
            "Email server profile",
            mailbox.profile_name or ("No profile" if mailbox.profile_id is None else "Unnamed profile"),
        ),
        Fact("Email address approval", dataverse_label(APPROVAL_LABELS, mailbox.email_approval)),
        Fact("Forward mailbox", _yes_no(mailbox.is_forward_mailbox)),
    ]
    tests = [
        Fact("Incoming email test", dataverse_label(TEST_STATUS_LABELS, mailbox.incoming_status)),
        Fact("Outgoing email test", dataverse_label(TEST_STATUS_LABELS, mailbox.outgoing_status)),
        Fact("Appointments, contacts and tasks test", dataverse_label(TEST_STATUS_LABELS, mailbox.act_status)),
        Fact("Open error alerts", str(mailbox.open_error_alerts)),
    ]
    exchange = [
        Fact("Exchange Online", mailbox.get_exchange_presence_display()),
        Fact("Mailbox type", mailbox.user_purpose or "Not known"),
        Fact("Checked", _when(mailbox.presence_checked_at) or "Not yet"),
    ]
    return {"owner": owner, "email_settings": email_settings, "tests": tests, "exchange": exchange}


def inventory_mailbox_record(mailbox_id: int) -> InventoryMailboxRecord | None:
    """One mailbox with its annotation, legacy source records and history: three queries at any size."""
    mailbox = (
        InventoryMailbox.objects.select_related("annotation", "annotation__updated_by", "last_sync")
        .filter(pk=mailbox_id)
        .first()
    )
    if mailbox is None:
        return None
    links = list(
        LegacyMailboxLink.objects.filter(mailbox_id=mailbox.pk)
        .select_related("source", "router_import")
        # The uploaded file itself stays in the database.
        .defer("router_import__content", "router_import__state_content", "raw")
        .order_by("source__name", "-router_import__uploaded_at", "-id")[: LINKS_LIMIT + 1]
    )
    changes = list(
        InventoryChange.objects.filter(mailbox_id=mailbox.pk)
        .select_related("sync")
        .order_by("-at", "-id")[: HISTORY_LIMIT + 1]
    )
    facts = inventory_mailbox_facts(mailbox)
    return InventoryMailboxRecord(
        mailbox=mailbox,
        owner=facts["owner"],
        email_settings=facts["email_settings"],
        tests=facts["tests"],
        exchange=facts["exchange"],
        links=links[:LINKS_LIMIT],
        more_links=len(links) > LINKS_LIMIT,
        history=[_history_entry(change) for change in changes[:HISTORY_LIMIT]],
        more_history=len(changes) > HISTORY_LIMIT,
    )
