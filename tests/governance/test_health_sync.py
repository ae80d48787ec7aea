"""The health sync against the simulated tenant: alerts grouped for review, recurrence, reopening,
statuses, volume, thresholds and the owners' digest."""

from __future__ import annotations

import time

import pytest
from django.core import mail
from django.urls import reverse

from governance.models import (
    AlertSource,
    AlertStatus,
    EmailAttachment,
    MailboxAlert,
    MailboxEmail,
    ManagedMailbox,
)
from governance.services.alerts import alert_resolve
from governance.services.digest import digests_send
from portal.accounts.models import Team
from portal.audit.models import AuditEvent
from portal.policy.models import PolicySettings
from portal.policy.services import policy_get
from tests.governance.health_support import error_summary, manage, raise_alert, sim_mailboxes, sync_now

pytestmark = pytest.mark.django_db


@pytest.fixture
def team(approver):
    team = Team.objects.create(name="Benefits Operations", business_unit="Operations")
    team.business_owners.add(approver)
    return team


@pytest.fixture
def managed(fresh_sim, team):
    """Two queue mailboxes and one user mailbox of the simulated tenant, managed by the portal."""
    queues = sim_mailboxes(fresh_sim, owner="queue", count=2)
    users = sim_mailboxes(fresh_sim, owner="systemuser", count=1, skip=7)
    for row in [*queues, *users]:
        manage(row, team=team)
    return {"queue_a": queues[0], "queue_b": queues[1], "user": users[0]}


def _mine(row) -> list[MailboxAlert]:
    return list(MailboxAlert.objects.filter(mailbox__dataverse_id=row["mailboxid"], source=AlertSource.DATAVERSE))


def test_alerts_are_grouped_for_review_errors_first(
    fresh_sim, m365_settings, managed, redis_queue, platform_admin, client_for
):
    raise_alert(fresh_sim, managed["queue_a"]["mailboxid"], level=2, tracecode=5001, text="Queue A warns: slow sync.")
    raise_alert(fresh_sim, managed["queue_a"]["mailboxid"], level=3, tracecode=4001, text="Queue A fails: no access.")
    raise_alert(fresh_sim, managed["queue_b"]["mailboxid"], level=3, tracecode=4001, text="Queue B fails: no access.")

    sync = sync_now(redis_queue, actor=platform_admin)

    assert sync.counts["alerts_new"] >= 3
    assert {(a.code, a.level) for a in _mine(managed["queue_a"])} >= {("5001", 2), ("4001", 3)}
    page = client_for(platform_admin).get(reverse("governance:alerts"))
    html = page.content.decode()
    assert page.status_code == 200
    # Errors are listed before warnings, and each mailbox's alerts sit together under its name.
    assert html.index("Queue A fails") < html.index("Queue A warns")
    assert html.index("Queue B fails") < html.index("Queue A warns")
    assert html.count(f'data-mailbox-group="{managed["queue_a"]["emailaddress"]}"') == 2  # once per level


def test_a_recurring_alert_updates_one_record_and_a_resolved_one_reopens(
    fresh_sim, m365_settings, managed, redis_queue, approver, client_for
):
    mailbox_id = managed["queue_a"]["mailboxid"]
    first = raise_alert(fresh_sim, mailbox_id, tracecode=4100, text="Credentials rejected by Exchange Online.")
    sync_now(redis_queue)
    alert = MailboxAlert.objects.get(key=first["tracelogid"])
    assert (alert.occurrences, alert.status) == (1, AlertStatus.OPEN)

    time.sleep(1.1)  # Dataverse's modifiedon has whole seconds
    again = raise_alert(fresh_sim, mailbox_id, tracecode=4100, text="Credentials rejected by Exchange Online.")
    assert again["tracelogid"] == first["tracelogid"]
    sync_now(redis_queue)

    assert MailboxAlert.objects.filter(mailbox__dataverse_id=mailbox_id, code="4100").count() == 1
    alert.refresh_from_db()
    assert alert.occurrences == 2
    assert alert.last_seen_at > alert.first_seen_at

    # The owner (a business owner of the mailbox's team) resolves it through the page.
    response = client_for(approver).post(
        reverse("governance:alert", args=[alert.pk]), {"action": "resolve", "note": "Re-entered the credentials."}
    )
    assert response.status_code == 302
    alert.refresh_from_db()
    assert alert.status == AlertStatus.RESOLVED

    sync_now(redis_queue)  # nothing new: stays resolved
    alert.refresh_from_db()
    assert alert.status == AlertStatus.RESOLVED

    time.sleep(1.1)
    raise_alert(fresh_sim, mailbox_id, tracecode=4100, text="Credentials rejected by Exchange Online.")
    sync_now(redis_queue)

    alert.refresh_from_db()
    assert (alert.status, alert.reopened_count, alert.occurrences) == (AlertStatus.OPEN, 1, 3)
    reopened = AuditEvent.objects.get(action="alert.reopened", object_id=str(alert.pk))
    assert reopened.reason.startswith("The problem recurred")
    assert AuditEvent.objects.filter(action="alert.resolved", object_id=str(alert.pk), actor=approver).exists()


