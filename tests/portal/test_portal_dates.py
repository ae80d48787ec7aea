"""``|when`` writes exactly what Django's ``|date`` writes, in the portal's time zone, across clock changes."""

from __future__ import annotations

import datetime as dt

import pytest
from django.template import Context, Template

FORMATS = ("j M Y H:i", "j M Y H:i:s", "j F Y", "j M Y", "c", "D j M")  # the last goes to Django's filter


def _render(filter_name: str, values: list) -> str:
    body = "|".join(f'{{{{ v|{filter_name}:"{fmt}" }}}}' for fmt in FORMATS)
    template = Template("{% load portal_dates %}{% for v in values %}" + body + ";{% endfor %}")
    return template.render(Context({"values": values}))


def test_when_matches_django_date_either_side_of_the_clock_changes():
    # Every half hour through the spring and autumn changes in Europe/London, plus ordinary moments.
    starts = [dt.datetime(2026, 3, 28, 22, tzinfo=dt.UTC), dt.datetime(2026, 10, 24, 22, tzinfo=dt.UTC)]
    values = [start + dt.timedelta(minutes=30 * step) for start in starts for step in range(20)]
    values += [
        dt.datetime(2027, 1, 9, 7, 5, 3, 120, tzinfo=dt.UTC),
        dt.datetime(1999, 12, 31, 23, 59, 59, tzinfo=dt.UTC),
    ]

    assert _render("when", values) == _render("date", values)


@pytest.mark.parametrize("value", [None, ""])
def test_when_writes_nothing_for_a_missing_moment(value):
    assert _render("when", [value]) == _render("date", [value])
