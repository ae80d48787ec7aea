"""A migration wave in a real browser, against the README's run command and its tenant simulator.

The migration lead plans a wave of the demo organisation's Email Router queues from the
inventory, runs the pre-flight and submits it; a platform admin (another person) approves it;
the lead starts it and watches the progress bar reach 100 % without reloading; then rolls one
mailbox back, and the simulator shows that mailbox's original values restored exactly.
Screenshots of each page are saved under test-artifacts/.
"""

from __future__ import annotations

import re
import time

import pytest

from tests.browser import chromium, screenshot
from tests.e2e.test_mailbox_request_journey import Browser, _simulator
from tests.portal.test_run_command import run_portal

WAVE_FILTERS = "classification=email_router&owner_type=queue&readiness=ready"
# What a rollback must put back exactly (the values the migration changes).
RESTORED = (
    "_emailserverprofile_value",
    "incomingemaildeliverymethod",
    "outgoingemaildeliverymethod",
    "actdeliverymethod",
    "emailrouteraccessapproval",
)


class WaveBrowser(Browser):
    def shot(self, name: str) -> None:
        self.count += 1
        screenshot(self.page, f"wave-{self.count:02d}-{name}")


def wait_for(page, predicate, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"gave up waiting for {what}: {page.locator('main').inner_text()[:2000]}"
        time.sleep(1)


@pytest.mark.slow
def test_a_wave_is_planned_approved_run_and_one_mailbox_rolled_back(tmp_path):
    with run_portal(tmp_path) as (base, _, _), chromium() as browser:
        page = browser.new_page()
        b = WaveBrowser(page, base)
        control, http = _simulator(tmp_path)

        def sim_mailbox(mailbox_id: str) -> dict:
            return http.get(f"{control}/_sim/state/mailboxes/{mailbox_id}", timeout=30).json()

        # The first discovery (queued by the run command) fills the inventory.
        b.sign_in("migration")
        wait_for(
            page,
            lambda: page.goto(f"{base}/migration/discovery/") and 'govuk-tag--green">Finished' in page.content(),
            timeout=90,
            what="the first discovery",
        )

        # Plan a wave from the inventory's filters.
        page.goto(f"{base}/migration/inventory/?{WAVE_FILTERS}")
        addresses = sorted(set(re.findall(r"[\w.+-]+@example\.gov\.uk", page.locator("tbody").inner_text())))
        assert addresses, "the demo inventory has Email Router queues ready to migrate"
        b.shot("inventory")
        page.get_by_role("link", name="Plan a wave of these mailboxes").click()
        page.get_by_label("Name of the wave").fill("Router queues, batch 1")
        page.get_by_label("From the inventory, with filters").check()
        b.shot("new")
        page.get_by_role("button", name="Continue").click()
        b.shot("filters")
        page.get_by_role("button", name="Use these mailboxes").click()
        b.shot("check")
        page.get_by_role("button", name="Create wave").click()
        page.wait_for_selector("text=Run the pre-flight")
        wave_url = page.url

        # The originals, as Dynamics 365 holds them before anything changes.
        queues = http.get(f"{control}/_sim/rows/queues", timeout=30).json()["value"]
        by_address = {row["emailaddress"]: row["_defaultmailbox_value"] for row in queues if row.get("emailaddress")}
        chosen = addresses[0]
        original = sim_mailbox(by_address[chosen])

        # Pre-flight, then submit for approval.
        page.get_by_role("button", name="Run the pre-flight").click()
        wait_for(
            page,
            lambda: page.goto(wave_url) and "Submit for approval" in page.content(),
            timeout=60,
            what="the pre-flight",
        )
        assert "would migrate" in page.locator("main").inner_text()
        b.shot("preflight-done")
        page.get_by_role("link", name="See what would change and every finding, with fixes").click()
        b.shot("preflight")
        assert "Exchange Online" in page.locator("main").inner_text()
        page.goto(wave_url)
        page.get_by_role("button", name="Submit for approval").click()
        page.wait_for_selector("text=Waiting for approval")
        assert "Approve this wave" not in page.content()  # the lead cannot approve their own wave
        b.sign_out()

        # A platform admin, not the creator, approves it with the pre-flight attached.
        b.sign_in("admin")
        page.goto(wave_url)
        page.get_by_label("Yes, approve it to start").check()
        b.shot("approve")
        page.get_by_role("button", name="Record decision").click()
        page.wait_for_selector("text=Approved")
        b.sign_out()

        # The lead starts it and watches the bar fill in place.
        b.sign_in("migration")
        page.goto(wave_url)
        page.get_by_role("button", name="Start the wave").click()
        page.wait_for_selector("text=Running")
        started_url = page.url
        page.wait_for_function(
            "() => document.querySelector('[data-wave-percent]').textContent.trim() === '100'", timeout=180_000
        )
        assert page.url == started_url  # updated in place, not by reloading
        assert page.locator("[data-wave-bar]").get_attribute("aria-valuenow") == "100"
        b.shot("finished")
        main = page.locator("main").inner_text()
        assert main.count("Migrated") >= len(addresses)

        migrated = sim_mailbox(by_address[chosen])
        assert (migrated["incomingemaildeliverymethod"], migrated["outgoingemaildeliverymethod"]) == (2, 2)
        assert migrated["_emailserverprofile_value"] != original["_emailserverprofile_value"]

        # Roll one mailbox back: Dynamics 365 gets exactly its original values again.
        page.get_by_role("button", name=f"Roll back {chosen}").click()
        wait_for(
            page,
            lambda: page.goto(wave_url) and "Rolled back" in page.locator("tr", has_text=chosen).inner_text(),
            timeout=60,
            what="the rollback",
        )
        b.shot("rolled-back")
        restored = sim_mailbox(by_address[chosen])
        assert {column: restored.get(column) for column in RESTORED} == {
            column: original.get(column) for column in RESTORED
        }
