"""Helpers for health tests: managed mailboxes taken from the simulated tenant, and running the sync."""

from __future__ import annotations

import uuid
from typing import Any

from django.test import TestCase
from rq import SimpleWorker

from governance.models import HealthSync, HealthSyncStatus
from governance.services.health_sync import health_sync_request
from migration.models import Classification, OwnerType, Readiness
from portal.accounts.models import Team
from tests.migration.factories import InventoryMailboxFactory


def sim_mailboxes(sim, *, owner: str, count: int, skip: int = 0) -> list[dict[str, Any]]:
    """Active ``owner`` ("queue" or "systemuser") mailboxes of the simulated tenant, with an address."""
    rows = [
        row
        for row in sim.control("GET", "rows/mailboxes")["value"]
        if row.get("regardingobjecttypecode") == owner and row.get("emailaddress") and not row.get("isforwardmailbox")
    ]
    chosen = rows[skip : skip + count]
    assert len(chosen) == count, f"the simulated tenant has too few {owner} mailboxes"
    return chosen


def manage(row: dict[str, Any], *, team: Team | None = None) -> None:
    """Put a simulated mailbox in the inventory on compliant server-side sync: the portal then manages it."""
    is_queue = row.get("regardingobjecttypecode") == "queue"
    InventoryMailboxFactory(
        dataverse_id=uuid.UUID(row["mailboxid"]),
        name=row.get("name") or row["emailaddress"],
        email_address=row["emailaddress"],
        owner_type=OwnerType.QUEUE if is_queue else OwnerType.USER,
        owner_dataverse_id=uuid.UUID(row["_regardingobjectid_value"]),
        team_name=team.name if team else "",
        classification=Classification.COMPLIANT_SSS,
        readiness=Readiness.COMPLIANT,
    )


def sync_now(queue, *, actor=None) -> HealthSync:
    """Request a health sync and run it on a real RQ worker; it must finish."""
    with TestCase.captureOnCommitCallbacks(execute=True):  # the job is queued once the request commits
        sync = health_sync_request(actor=actor)
    SimpleWorker([queue], connection=queue.connection).work(burst=True)
    sync.refresh_from_db()
    assert sync.status == HealthSyncStatus.SUCCEEDED, sync.error
    return sync


def raise_alert(sim, regarding: str, *, level: int = 3, tracecode: int = 4001, text: str = "") -> dict[str, Any]:
    return sim.control(
        "POST",
        "alerts",
        {
            "regarding": regarding,
            "level": level,
            "tracecode": tracecode,
            "text": text or f"Alert {tracecode} for {regarding}: the mailbox could not connect to Exchange Online.",
        },
    )


def error_summary(response) -> str:
    """The text of the page's GOV.UK error summary (fails when there is none)."""
    html = response.content.decode()
    start = html.index('class="govuk-error-summary"')
    return html[start : html.index("</ul>", start)]
