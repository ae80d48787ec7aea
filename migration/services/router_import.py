"""Importing Email Router configuration files.

(Interface fixed; bodies to be written.)
"""

from __future__ import annotations

from migration.models import RouterImport


def router_import_run(*, import_id: int) -> RouterImport | None:
    raise NotImplementedError
