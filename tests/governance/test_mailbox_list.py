"""The managed mailboxes list: open alerts and errors per mailbox, and the ones Dynamics 365 disabled first."""

from __future__ import annotations

import re
import uuid

import pytest
from django.urls import reverse
from django.utils import timezone

from governance.models import AlertStatus, MailboxAlert, ManagedMailbox

pytestmark = pytest.mark.django_db


def _mailbox(name: str, **fields) -> ManagedMailbox:
    return ManagedMailbox.objects.create(
        dataverse_id=uuid.uuid4(),
        name=name,
        email_address=f"{name.lower().replace(' ', '.')}@example.gov.uk",
        kind="shared",
        source="onboarding",
        added_at=timezone.now(),
        **fields,
    )


def _alert(mailbox: ManagedMailbox, *, level: int, status: str = AlertStatus.OPEN) -> None:
    now = timezone.now()
    MailboxAlert.objects.create(
        key=str(uuid.uuid4()),
        source="dataverse",
        mailbox=mailbox,
        level=level,
        code="MailboxIncomingFailure",
        text="The mailbox could not be reached.",
        first_seen_at=now,
        last_seen_at=now,
        status=status,
        updated_at=now,
    )


def _rows(html: str) -> list[tuple[str, str]]:
    body = re.search(r'<tbody class="govuk-table__body">(.*?)</tbody>', html, re.S).group(1)
    rows = re.findall(r"<tr.*?</tr>", body, re.S)
    cells = [re.findall(r'<td class="govuk-table__cell[^"]*">(.*?)</td>', row, re.S) for row in rows]
    return [(re.sub(r"<[^>]+>", " ", row[0]).split()[0], row[3].strip()) for row in cells]


def test_each_mailbox_shows_its_open_alerts_and_errors_and_disabled_ones_come_first(platform_admin, client_for):
    alpha, bravo = _mailbox("Alpha"), _mailbox("Bravo")
    _mailbox("Charlie", disabled_by_platform=True)
    _alert(alpha, level=3)
    _alert(alpha, level=2)
    _alert(alpha, level=3, status=AlertStatus.ACKNOWLEDGED)
    _alert(alpha, level=3, status=AlertStatus.RESOLVED)  # resolved: not counted
    _alert(bravo, level=2)
    _mailbox("Delta", is_active=False)  # no longer managed: not listed

    page = client_for(platform_admin).get(reverse("governance:mailboxes")).content.decode()

    assert _rows(page) == [("Charlie", "0"), ("Alpha", "3 (2 errors)"), ("Bravo", "1")]
    assert "Managed mailboxes (3)" in page
