"""CSV output that spreadsheet programs cannot mistake for formulas."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from typing import Any

# OWASP's list: a leading =, +, -, @, tab or carriage return starts a formula.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def neutralise(value: Any) -> str:
    text = "" if value is None else str(value)
    if text.startswith(FORMULA_PREFIXES):
        return "'" + text
    return text


class _Echo:
    def write(self, value: str) -> str:
        return value


def csv_rows(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> Iterator[str]:
    """Yield encoded CSV lines one at a time, so large exports stream."""
    writer = csv.writer(_Echo())
    yield "\ufeff" + writer.writerow([neutralise(cell) for cell in header])
    for row in rows:
        yield writer.writerow([neutralise(cell) for cell in row])
