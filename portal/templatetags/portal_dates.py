"""``|when``: Django's ``|date`` for the few formats list pages use, without its per-call cost.

Django's filter looks the format and the month names up through the translation machinery on
every call; a list of fifty rows with two dates each spends more on that than on its query. The
portal speaks British English only, so ``when`` writes the same text directly for the format
characters below and hands any other format to Django's filter.
"""

from __future__ import annotations

import datetime as dt

from django import template
from django.template.defaultfilters import date as django_date

register = template.Library()

_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
_PARTS = {
    "j": lambda value: str(value.day),
    "M": lambda value: _MONTHS[value.month - 1][:3],
    "F": lambda value: _MONTHS[value.month - 1],
    "Y": lambda value: f"{value.year:04d}",
    "H": lambda value: f"{value.hour:02d}",
    "i": lambda value: f"{value.minute:02d}",
    "s": lambda value: f"{value.second:02d}",
}


@register.filter(expects_localtime=True)
def when(value: dt.datetime | None, format_string: str) -> str:
    """The same text as ``value|date:format_string`` (in the current time zone)."""
    if not isinstance(value, dt.datetime):
        return django_date(value, format_string)
    if format_string == "c":
        return value.isoformat()
    if any((char.isalpha() and char not in _PARTS) or char == "\\" for char in format_string):
        return django_date(value, format_string)
    return "".join(_PARTS[char](value) if char in _PARTS else char for char in format_string)
