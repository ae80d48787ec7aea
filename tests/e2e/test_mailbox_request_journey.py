"""The whole onboarding journey in a real browser, against the README's run command and its tenant simulator.

A requester asks for a queue mailbox, the team's business owner and a platform
admin approve it, the worker provisions it in the simulated Exchange Online and
Dataverse, and the requester's status page shows "Active". The simulator's own
state is then checked for what a Dynamics 365 admin would look for. Screenshots
of each page are saved under test-artifacts/.
"""

from __future__ import annotations

import time
import uuid

import pytest

from portal.accounts.management.commands.seed_demo import DEFAULT_DEMO_PASSWORD
from tests.browser import chromium, screenshot
from tests.portal.test_run_command import run_portal
from tests.simulator import _TrustingSession

SHOT = "journey"


class Browser:
    def __init__(self, page, base: str) -> None:
        self.page, self.base, self.count = page, base, 0

    def shot(self, name: str) -> None:
        self.count += 1
        screenshot(self.page, f"{SHOT}-{self.count:02d}-{name}")

    def sign_in(self, username: str) -> None:
        page = self.page
        page.goto(f"{self.base}/accounts/sign-in/")
        page.get_by_label("Username").fill(username)
        page.get_by_label("Password").fill(DEFAULT_DEMO_PASSWORD)
        page.get_by_role("button", name="Sign in", exact=True).click()
        page.wait_for_url(f"{self.base}/")

    def sign_out(self) -> None:
        self.page.goto(f"{self.base}/accounts/sign-out/")
        self.page.locator("main").get_by_role("button", name="Sign out").click()
        self.page.wait_for_selector("text=You have signed out")

    def continue_(self) -> None:
        self.page.get_by_role("button", name="Save and continue").click()


def _simulator(tmp_path):
    env = {}
    for line in (tmp_path / "var" / "m365sim" / "portal.env").read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value
    http = _TrustingSession()
    http.verify = env["M365_CA_BUNDLE"]
    return env["M365_AUTHORITY_HOST"], http


@pytest.mark.slow
def test_a_queue_mailbox_goes_from_request_to_active(tmp_path):
    local_part = f"finance-enquiries-{uuid.uuid4().hex[:6]}"
    address = f"{local_part}@example.gov.uk"
    with run_portal(tmp_path) as (base, _, _), chromium() as browser:
        page = browser.new_page()
        b = Browser(page, base)

        # The requester asks for a queue mailbox.
        b.sign_in("requester")
        page.goto(f"{base}/requests/")
        b.shot("requests")
        page.get_by_role("button", name="Request a new mailbox").click()
        page.get_by_label("Queue mailbox").check()
        b.shot("kind")
        b.continue_()
        page.get_by_label("What should the mailbox be called?").fill("Finance enquiries")
        b.shot("name")
        b.continue_()
        page.get_by_label("Part before the @").fill(local_part)
        b.shot("address")
        b.continue_()
        page.get_by_label("Finance", exact=True).check()
        b.shot("team")
        b.continue_()
        page.get_by_label("Accountable owner's email address").fill("owen.hughes@example.gov.uk")
        page.get_by_label("Backup owner's email address").fill("riya.patel@example.gov.uk")
        b.shot("owners")
        b.continue_()
        page.get_by_label("Email address").fill("riya.patel@example.gov.uk")
        page.get_by_role("button", name="Add member").click()
        page.wait_for_selector("text=riya.patel@example.gov.uk")
        b.shot("members")
        page.get_by_role("button", name="Save and continue").click()
        page.get_by_label("Public").check()
        b.shot("visibility")
        b.continue_()
        page.get_by_label("Email messages in response to Dynamics 365 email").check()
        b.shot("tracking")
        b.continue_()
        page.get_by_label("How many email messages do you expect each day?").fill("40")
        page.get_by_label("Typical size of an attachment, in kilobytes (KB)").fill("300")
        page.get_by_label("How many months should email be kept?").fill("24")
        page.get_by_label("OFFICIAL", exact=True).check()
        b.shot("usage")
        b.continue_()
        page.get_by_label("Business justification").fill(
            "Customers email the finance team about invoices; the team answers them from Dynamics 365."
        )
        b.shot("justification")
        b.continue_()
        page.wait_for_selector("text=Check your answers")
        b.shot("check-answers")
        page.get_by_role("button", name="Accept and send").click()
        page.wait_for_selector(".govuk-panel")
        b.shot("submitted")
        reference = page.locator(".govuk-panel__body strong").inner_text().strip()
        assert reference.startswith("MBX-")
        status_url = page.url.replace("submitted/", "")
        b.sign_out()

        # The team's business owner, then a platform admin, approve.
        for approver in ("approver", "admin"):
            b.sign_in(approver)
            page.goto(f"{base}/approvals/")
            b.shot(f"inbox-{approver}")
            page.get_by_role("link", name=reference).click()
            page.get_by_label("Approve").check()
            b.shot(f"decision-{approver}")
            page.get_by_role("button", name="Confirm decision").click()
            page.wait_for_selector(".govuk-notification-banner")
            b.sign_out()

        # The worker provisions it; the requester watches the status page.
        b.sign_in("requester")
        deadline = time.monotonic() + 120
        while True:
            page.goto(status_url)
            status = page.locator("main p", has_text="Status:").locator(".govuk-tag").inner_text().strip()
            if status in ("Active", "Needs attention") or time.monotonic() > deadline:
                break
            time.sleep(2)
        b.shot("status")
        assert status == "Active", page.locator("main").inner_text()

        # What a Dynamics 365 admin would check, in the simulator's own state.
        control, http = _simulator(tmp_path)

        def rows(table):
            return http.get(f"{control}/_sim/rows/{table}", timeout=30).json()["value"]

        shared = [row for row in rows("exchange_mailboxes") if row["PrimarySmtpAddress"] == address]
        assert len(shared) == 1 and shared[0]["RecipientTypeDetails"] == "SharedMailbox"
        assert [grant["User"] for grant in shared[0]["_full_access"]] == ["riya.patel@example.gov.uk"]
        queue = next(row for row in rows("queues") if row["emailaddress"] == address)
        assert queue["incomingemailfilteringmethod"] == 1
        assert queue["emailrouteraccessapproval"] == 1
        mailbox = http.get(f"{control}/_sim/state/mailboxes/{queue['_defaultmailbox_value']}", timeout=30).json()
        profile = http.get(
            f"{control}/_sim/state/emailserverprofiles/{mailbox['_emailserverprofile_value']}", timeout=30
        ).json()
        assert profile["name"] == "Microsoft Exchange Online"
        assert (mailbox["incomingemaildeliverymethod"], mailbox["outgoingemaildeliverymethod"]) == (2, 2)
        assert mailbox["emailrouteraccessapproval"] == 1
        assert (mailbox["incomingemailstatus"], mailbox["outgoingemailstatus"]) == (1, 1)
