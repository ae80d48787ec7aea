"""``|when``, ``|time_element``, ``|since`` and ``|until``: Django's ``|date``, ``|timesince``
and ``|timeuntil`` for list pages, without their per-call cost.

Django's filters look formats, month names and unit names up through the translation machinery
on every call; a list of fifty rows with two dates each spends more on that than on its query.
The portal speaks British English only, so these write the same text directly: ``when`` for the
format characters below (any other format goes to Django's filter), ``since`` and ``until`` as
``portal.dates`` words them.
"""

from __future__ import annotations

import datetime as dt
from functools import lru_cache

from django import template
from django.template.defaultfilters import date as django_date
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from portal.dates import since, until

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
# Each format character as a ``str.format`` field of the value ``v``, its month name ``month``.
_FIELDS = {
    "j": "{v.day}",
    "M": "{month:.3}",
    "F": "{month}",
    "Y": "{v.year:04d}",
    "H": "{v.hour:02d}",
    "i": "{v.minute:02d}",
    "s": "{v.second:02d}",
}


@lru_cache(maxsize=64)
def _template_for(format_string: str) -> str | None:
    """``format_string`` as a ``str.format`` template, or ``None`` when it needs Django's filter."""
    if any((char.isalpha() and char not in _FIELDS) or char == "\\" for char in format_string):
        return None
    return "".join(_FIELDS.get(char) or char.replace("{", "{{").replace("}", "}}") for char in format_string)


@register.filter(expects_localtime=True)
def when(value: dt.datetime | None, format_string: str) -> str:
    """The same text as ``value|date:format_string`` (in the current time zone)."""
    if not isinstance(value, dt.datetime):
        return django_date(value, format_string)
    if format_string == "c":
        return value.isoformat()
    template_string = _template_for(format_string)
    if template_string is None:
        return django_date(value, format_string)
    return template_string.format(v=value, month=_MONTHS[value.month - 1])


@register.filter(expects_localtime=True)
def time_element(value: dt.datetime | dt.date | None, format_string: str) -> SafeString | str:
    """``<time datetime="…">…</time>`` for ``value``, its text in ``format_string``: what
    ``<time datetime="{{ value|when:'c' }}">{{ value|when:format_string }}</time>`` writes, in one
    call, for table cells. Nothing at all for a missing value."""
    if not isinstance(value, dt.date):
        return ""
    return mark_safe(f'<time datetime="{value.isoformat()}">{escape(when(value, format_string))}</time>')  # noqa: S308 - both parts escaped or generated


@register.filter(name="since")
def since_filter(value: dt.datetime | None, now: dt.datetime | None = None) -> str:
    """The same text as ``value|timesince:now`` ("4 days, 6 hours")."""
    return since(value, now)


@register.filter(name="until")
def until_filter(value: dt.datetime | None, now: dt.datetime | None = None) -> str:
    """The same text as ``value|timeuntil:now`` ("4 days, 6 hours")."""
    return until(value, now)
