"""Entra ID sign-in end to end in a real browser: the README's run command, its tenant simulator, Chromium.

The portal gets nothing but the environment the simulator prints; the person
picks a demo identity and its app roles on the simulator's sign-in page, and
the portal's navigation follows the roles in the token at every sign-in.
"""

from __future__ import annotations

import pytest

from tests.accounts.test_navigation import nav_labels
from tests.browser import chromium, screenshot
from tests.portal.test_run_command import run_portal

IDENTITY = "Owen Hughes"


def _sign_in_with_microsoft(page, base: str, *, approver: bool, shot: str) -> None:
    page.goto(f"{base}/accounts/sign-in/")
    page.get_by_role("button", name="Sign in with Microsoft").click()
    page.wait_for_selector("text=Pick an account")
    screenshot(page, f"{shot}-1-pick-account")
    page.get_by_role("button", name=IDENTITY).click()
    page.wait_for_selector("text=Choose app roles")
    approver_box = page.get_by_label("Approver", exact=True)
    approver_box.set_checked(approver)
    page.get_by_label("Requester", exact=True).set_checked(True)
    screenshot(page, f"{shot}-2-roles")
    page.get_by_role("button", name="Continue").click()
    page.wait_for_url(f"{base}/")
    screenshot(page, f"{shot}-3-signed-in")


def _sign_out(page, base: str) -> None:
    page.goto(f"{base}/accounts/sign-out/")
    page.locator("main").get_by_role("button", name="Sign out").click()
    page.wait_for_selector("text=You have signed out")


@pytest.mark.slow
def test_entra_roles_drive_the_navigation_at_every_sign_in(tmp_path):
    with run_portal(tmp_path) as (base, _, _), chromium() as browser:
        # The simulator's certificate comes from its own CA, which the portal trusts through
        # M365_CA_BUNDLE; the test browser is only told to accept it.
        context = browser.new_context(ignore_https_errors=True)
        page = context.new_page()

        _sign_in_with_microsoft(page, base, approver=True, shot="entra-approver")
        assert "Welcome, Owen" in page.content()
        assert nav_labels(page.content()) == ["Home", "Requests", "Approvals", "Mailbox health"]
        page.goto(f"{base}/approvals/")
        assert page.locator("h1").inner_text() == "Approvals"

        _sign_out(page, base)
        _sign_in_with_microsoft(page, base, approver=False, shot="entra-no-approver")
        assert nav_labels(page.content()) == ["Home", "Requests", "Mailbox health"]
        assert page.goto(f"{base}/approvals/").status == 403
        screenshot(page, "entra-no-approver-4-approvals-refused")
        context.close()
