"""The per-mailbox timeline: inventory history, alerts, pre-flight, waves, steps and audit events in
one list, newest first, bounded, at a constant number of queries."""

from __future__ import annotations

import datetime as dt
import re
from html import unescape

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from migration.models import Classification, MigrationStep, Readiness, WaveMailboxState
from migration.selectors.timeline import TIMELINE_LIMIT, mailbox_timeline
from portal.audit.services import audit_record
from tests.migration.factories import (
    InventoryChangeFactory,
    InventoryMailboxFactory,
    PreflightResultFactory,
    WaveFactory,
    WaveMailboxFactory,
)

pytestmark = pytest.mark.django_db

T0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)


def at(minutes: int) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


@pytest.fixture
def mailbox():
    return InventoryMailboxFactory(
        name="Complaints",
        email_address="complaints@example.gov.uk",
        classification=Classification.EMAIL_ROUTER,
        readiness=Readiness.READY,
    )


def step(entry, order, name, *, started, finished=None, status="succeeded", error=""):
    return MigrationStep.objects.create(
        entry=entry,
        order=order,
        name=name,
        status=status,
        idempotency_key=f"{entry.pk}:{order}:{name}",
        started_at=started,
        finished_at=finished,
        error=error,
    )


@pytest.fixture
def story(mailbox, migration_lead):
    """A mailbox found on the router, with an alert, checked, migrated after one failed step, annotated."""
    InventoryChangeFactory(mailbox=mailbox, at=at(0), changes={"classification": ["compliant_sss", "email_router"]})
    InventoryChangeFactory(mailbox=mailbox, at=at(10), changes={"open_error_alerts": [0, 2]})
    wave = WaveFactory(name="Customer queues")
    PreflightResultFactory(
        mailbox=mailbox,
        preflight__wave=wave,
        verdict="ready",
        checked_at=at(20),
        changes=[{"field": "incomingemaildeliverymethod", "label": "Incoming email", "before": 0, "after": 2}],
    )
    entry = WaveMailboxFactory(
        wave=wave,
        mailbox=mailbox,
        state=WaveMailboxState.MIGRATED,
        active=False,
        started_at=at(30),
        finished_at=at(60),
    )
    step(entry, 1, "snapshot", started=at(31), finished=at(32))
    step(entry, 2, "bind_profile", started=at(40), finished=at(41), status="failed", error="Dataverse said 503")
    step(
        entry, 3, "test_enable", started=at(50), status="running"
    )  # still running when it was looked at: no finish time
    step(entry, 4, "never_started", started=None)
    audit_record(
        actor=migration_lead, action="annotation.updated", object_type="inventory_mailbox", object_id=mailbox.pk
    )
    audit_record(actor=None, action="wave_mailbox.migrated", object_type="wave_mailbox", object_id=entry.pk)
    audit_record(actor=None, action="unrelated.thing", object_type="inventory_mailbox", object_id=mailbox.pk + 1)
    return entry


def test_the_timeline_joins_every_source_newest_first(mailbox, story):
    timeline = mailbox_timeline(mailbox)

    titles = [entry.title for entry in timeline.entries]
    audit = titles[:2]  # recorded just now, after everything dated in March
    assert set(audit) == {"annotation.updated by Tom Fletcher (tom)", "wave_mailbox.migrated by System"}
    assert titles[2:] == [
        "Migrated in wave Customer queues",
        "Test enable: running (wave Customer queues)",
        "Bind profile: failed (wave Customer queues)",
        "Snapshot: done (wave Customer queues)",
        "Migration started in wave Customer queues",
        "Pre-flight: Would migrate (wave Customer queues)",
        "Discovery saw a change",
        "Discovery saw a change",
    ]
    kinds = [entry.kind for entry in timeline.entries]
    assert kinds[-2:] == ["alert", "inventory"]
    times = [entry.at for entry in timeline.entries]
    assert times == sorted(times, reverse=True)
    failed = next(entry for entry in timeline.entries if entry.title.startswith("Bind profile"))
    assert failed.problem and "Dataverse said 503" in failed.details[0]
    assert not any("unrelated" in title for title in titles)


def test_the_mailbox_page_shows_the_timeline(mailbox, story, migration_lead, client_for):
    html = unescape(
        client_for(migration_lead).get(reverse("migration:inventory_mailbox", args=[mailbox.pk])).content.decode()
    )
    timeline = html.split('id="timeline"', 1)[1].split("</ol>", 1)[0]
    text = " ".join(re.sub(r"<[^>]+>", " ", timeline).split())

    assert text.index("Migrated in wave Customer queues") < text.index("Pre-flight: Would migrate")
    assert "Open error alerts: 0 → 2" in text
    assert "Incoming email: 0 → 2" in text
    assert "Dataverse said 503" in text


def test_the_timeline_keeps_the_newest_hundred(mailbox):
    now = timezone.now()
    for minute in range(TIMELINE_LIMIT + 20):
        InventoryChangeFactory(mailbox=mailbox, at=now - dt.timedelta(minutes=minute), changes={"name": ["a", "b"]})

    timeline = mailbox_timeline(mailbox)

    assert len(timeline.entries) == TIMELINE_LIMIT and timeline.truncated
    assert timeline.entries[0].at == max(entry.at for entry in timeline.entries)


def test_the_timeline_costs_the_same_queries_however_long(
    mailbox, migration_lead, client_for, django_assert_num_queries
):
    client = client_for(migration_lead)
    url = reverse("migration:inventory_mailbox", args=[mailbox.pk])

    def add(n):
        for index in range(n):
            InventoryChangeFactory(mailbox=mailbox, changes={"open_error_alerts": [index, index + 1]})
            wave = WaveFactory()
            PreflightResultFactory(mailbox=mailbox, preflight__wave=wave)
            entry = WaveMailboxFactory(wave=wave, mailbox=mailbox, active=False, started_at=timezone.now())
            step(entry, 1, "snapshot", started=timezone.now(), finished=timezone.now())
            audit_record(actor=migration_lead, action="x.y", object_type="wave_mailbox", object_id=entry.pk)

    add(1)
    with CaptureQueriesContext(connection) as few:
        assert client.get(url).status_code == 200
    add(8)
    with django_assert_num_queries(len(few.captured_queries)):
        assert client.get(url).status_code == 200


def test_a_mailbox_with_nothing_recorded_says_so(mailbox, migration_lead, client_for):
    html = client_for(migration_lead).get(reverse("migration:inventory_mailbox", args=[mailbox.pk])).content.decode()
    assert "Nothing has been recorded about this mailbox yet." in html
