"""How long ago, or how long until: Django's ``timesince`` and ``timeuntil`` in English, cheaply.

Django's functions look each unit's name, and the comma between them, up through the translation
machinery on every call, and mark each part lazily against line breaks. The portal speaks British
English only, and lists show these on every row, so this is Django's own algorithm (depth 2) with
the English words written in: the same text, non-breaking spaces included, at a fraction of the
cost. ``tests/portal/test_portal_dates.py`` holds it to Django's output.
"""

from __future__ import annotations

import datetime as dt

from django.utils.timesince import MONTHS_DAYS, TIME_CHUNKS
from django.utils.timezone import is_aware

_UNITS = ("year", "month", "week", "day", "hour", "minute")
_NOTHING = "0\xa0minutes"


def _words(count: int, unit: str) -> str:
    return f"{count}\xa0{unit}" if count == 1 else f"{count}\xa0{unit}s"


def _gap(d: dt.datetime | dt.date, now: dt.datetime | dt.date | None, *, reverse: bool) -> str:
    if not isinstance(d, dt.datetime):
        d = dt.datetime(d.year, d.month, d.day)
    if now and not isinstance(now, dt.datetime):
        now = dt.datetime(now.year, now.month, now.day)
    if not now:
        now = dt.datetime.now(d.tzinfo if is_aware(d) else None)
    elif is_aware(now) and is_aware(d):
        now = now.astimezone(d.tzinfo)
    if reverse:
        d, now = now, d
    delta = now - d
    if delta.days * 86400 + delta.seconds <= 0:
        return _NOTHING
    total_months = (now.year - d.year) * 12 + (now.month - d.month)
    if d.day > now.day or (d.day == now.day and d.time() > now.time()):
        total_months -= 1
    years, months = divmod(total_months, 12)
    if years or months:
        pivot_year, pivot_month = d.year + years, d.month + months
        if pivot_month > 12:
            pivot_month -= 12
            pivot_year += 1
        pivot = dt.datetime(
            pivot_year,
            pivot_month,
            min(MONTHS_DAYS[pivot_month - 1], d.day),
            d.hour,
            d.minute,
            d.second,
            tzinfo=d.tzinfo,
        )
    else:
        pivot = d
    remaining = (now - pivot).total_seconds()
    partials = [years, months]
    for chunk in TIME_CHUNKS:
        count = int(remaining // chunk)
        partials.append(count)
        remaining -= chunk * count
    first = next((i for i, value in enumerate(partials) if value != 0), None)
    if first is None:
        return _NOTHING
    words = [_words(partials[first], _UNITS[first])]
    if first + 1 < len(partials) and partials[first + 1] != 0:
        words.append(_words(partials[first + 1], _UNITS[first + 1]))
    return ", ".join(words)


def since(value: dt.datetime | None, now: dt.datetime | None = None) -> str:
    """The same text as ``value|timesince:now`` ("4 days, 6 hours")."""
    if not value:
        return ""
    try:
        return _gap(value, now or None, reverse=False)
    except (ValueError, TypeError):
        return ""


def until(value: dt.datetime | None, now: dt.datetime | None = None) -> str:
    """The same text as ``value|timeuntil:now`` ("4 days, 6 hours")."""
    if not value:
        return ""
    try:
        return _gap(value, now or None, reverse=True)
    except (ValueError, TypeError):
        return ""