def test_a_mailbox_the_platform_disabled_is_flagged_urgent(
    fresh_sim, m365_settings, managed, redis_queue, platform_admin, client_for
):
    mailbox_id = managed["queue_b"]["mailboxid"]
    raise_alert(fresh_sim, mailbox_id, tracecode=4200, text="The mailbox could not be reached.")
    sync_now(redis_queue)
    fresh_sim.control(
        "PATCH",
        f"state/mailboxes/{mailbox_id}",
        {
            "incomingemailstatus": 2,
            "outgoingemailstatus": 2,
            "enabledforincomingemail": False,
            "enabledforoutgoingemail": False,
        },
    )

    sync = sync_now(redis_queue)

    mailbox = ManagedMailbox.objects.get(dataverse_id=mailbox_id)
    assert mailbox.disabled_by_platform and sync.counts["newly_disabled"] == 1
    assert all(alert.urgent for alert in _mine(managed["queue_b"]))
    html = client_for(platform_admin).get(reverse("governance:alerts")).content.decode()
    assert html.index("Urgent") < html.index("The mailbox could not be reached.")


def test_volume_is_counted_without_bodies_and_a_breach_reaches_the_owners_digest(
    fresh_sim, m365_settings, managed, redis_queue, approver, client_for
):
    policy_get()
    PolicySettings.objects.filter(pk=1).update(daily_volume_threshold=5)
    mailbox_id = managed["queue_a"]["mailboxid"]
    fresh_sim.control("POST", "activity", {"mailbox": mailbox_id, "direction": "incoming", "count": 6})
    fresh_sim.control(
        "POST", "activity", {"mailbox": mailbox_id, "direction": "outgoing", "count": 2, "attachments": [4_900_000]}
    )
    ledger_start = fresh_sim.last_seq()

    sync_now(redis_queue)

    mailbox = ManagedMailbox.objects.get(dataverse_id=mailbox_id)
    emails = MailboxEmail.objects.filter(mailbox=mailbox)
    assert (emails.filter(outgoing=False).count(), emails.filter(outgoing=True).count()) == (6, 2)
    assert list(EmailAttachment.objects.filter(email__mailbox=mailbox).values_list("size_bytes", flat=True)) == [
        4_900_000
    ]
    reads = [
        e
        for e in fresh_sim.ledger(ledger_start)
        if "/emails" in e.get("path", "") or "activitymime" in e.get("path", "")
    ]
    assert reads and all("body" not in (e.get("query") or "") and "$select" in (e.get("query") or "") for e in reads)

    breaches = {a.code for a in MailboxAlert.objects.filter(mailbox=mailbox, source=AlertSource.THRESHOLD)}
    assert breaches == {"daily_volume", "attachment_near_limit"}

    sync_now(redis_queue)  # reading the same rows again counts nothing twice
    assert MailboxEmail.objects.filter(mailbox=mailbox).count() == 8
    assert MailboxAlert.objects.filter(mailbox=mailbox, source=AlertSource.THRESHOLD).count() == 2

    page = client_for(approver).get(reverse("governance:mailbox", args=[mailbox.pk]))
    assert page.status_code == 200
    assert page.content.decode().count("portal-volume__bar--incoming") >= 14

    mail.outbox.clear()
    outcome = digests_send()
    assert outcome.sent == 1
    (message,) = mail.outbox
    assert message.to == [approver.email]
    assert "8 emails on" in message.body and "above the policy's 5 a day" in message.body
    assert digests_send().sent == 0  # once a week


def test_people_see_only_their_mailboxes_alerts(
    fresh_sim, m365_settings, managed, redis_queue, approver, outsider, client_for, client
):
    raise_alert(fresh_sim, managed["user"]["mailboxid"], tracecode=4300, text="User mailbox alert.")
    sync_now(redis_queue)
    alert = MailboxAlert.objects.get(mailbox__dataverse_id=managed["user"]["mailboxid"], code="4300")

    assert "User mailbox alert." in client_for(approver).get(reverse("governance:alerts")).content.decode()
    assert "User mailbox alert." not in client_for(outsider).get(reverse("governance:alerts")).content.decode()
    assert client_for(outsider).get(reverse("governance:alert", args=[alert.pk])).status_code == 404
    assert (
        client_for(outsider)
        .post(reverse("governance:alert", args=[alert.pk]), {"action": "resolve", "note": "not mine"})
        .status_code
        == 404
    )
    with pytest.raises(Exception, match="cannot work on this alert"):
        alert_resolve(actor=outsider, alert_id=alert.pk, note="not mine")
    assert client.get(reverse("governance:alerts")).status_code == 302
    alert.refresh_from_db()
    assert alert.status == AlertStatus.OPEN


def test_resolving_needs_a_note(fresh_sim, m365_settings, managed, redis_queue, platform_admin, client_for):
    raise_alert(fresh_sim, managed["queue_b"]["mailboxid"], tracecode=4400, text="Another alert.")
    sync_now(redis_queue)
    alert = MailboxAlert.objects.get(code="4400")

    page = client_for(platform_admin).post(
        reverse("governance:alert", args=[alert.pk]), {"action": "resolve", "note": " "}
    )

    assert page.status_code == 200
    assert "Enter what was done to resolve the alert" in error_summary(page)
    alert.refresh_from_db()
    assert alert.status == AlertStatus.OPEN


def test_assigning_to_someone_not_on_the_list_is_refused_with_an_error_summary(
    fresh_sim, m365_settings, managed, redis_queue, platform_admin, client_for
):
    raise_alert(fresh_sim, managed["queue_b"]["mailboxid"], tracecode=4401, text="One more alert.")
    sync_now(redis_queue)
    alert = MailboxAlert.objects.get(code="4401")

    page = client_for(platform_admin).post(
        reverse("governance:alert", args=[alert.pk]), {"action": "assign", "assignee": " "}
    )

    assert page.status_code == 200
    assert "Select a person from the list" in error_summary(page)
    assert page.content.decode().count("<title>Error: ") == 1
    alert.refresh_from_db()
    assert alert.assigned_to is None
