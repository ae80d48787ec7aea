"""A real browser for end-to-end tests: Playwright driving Debian's Chromium."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

from playwright.sync_api import Browser, sync_playwright

from tests.servers import ROOT

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"
# Chromium reaches out to Google at start unless told not to; this machine's network refuses it.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextmanager
def chromium() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        raise RuntimeError(
            f"Chromium is not installed at {CHROMIUM}: install Debian's chromium package "
            "(.ci/run does) or set CHROMIUM_PATH."
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def screenshot(page, name: str) -> Path:
    """Save a full-page screenshot under test-artifacts/ for a person to look at after the run."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


AXE_SOURCE = ROOT / "node_modules" / "axe-core" / "axe.min.js"
# The WCAG 2.2 AA success criteria axe-core can test automatically (GOV.UK services must meet AA).
AXE_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa"]
_AXE_RUN = """async (tags) => {
  const results = await axe.run(document, {runOnly: {type: 'tag', values: tags}});
  return results.violations.map((violation) => ({
    id: violation.id,
    impact: violation.impact,
    help: violation.help,
    nodes: violation.nodes.map((node) => ({
      target: node.target.join(' '), html: node.html, summary: node.failureSummary,
    })),
  }));
}"""


@cache
def _axe_source() -> str:
    if not AXE_SOURCE.exists():
        raise RuntimeError(f"axe-core is not installed at {AXE_SOURCE}: run `npm ci` (`make assets` does).")
    return AXE_SOURCE.read_text()


def axe_violations(page) -> list[dict]:
    """The page's WCAG 2.2 AA violations that axe-core finds: id, impact, help and the failing nodes.

    The script is handed to the page through the DevTools protocol rather than a script tag, so the
    portal's Content-Security-Policy (which allows no inline script) does not have to be relaxed.
    """
    if not page.evaluate("() => typeof window.axe === 'object'"):
        page.evaluate(_axe_source())
    return page.evaluate(_AXE_RUN, AXE_TAGS)
