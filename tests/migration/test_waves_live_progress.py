"""The wave page's live progress in a real browser: the bar and the mailboxes' state tags follow the
wave as it runs, without reloading the page, under the portal's content security policy."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connections
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from playwright.sync_api import expect

from migration.models import WaveMailbox, WaveMailboxState, WaveStatus
from tests.browser import chromium, screenshot
from tests.migration.factories import WaveFactory, WaveMailboxFactory

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def in_database(work: Callable[[], object]) -> None:
    """Change the database while the browser is open.

    Playwright's sync API keeps an event loop running on the test's thread, where Django refuses
    ORM calls; a short-lived thread does the work and closes its connection.
    """

    def run() -> None:
        try:
            work()
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(run).result()


def test_the_progress_bar_and_states_update_without_a_reload(live_server, migration_lead, monkeypatch):
    from migration.views import waves as wave_views

    monkeypatch.setattr(wave_views, "POLL_SECONDS", 1)  # the script's floor is 2 seconds
    wave = WaveFactory(created_by=migration_lead, status=WaveStatus.RUNNING, started_at=timezone.now())
    first = WaveMailboxFactory(wave=wave, position=1, state=WaveMailboxState.RUNNING)
    WaveMailboxFactory(wave=wave, position=2, state=WaveMailboxState.PENDING)
    signed_in = Client()
    signed_in.force_login(migration_lead)
    session = signed_in.cookies["sessionid"].value

    with chromium() as browser:
        context = browser.new_context()
        context.add_cookies([{"name": "sessionid", "value": session, "url": live_server.url}])
        page = context.new_page()
        problems: list[str] = []
        page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
        page.goto(live_server.url + reverse("migration:wave", args=[wave.pk]))
        page.evaluate("window.portalMarker = 'same page'")
        bar = page.get_by_role("progressbar")
        expect(bar).to_have_attribute("aria-valuenow", "0")

        in_database(
            lambda: WaveMailbox.objects.filter(pk=first.pk).update(state=WaveMailboxState.MIGRATED, active=False)
        )

        expect(bar).to_have_attribute("aria-valuenow", "50", timeout=20_000)
        expect(page.locator(f'[data-entry-state="{first.pk}"]')).to_have_text("Migrated")
        expect(page.locator("[data-wave-percent]")).to_have_text("50")
        assert page.evaluate("window.portalMarker") == "same page"  # updated in place, not reloaded
        screenshot(page, "wave-live-progress")

        in_database(lambda: WaveMailbox.objects.filter(wave=wave).update(state=WaveMailboxState.MIGRATED, active=False))
        expect(bar).to_have_attribute("aria-valuenow", "100", timeout=20_000)
        assert not [text for text in problems if "Content Security Policy" in text]
