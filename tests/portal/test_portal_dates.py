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


def test_time_element_writes_what_the_two_filters_wrote_in_one_call():
    values = [dt.datetime(2026, 3, 29, 0, 30, tzinfo=dt.UTC), dt.datetime(2026, 10, 25, 1, 30, tzinfo=dt.UTC)]
    for fmt, extra in (("j M Y H:i", []), ("j F Y", [dt.date(2026, 11, 2)])):
        one = Template('{% load portal_dates %}{% for v in values %}{{ v|time_element:"' + fmt + '" }};{% endfor %}')
        two = Template(
            "{% load portal_dates %}{% for v in values %}"
            '<time datetime="{{ v|date:\'c\' }}">{{ v|date:"' + fmt + '" }}</time>;{% endfor %}'
        )
        context = {"values": values + extra}
        assert one.render(Context(context)) == two.render(Context(context))
    assert Template("{% load portal_dates %}[{{ v|time_element:'j M Y' }}]").render(Context({"v": None})) == "[]"


def test_since_and_until_word_a_gap_exactly_as_timesince_and_timeuntil_do():
    now = dt.datetime(2026, 11, 27, 8, 0, 34, tzinfo=dt.UTC)
    gaps = [dt.timedelta(0), dt.timedelta(seconds=59), dt.timedelta(minutes=1), dt.timedelta(hours=1, minutes=1)]
    days = (1, 2, 6, 7, 13, 30, 31, 59, 365, 400)
    gaps += [dt.timedelta(days=day, hours=hours) for day in days for hours in (0, 5)]
    values = [now + sign * gap for gap in gaps for sign in (1, -1)]
    for ours, django in (("since", "timesince"), ("until", "timeuntil")):
        mine = Template("{% load portal_dates %}{% for v in values %}{{ v|" + ours + ":now }};{% endfor %}")
        theirs = Template("{% for v in values %}{{ v|" + django + ":now }};{% endfor %}")
        context = {"values": [*values, None], "now": now}
        assert mine.render(Context(context)) == theirs.render(Context(context))
