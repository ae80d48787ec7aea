# ruff: noqa: S608 - the SQL here interpolates only this module's own table names; values are parameters.
"""Scratch tables for one discovery run: owners, business units, teams, open alerts and ids listed.

Discovery needs to know every mailbox's owner while it streams the mailboxes, and (in an
incremental run) which mailboxes Dataverse still lists. Held in Python those grow with the
organisation (100,000 owners and ids are tens of megabytes); held here they stay in the
database, and the run's memory stays flat. The tables are temporary: they belong to the run's
database connection, vanish with it, and are dropped when the run ends. Only the thread that
opened them may use them (Django's connections are per thread).

Ids are stored with the database's own UUID type, so the tables join directly with the
inventory's ``dataverse_id`` column.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from django.db import DatabaseError
from django.db import connection as default_connection
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Q, UUIDField
from django.db.models.expressions import RawSQL

from migration.models import InventoryMailbox

OWNERS = "tmp_discovery_owner"
BUSINESS_UNITS = "tmp_discovery_business_unit"
TEAMS = "tmp_discovery_team"
ALERTS = "tmp_discovery_alert"
SEEN = "tmp_discovery_seen"
logger = logging.getLogger(__name__)

# SQLite allows 999 parameters in older builds; stay well below it.
IN_CHUNK = 500


@dataclass(frozen=True)
class Owner:
    """A mailbox's user or queue, with the names of its business unit and team."""

    id: uuid.UUID
    kind: str  # "user" or "queue"
    name: str
    disabled: bool
    business_unit_id: uuid.UUID | None
    business_unit_name: str
    team_name: str
    entra_object_id: str | None  # users only: the directory object behind the Dynamics 365 user


@dataclass(frozen=True)
class OwnerRow:
    """What is stored for an owner; names of business units and teams are joined on reading."""

    id: uuid.UUID
    kind: str
    name: str
    disabled: bool
    business_unit_id: uuid.UUID | None
    owning_team_id: uuid.UUID | None  # queues: the team that owns the queue, when a team does
    entra_object_id: str | None


def as_uuid(value: Any) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


def copy_rows(
    connection: BaseDatabaseWrapper, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]
) -> int:
    """Append rows to ``table`` (quoted names): PostgreSQL's COPY, else one executemany.

    COPY streams the rows without building an INSERT statement per batch; at tens of thousands
    of rows it is several times quicker than ``bulk_create``. Returns how many rows were written.
    """
    written = 0
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            with cursor.cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
                    written += 1
            return written
        values = list(rows)
        if values:
            placeholders = ", ".join(["%s"] * len(columns))
            cursor.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({placeholders})", values)
        return len(values)


def among(lookup: str, values: Iterable[Any], *, array_type: str) -> Q:
    """``Q(<lookup>__in=values)``; on PostgreSQL as one array parameter.

    A thousand separate placeholders make a long statement the driver must parse every time
    (too long for its cache); one array is cheap to send and to plan.
    """
    if array_type not in ("uuid", "bigint"):
        raise ValueError(f"unsupported array type {array_type!r}")
    listed = list(values)
    if default_connection.vendor == "postgresql":
        subquery = RawSQL(f"SELECT unnest(%s::{array_type}[])", [listed])  # noqa: S611 - fixed SQL, values as a parameter
        return Q(**{f"{lookup}__in": subquery})
    return Q(**{f"{lookup}__in": listed})


