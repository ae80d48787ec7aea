"""SQL built once per shape: every run reads the database, with the caller's values in place."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from django.utils import timezone

from onboarding.models import Delegation
from portal import compiled_sql
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

SOMEONE = -777_000_111
SOME_DAY = dt.date(1, 3, 5)


def _active_on(person_id: int, day: dt.date):
    return Delegation.objects.filter(delegate_id=person_id, starts_on__lte=day, ends_on__gte=day).values_list(
        "delegator_id", "starts_on"
    )


def test_the_callers_values_take_the_stand_ins_places_and_each_run_reads_the_rows_as_they_are_now():
    key = ("test delegations", uuid.uuid4().hex)
    delegate, first, second = (UserFactory(username=name) for name in ("dee", "fay", "gus"))
    today = timezone.localdate()
    Delegation.objects.create(
        delegator=first, delegate=delegate, starts_on=today, ends_on=today, created_at=timezone.now()
    )

    def run(person_id: int, day: dt.date) -> list[tuple]:
        query = compiled_sql.compiled(key, lambda: _active_on(SOMEONE, SOME_DAY), stand_ins=(SOMEONE, SOME_DAY))
        return compiled_sql.rows(query, values=(person_id, day))

    assert run(delegate.pk, today) == list(_active_on(delegate.pk, today)) == [(first.pk, today)]
    assert run(delegate.pk, today + dt.timedelta(days=1)) == []
    assert run(first.pk, today) == []

    Delegation.objects.create(
        delegator=second, delegate=delegate, starts_on=today, ends_on=today, created_at=timezone.now()
    )
    assert (
        sorted(run(delegate.pk, today))
        == sorted(_active_on(delegate.pk, today))
        == [
            (first.pk, today),
            (second.pk, today),
        ]
    )


def test_a_stand_in_the_query_does_not_use_is_refused():
    with pytest.raises(ValueError, match="does not use every stand-in"):
        compiled_sql.compiled(
            ("test unused", uuid.uuid4().hex), lambda: _active_on(SOMEONE, SOME_DAY), stand_ins=(SOMEONE, 424242)
        )
