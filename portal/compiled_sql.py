"""SQL built through the ORM once per shape of query, then run as often as needed.

For a few hot reads the ORM takes several times longer to build a query than the database takes
to answer it: an approver's inbox is a dozen nested conditions, rebuilt for every page view
although it only ever differs in who is asking. ``compiled`` keeps what a queryset compiles to
(its SQL, parameters and the converters that turn the database's values into Python's, such as
SQLite's text dates) under a key naming everything that shapes it; ``rows`` runs it. The query
itself is never cached: every call reads the database.

Keys must name everything the SQL depends on. The store is per process and bounded.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from django.db import connections
from django.db.models import QuerySet
from django.db.models.sql.compiler import SQLCompiler

_LIMIT = 2048


@dataclass(frozen=True)
class Compiled:
    sql: str
    params: tuple[Any, ...]
    compiler: SQLCompiler
    converters: dict
    # Where each stand-in value sits among ``params``, and whether the database's adapter wrote it
    # as text there (as SQLite's does dates).
    slots: tuple[tuple[tuple[int, bool], ...], ...]


_compiled: dict[Hashable, Compiled] = {}


def compiled(key: Hashable, build: Callable[[], QuerySet], stand_ins: Sequence[Any] = ()) -> Compiled:
    """What ``build()``'s query compiles to, worked out the first time ``key`` is seen.

    ``build`` may use ``stand_ins`` (values no real row has) where a caller's values go: ``rows``
    then puts the caller's values in their places.
    """
    found = _compiled.get(key)
    if found is None:
        queryset = build()
        compiler = queryset.query.get_compiler(queryset.db)
        sql, params = compiler.as_sql()
        converters = compiler.get_converters([column for column, _, _ in compiler.select[: compiler.col_count]])
        slots = tuple(
            tuple(
                (i, param == str(stand_in))
                for i, param in enumerate(params)
                if param == stand_in or param == str(stand_in)
            )
            for stand_in in stand_ins
        )
        if not all(slots):
            raise ValueError(f"The query for {key!r} does not use every stand-in value it was given.")
        found = Compiled(sql=sql, params=tuple(params), compiler=compiler, converters=converters, slots=slots)
        if len(_compiled) >= _LIMIT:
            _compiled.clear()
        _compiled[key] = found
    return found


def rows(query: Compiled, params: Sequence[Any] | None = None, *, values: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """The rows ``query`` returns as the ORM would give them (``values_list``): with its own
    parameters, all of them replaced by ``params``, or its stand-ins replaced by ``values``."""
    if params is None:
        params = query.params
        if values:
            params = list(params)
            for positions, value in zip(query.slots, values, strict=True):
                for position, as_text in positions:
                    params[position] = str(value) if as_text else value
    with connections[query.compiler.using].cursor() as cursor:
        cursor.execute(query.sql, params)
        fetched = cursor.fetchall()
    if query.converters:
        return [tuple(row) for row in query.compiler.apply_converters(fetched, query.converters)]
    return fetched
