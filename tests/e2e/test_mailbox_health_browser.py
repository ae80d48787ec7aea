"""Mailbox health in a real browser, against the README's run command and its tenant simulator.

A platform admin reads the demo organisation's mailbox health, the simulator then produces a
busy day with a large attachment for one of a team's mailboxes, and the next sync shows it: the
mailbox's and the team's volume and attachment charts, and a threshold alert in the review
queue. Screenshots are saved under test-artifacts/ (health-*.png).
"""

from __future__ import annotations

import re

import pytest

from tests.browser import chromium, screenshot
from tests.e2e.test_mailbox_request_journey import Browser, _simulator
from tests.e2e.test_migration_wave_journey import wait_for
from tests.portal.test_run_command import run_portal

BUSY_DAY = 450  # above the default policy threshold of 400 emails a day


def check_health_now(page, base: str, *, timeout: float = 90, until_changed: bool = True) -> None:
    """Press "Check Dynamics 365 now" and wait until the sync has finished (and, by default, until
    the alerts page shows something it did not show before)."""
    page.goto(f"{base}/health/")
    before = page.locator("main").inner_text()
    page.get_by_role("button", name="Check Dynamics 365 now").click()
    wait_for(
        page,
        lambda: (
            page.goto(f"{base}/health/")
            and "Last read from Dynamics 365" in page.content()
            and "is queued now" not in page.content()
            and "is running now" not in page.content()
            and (not until_changed or page.locator("main").inner_text() != before)
        ),
        timeout=timeout,
        what="the health sync",
    )


@pytest.mark.slow
def test_volume_and_attachment_charts_for_a_mailbox_and_a_team(tmp_path):
    with run_portal(tmp_path) as (base, _, _), chromium() as browser:
        page = browser.new_page()
        b = Browser(page, base)
        control, http = _simulator(tmp_path)

        # The first discovery (queued by the run command) tells the portal which mailboxes it manages.
        b.sign_in("migration")
        wait_for(
            page,
            lambda: page.goto(f"{base}/migration/discovery/") and 'govuk-tag--green">Finished' in page.content(),
            timeout=90,
            what="the first discovery",
        )
        b.sign_out()
        b.sign_in("admin")
        check_health_now(page, base)
        screenshot(page, "health-01-alerts")

        # A team's mailbox, and its address, as the portal lists them.
        page.goto(f"{base}/health/mailboxes/")
        page.get_by_role("link", name="Finance", exact=True).click()
        team_url = page.url
        page.locator("main ul.govuk-list a").first.click()
        mailbox_url = page.url
        address = re.search(r"[\w.+-]+@example\.gov\.uk", page.locator("main dl").inner_text()).group(0)
        mailbox = next(
            row
            for row in http.get(f"{control}/_sim/rows/mailboxes", timeout=30).json()["value"]
            if (row.get("emailaddress") or "").casefold() == address.casefold()
        )

        # A busy day with a large attachment, then the next sync.
        http.post(
            f"{control}/_sim/activity",
            json={"mailbox": mailbox["mailboxid"], "direction": "incoming", "count": BUSY_DAY,
                  "attachments": [4_800_000, 350_000, 120_000]},
            timeout=60,
        ).raise_for_status()  # fmt: skip
        check_health_now(page, base)

        page.goto(mailbox_url)
        main = page.locator("main").inner_text()
        total = re.search(r"(\d+) emails; attachments", main)
        assert total and int(total.group(1)) >= BUSY_DAY, main[:1500]  # every email of the busy day counted
        assert page.locator("svg rect.portal-volume__bar--incoming").count() == 14
        assert page.locator("svg rect.portal-volume__bar--attachments").count() == 14
        assert page.locator("svg line.portal-volume__threshold").count() >= 1
        page.locator("[data-volume-charts]").scroll_into_view_if_needed()
        screenshot(page, "health-02-mailbox-charts")

        page.goto(team_url)
        assert page.locator("svg rect.portal-volume__bar--incoming").count() == 14
        screenshot(page, "health-03-team-charts")

        page.goto(f"{base}/health/")
        assert "Threshold: daily_volume" in page.content()
        assert "Threshold: attachment_near_limit" in page.content()
        screenshot(page, "health-04-threshold-alerts")