def chunked(values: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


class Scratch:
    """The run's temporary tables; use as a context manager on the run's own thread."""

    def __init__(self, connection: BaseDatabaseWrapper | None = None) -> None:
        self.connection = connection or default_connection
        self._uuid_field = UUIDField()
        self._uuid_type = self._uuid_field.db_type(self.connection)
        self.inventory_table = self.q(InventoryMailbox._meta.db_table)

    # --- lifetime ---------------------------------------------------------------------------

    def __enter__(self) -> Scratch:
        uuid_type = self._uuid_type
        self._drop()
        self._execute(
            f"CREATE TEMPORARY TABLE {self.q(BUSINESS_UNITS)} ("
            f"id {uuid_type} PRIMARY KEY, name varchar(300) NOT NULL, team_name varchar(300) NOT NULL DEFAULT '')"
        )
        self._execute(
            f"CREATE TEMPORARY TABLE {self.q(TEAMS)} ("
            f"id {uuid_type} PRIMARY KEY, name varchar(300) NOT NULL, business_unit_id {uuid_type} NULL)"
        )
        # Owners and seen ids are appended as read (COPY cannot skip duplicates), so their ids are
        # indexed but not unique: a row Dataverse happened to send twice does no harm.
        self._execute(
            f"CREATE TEMPORARY TABLE {self.q(OWNERS)} ("
            f"id {uuid_type} NOT NULL, kind varchar(10) NOT NULL, name varchar(300) NOT NULL, "
            f"disabled boolean NOT NULL, business_unit_id {uuid_type} NULL, owning_team_id {uuid_type} NULL, "
            "entra_object_id varchar(64) NULL)"
        )
        self._execute(f"CREATE INDEX {self.q(OWNERS + '_id')} ON {self.q(OWNERS)} (id)")
        # One row per open alert; counted per mailbox when read.
        self._execute(f"CREATE TEMPORARY TABLE {self.q(ALERTS)} (mailbox_id {uuid_type} NOT NULL)")
        self._execute(f"CREATE INDEX {self.q(ALERTS + '_mailbox')} ON {self.q(ALERTS)} (mailbox_id)")
        self._execute(f"CREATE TEMPORARY TABLE {self.q(SEEN)} (id {uuid_type} NOT NULL)")
        self._execute(f"CREATE INDEX {self.q(SEEN + '_id')} ON {self.q(SEEN)} (id)")
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.connection.connection is None:
            return  # the connection is gone, and its temporary tables with it
        if exc is None:
            self._drop()
            return
        try:
            self._drop()
        except DatabaseError:
            # The run's own error matters more; the tables go with the connection anyway.
            logger.warning("could not drop discovery's scratch tables", exc_info=True)

    def _drop(self) -> None:
        for table in (SEEN, ALERTS, OWNERS, TEAMS, BUSINESS_UNITS):
            self._execute(f"DROP TABLE IF EXISTS {self.q(table)}")

    # --- writing ----------------------------------------------------------------------------

    def add_business_units(self, rows: Iterable[tuple[uuid.UUID, str]]) -> None:
        self._insert(BUSINESS_UNITS, ("id", "name"), ((self.db(id_), name[:300]) for id_, name in rows))

    def add_teams(self, rows: Iterable[tuple[uuid.UUID, str, uuid.UUID | None]]) -> None:
        self._insert(
            TEAMS,
            ("id", "name", "business_unit_id"),
            ((self.db(id_), name[:300], self.db(unit)) for id_, name, unit in rows),
        )

    def settle_teams(self) -> None:
        """Give each business unit a team for the users in it: its first team by name.

        Dataverse has no single team for a user (membership is many-to-many); the business
        unit's own team is the useful grouping for the inventory.
        """
        self._execute(
            f"UPDATE {self.q(BUSINESS_UNITS)} SET team_name = COALESCE(("
            f"SELECT MIN(t.name) FROM {self.q(TEAMS)} t WHERE t.business_unit_id = {self.q(BUSINESS_UNITS)}.id"
            "), '')"
        )

    def add_owners(self, rows: Sequence[OwnerRow]) -> None:
        self._copy(
            OWNERS,
            ("id", "kind", "name", "disabled", "business_unit_id", "owning_team_id", "entra_object_id"),
            (
                (
                    self.db(row.id),
                    str(row.kind),
                    row.name[:300],
                    row.disabled,
                    self.db(row.business_unit_id),
                    self.db(row.owning_team_id),
                    row.entra_object_id,
                )
                for row in rows
            ),
        )

    def add_alerts(self, mailbox_ids: Iterable[uuid.UUID]) -> None:
        """One open error alert per id given (a mailbox with three alerts is given three times)."""
        self._copy(ALERTS, ("mailbox_id",), ((self.db(id_),) for id_ in mailbox_ids))

    def add_seen(self, ids: Iterable[uuid.UUID]) -> None:
        self._copy(SEEN, ("id",), ((self.db(id_),) for id_ in ids))

    # --- reading ----------------------------------------------------------------------------

    def owners(self, ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, Owner]:
        wanted = list(dict.fromkeys(ids))
        found: dict[uuid.UUID, Owner] = {}
        for placeholders, params in self._id_chunks(wanted):
            sql = (
                "SELECT o.id, o.kind, o.name, o.disabled, o.business_unit_id, COALESCE(b.name, ''), "
                "COALESCE(t.name, b.team_name, ''), o.entra_object_id "
                f"FROM {self.q(OWNERS)} o "
                f"LEFT JOIN {self.q(BUSINESS_UNITS)} b ON b.id = o.business_unit_id "
                f"LEFT JOIN {self.q(TEAMS)} t ON t.id = o.owning_team_id "
                f"WHERE o.id {placeholders}"
            )
            for row in self._fetch(sql, params):
                owner = Owner(
                    id=as_uuid(row[0]),
                    kind=row[1],
                    name=row[2],
                    disabled=bool(row[3]),
                    business_unit_id=as_uuid(row[4]) if row[4] is not None else None,
                    business_unit_name=row[5],
                    team_name=row[6],
                    entra_object_id=row[7],
                )
                found[owner.id] = owner
        return found

    def alert_counts(self, ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, int]:
        wanted = list(ids)
        counts: dict[uuid.UUID, int] = {}
        for placeholders, params in self._id_chunks(wanted):
            sql = (
                f"SELECT mailbox_id, COUNT(*) FROM {self.q(ALERTS)} WHERE mailbox_id {placeholders} GROUP BY mailbox_id"
            )
            for mailbox_id, n in self._fetch(sql, params):
                counts[as_uuid(mailbox_id)] = n
        return counts

    def analyze(self) -> None:
        """Give the planner row counts for the freshly filled tables (nothing analyses temporary tables)."""
        for table in (OWNERS, ALERTS, SEEN):
            self._execute(f"ANALYZE {self.q(table)}")

    def seen_count(self) -> int:
        return self._fetch(f"SELECT COUNT(*) FROM {self.q(SEEN)}", [])[0][0]

    def unknown_seen(self, *, after: uuid.UUID | None, limit: int) -> list[uuid.UUID]:
        """Ids seen in Dataverse that the inventory lacks or holds as removed, in id order from ``after``."""
        sql = (
            f"SELECT DISTINCT s.id FROM {self.q(SEEN)} s WHERE NOT EXISTS ("
            f"SELECT 1 FROM {self.inventory_table} m WHERE m.dataverse_id = s.id AND m.removed_at IS NULL)"
        )
        params: list[Any] = []
        if after is not None:
            sql += " AND s.id > %s"
            params.append(self.db(after))
        sql += " ORDER BY s.id LIMIT %s"
        params.append(limit)
        return [as_uuid(row[0]) for row in self._fetch(sql, params)]

    # subqueries for the inventory's querysets (RawSQL)

    def owner_ids_sql(self) -> str:
        return f"SELECT id FROM {self.q(OWNERS)}"

    def alert_ids_sql(self) -> str:
        return f"SELECT mailbox_id FROM {self.q(ALERTS)}"

    def seen_ids_sql(self) -> str:
        return f"SELECT id FROM {self.q(SEEN)}"

    # --- plumbing ---------------------------------------------------------------------------

    def q(self, name: str) -> str:
        return self.connection.ops.quote_name(name)

    def db(self, value: uuid.UUID | None) -> Any:
        """A UUID as this database stores it (native uuid, or 32 hex characters in SQLite)."""
        return None if value is None else self._uuid_field.get_db_prep_value(value, self.connection)

    def _insert(self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        values = list(rows)
        if not values:
            return
        placeholders = ", ".join(["%s"] * len(columns))
        sql = f"INSERT INTO {self.q(table)} ({', '.join(columns)}) VALUES ({placeholders}) ON CONFLICT (id) DO NOTHING"
        with self.connection.cursor() as cursor:
            cursor.executemany(sql, values)

    def _id_chunks(self, ids: Sequence[uuid.UUID]) -> Iterator[tuple[str, list[Any]]]:
        """``("= ANY(%s)" or "IN (…)", parameters)`` for matching a column against ``ids``."""
        if self.connection.vendor == "postgresql":
            if ids:
                yield "= ANY(%s)", [list(ids)]
            return
        for chunk in chunked(ids, IN_CHUNK):
            yield f"IN ({', '.join(['%s'] * len(chunk))})", [self.db(id_) for id_ in chunk]

    def _copy(self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        copy_rows(self.connection, self.q(table), [self.q(column) for column in columns], rows)

    def _execute(self, sql: str) -> None:
        with self.connection.cursor() as cursor:
            cursor.execute(sql)

    def _fetch(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        with self.connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall()
