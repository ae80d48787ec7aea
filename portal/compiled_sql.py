"""SQL built through the ORM once per shape of query, then run as often as needed.

For a few hot reads the ORM takes several times longer to build a query than PostgreSQL takes to
answer it: an approver's inbox is a dozen nested conditions, rebuilt for every page view although
it only ever differs in who is asking. ``compiled`` keeps the SQL a queryset compiles to under a
key naming everything that shapes it; ``rows`` runs SQL and returns its rows. The query itself is
never cached: every call reads the database.

Keys must name everything the SQL depends on. The store is per process and bounded.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

from django.db import connections, router
from django.db.models import Model, QuerySet

_LIMIT = 2048
_compiled: dict[Hashable, tuple[str, tuple[Any, ...]]] = {}


def compiled(key: Hashable, build: Callable[[], QuerySet]) -> tuple[str, tuple[Any, ...]]:
    """The SQL and parameters of ``build()``'s query, built the first time ``key`` is seen."""
    found = _compiled.get(key)
    if found is None:
        sql, params = build().query.sql_with_params()
        found = (sql, tuple(params))
        if len(_compiled) >= _LIMIT:
            _compiled.clear()
        _compiled[key] = found
    return found


def rows(model: type[Model], sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    """The rows ``sql`` returns, read from the database ``model`` is read from."""
    with connections[router.db_for_read(model)].cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()
