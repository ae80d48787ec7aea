"""Applying tracking changes against the tenant simulator over HTTPS with a real RQ worker.

The over-tracking queue is flagged, requested, approved by a second admin, applied by the job and
read back from the simulator; a rule already in place, a rule changed meanwhile in Dynamics 365
(before the job, or between its read and its write), duplicated jobs, temporary errors and a
failed change retried.
"""

from __future__ import annotations

import uuid

import pytest
from django.urls import reverse
from django.utils import timezone

from governance.jobs import tracking_change_apply_job
from governance.models import ManagedKind, ManagedMailbox, ManagedSource, TrackingChange, TrackingChangeStatus
from governance.selectors.tracking import TrackingFilters, tracking_report_mailboxes
from governance.services.tracking import tracking_change_decide, tracking_change_request, tracking_change_retry
from portal.accounts.roles import Role
from portal.audit.models import AuditEvent
from portal.exceptions import InvalidStateError, PermissionDeniedError
from portal.m365.dataverse import DataverseClient
from portal.policy.models import PolicySettings, TrackingRule
from portal.policy.services import policy_get
from tests.factories import UserFactory
from tests.migration.migration_run_support import find_mailboxes, run_worker, work_until
from tests.simulator import run_simulator

pytestmark = pytest.mark.django_db(transaction=True)

COLUMN = "incomingemailfilteringmethod"


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """A tenant of this module's own: the changes made here must not show up in other modules'
    incremental discoveries of the shared one."""
    with run_simulator(tmp_path_factory.mktemp("m365sim-tracking"), seed="2000") as running:
        yield running


@pytest.fixture
def second_admin(db):
    return UserFactory(username="ravi", first_name="Ravi", last_name="Shah", roles=[Role.PLATFORM_ADMIN])


def over_tracking_queue(sim, *, owners=(), kind: str = ManagedKind.QUEUE) -> tuple[ManagedMailbox, str]:
    """A real queue mailbox from the simulated tenant, its queue set to "All email messages", as managed."""
    queues = {row["queueid"]: row for row in sim.control("GET", "rows/queues")["value"]}
    [row] = find_mailboxes(
        sim,
        owner="queue",
        count=1,
        where=lambda row: row.get("_regardingobjectid_value") in queues and not row.get("isforwardmailbox"),
    )
    queue_id = row["_regardingobjectid_value"]
    sim.control("PATCH", f"state/queues/{queue_id}", {COLUMN: TrackingRule.ALL})
    return managed_from(row, kind=kind, owner_id=queue_id, owners=owners), queue_id


def over_tracking_user(sim, *, owners=()) -> tuple[ManagedMailbox, str]:
    """A real user mailbox whose personal options track all email."""
    [row] = find_mailboxes(sim, owner="systemuser", count=1, where=lambda row: not row.get("isforwardmailbox"))
    user_id = row["_regardingobjectid_value"]
    sim.control("PATCH", f"state/usersettingscollection/{user_id}", {COLUMN: TrackingRule.ALL})
    return managed_from(row, kind=ManagedKind.USER, owner_id=user_id, owners=owners), user_id


def managed_from(row, *, kind: str, owner_id: str, owners=()) -> ManagedMailbox:
    # The health sync fills these rows in production; here the test records what it would have read.
    mailbox = ManagedMailbox.objects.create(
        dataverse_id=uuid.UUID(row["mailboxid"]),
        name=row.get("name") or "",
        email_address=row.get("emailaddress") or "",
        kind=kind,
        source=ManagedSource.INVENTORY,
        owner_dataverse_id=uuid.UUID(owner_id),
        tracking_rule=TrackingRule.ALL,
        added_at=timezone.now(),
    )
    mailbox.owners.set(owners)
    return mailbox


def patches(sim, since: int, entity_set: str, row_id: str) -> list[dict]:
    path = f"{entity_set}({row_id})".lower()
    return [
        entry
        for entry in sim.ledger(since)
        if entry["method"] == "PATCH" and entry["surface"] == "dataverse" and entry["path"].lower().endswith(path)
    ]


def applied(entries: list[dict]) -> list[dict]:
    return [entry for entry in entries if entry.get("applied")]


DONE = (TrackingChangeStatus.APPLIED, TrackingChangeStatus.FAILED)


def finished(change: TrackingChange):
    return lambda: TrackingChange.objects.get(pk=change.pk).status in DONE


def approved_change(mailbox, requester, approver) -> TrackingChange:
    change = tracking_change_request(actor=requester, mailbox_id=mailbox.pk)
    tracking_change_decide(actor=approver, change_id=change.pk, approve=True, reason="Agreed")
    return change


# --- the whole journey -----------------------------------------------------------------------------


def test_an_over_tracking_queue_is_flagged_requested_approved_and_applied(
    m365_settings, fresh_sim, redis_queue, requester, platform_admin, second_admin, client_for
):
    mailbox, queue_id = over_tracking_queue(fresh_sim, owners=[requester])
    assert fresh_sim.row("queues", queue_id)[COLUMN] == TrackingRule.ALL
    policy = policy_get()
    flagged = tracking_report_mailboxes(platform_admin, policy, TrackingFilters(over_tracking_only=True))
    assert mailbox in flagged

    # The owner asks for the recommended rule with one click on the report.
    owner = client_for(requester)
    report = owner.get(reverse("governance:tracking_report"), {"over_tracking": "on"}).content.decode()
    assert "Over-tracking" in report
    response = owner.post(reverse("governance:tracking_request", args=[mailbox.pk]))
    assert response.status_code == 302
    change = TrackingChange.objects.get(mailbox=mailbox)
    assert (change.from_rule, change.to_rule) == (TrackingRule.ALL, policy.default_tracking_rule_queue)

    # A platform admin approves; the job is queued once the decision commits.
    since = fresh_sim.last_seq()
    response = client_for(platform_admin).post(
        reverse("governance:tracking_change_decide", args=[change.pk]), {"decision": "approve"}
    )
    assert response.status_code == 302
    assert redis_queue.count == 1

    run_worker(redis_queue)

    change.refresh_from_db()
    assert change.status == TrackingChangeStatus.APPLIED, change.error
    assert change.remote_before == TrackingRule.ALL
    assert change.applied_at is not None
    assert change.attempts == 1
    assert fresh_sim.row("queues", queue_id)[COLUMN] == policy.default_tracking_rule_queue
    mailbox.refresh_from_db()
    assert mailbox.tracking_rule == policy.default_tracking_rule_queue
    assert len(applied(patches(fresh_sim, since, "queues", queue_id))) == 1
    event = AuditEvent.objects.get(action="tracking_change.applied", object_id=str(change.pk))
    assert event.object_type == "tracking_change"
    assert event.before == {COLUMN: TrackingRule.ALL}
    assert event.after[COLUMN] == policy.default_tracking_rule_queue
    assert event.after["written"] is True
    assert mailbox not in tracking_report_mailboxes(platform_admin, policy, TrackingFilters(over_tracking_only=True))
    page = owner.get(reverse("governance:tracking_change", args=[change.pk])).content.decode()
    assert 'govuk-tag--green">Applied<' in page


def test_a_user_mailbox_is_flagged_when_policy_says_and_its_personal_options_change(
    m365_settings, fresh_sim, redis_queue, platform_admin, second_admin
):
    policy_get()
    PolicySettings.objects.filter(pk=1).update(
        flag_user_over_tracking=True, default_tracking_rule_user=TrackingRule.LEADS_CONTACTS_ACCOUNTS
    )
    mailbox, user_id = over_tracking_user(fresh_sim)
    assert mailbox in tracking_report_mailboxes(platform_admin, policy_get(), TrackingFilters(over_tracking_only=True))
    since = fresh_sim.last_seq()
    change = approved_change(mailbox, platform_admin, second_admin)

    run_worker(redis_queue)

    change.refresh_from_db()
    assert change.status == TrackingChangeStatus.APPLIED, change.error
    assert fresh_sim.row("usersettingscollection", user_id)[COLUMN] == TrackingRule.LEADS_CONTACTS_ACCOUNTS
    assert len(applied(patches(fresh_sim, since, "usersettingscollection", user_id))) == 1


# --- refusals before anything reaches Dynamics 365 -------------------------------------------------


def test_separation_of_duties_and_already_at_target_are_refused(m365_settings, fresh_sim, redis_queue, platform_admin):
    mailbox, queue_id = over_tracking_queue(fresh_sim)
    since = fresh_sim.last_seq()
    change = tracking_change_request(actor=platform_admin, mailbox_id=mailbox.pk)
    with pytest.raises(PermissionDeniedError, match="another platform admin"):
        tracking_change_decide(actor=platform_admin, change_id=change.pk, approve=True)
    assert redis_queue.count == 0
    assert TrackingChange.objects.get(pk=change.pk).status == TrackingChangeStatus.PENDING

    calm = ManagedMailbox.objects.create(
        dataverse_id=uuid.uuid4(),
        kind=ManagedKind.QUEUE,
        source=ManagedSource.ONBOARDING,
        owner_dataverse_id=uuid.uuid4(),
        tracking_rule=policy_get().default_tracking_rule_queue,
        added_at=timezone.now(),
    )
    with pytest.raises(InvalidStateError, match="already tracks"):
        tracking_change_request(actor=platform_admin, mailbox_id=calm.pk)
    assert patches(fresh_sim, since, "queues", queue_id) == []


# --- the remote state decides -----------------------------------------------------------------------


def test_a_rule_already_in_place_in_dynamics_is_recorded_as_applied_without_a_write(
    m365_settings, fresh_sim, redis_queue, platform_admin, second_admin
):
    mailbox, queue_id = over_tracking_queue(fresh_sim)
    change = approved_change(mailbox, platform_admin, second_admin)
    # Someone set the recommended rule in Dynamics 365 before the job ran.
    fresh_sim.control("PATCH", f"state/queues/{queue_id}", {COLUMN: change.to_rule})
    since = fresh_sim.last_seq()

    run_worker(redis_queue)

    change.refresh_from_db()
    assert change.status == TrackingChangeStatus.APPLIED
    assert change.remote_before == change.to_rule
    assert patches(fresh_sim, since, "queues", queue_id) == []
    assert AuditEvent.objects.get(action="tracking_change.applied", object_id=str(change.pk)).after["written"] is False


def test_a_rule_changed_in_dynamics_since_the_request_is_not_overwritten(
    m365_settings, fresh_sim, redis_queue, platform_admin, second_admin
):
    mailbox, queue_id = over_tracking_queue(fresh_sim)
    change = approved_change(mailbox, platform_admin, second_admin)
    fresh_sim.control("PATCH", f"state/queues/{queue_id}", {COLUMN: TrackingRule.NONE})
    since = fresh_sim.last_seq()

    run_worker(redis_queue)

    change.refresh_from_db()
    assert change.status == TrackingChangeStatus.FAILED
    assert "now tracks “No email messages”, not “All email messages”" in change.error
    assert "Nothing was overwritten" in change.error
    assert change.remote_before == TrackingRule.NONE
    assert patches(fresh_sim, since, "queues", queue_id) == []
    assert fresh_sim.row("queues", queue_id)[COLUMN] == TrackingRule.NONE
    mailbox.refresh_from_db()
    assert mailbox.tracking_rule == TrackingRule.NONE  # the portal now knows what Dynamics 365 holds
    assert AuditEvent.objects.filter(action="tracking_change.failed", object_id=str(change.pk)).exists()


def _edit_after_first_read(monkeypatch, sim, queue_id: str, changes: dict) -> None:
    """Someone edits the queue in Dynamics 365 between the job's read and its write (once)."""
    original = DataverseClient.get
    done = []

    def get(self, entity_set, row_id_value, *, select):
        row = original(self, entity_set, row_id_value, select=select)
        if entity_set == "queues" and not done:
            done.append(True)
            sim.control("PATCH", f"state/queues/{queue_id}", changes)
        return row

    monkeypatch.setattr(DataverseClient, "get", get)


def test_a_412_for_another_column_is_read_again_and_written(
    m365_settings, fresh_sim, redis_queue, platform_admin, second_admin, monkeypatch
):
    mailbox, queue_id = over_tracking_queue(fresh_sim)
    change = approved_change(mailbox, platform_admin, second_admin)
    _edit_after_first_read(monkeypatch, fresh_sim, queue_id, {"description": "Edited by someone"})
    since = fresh_sim.last_seq()

    run_worker(redis_queue)

    change.refresh_from_db()
    assert change.status == TrackingChangeStatus.APPLIED, change.error
    attempts = patches(fresh_sim, since, "queues", queue_id)
    assert [entry["status"] for entry in attempts] == [412, 204]
    assert len(applied(attempts)) == 1
    row = fresh_sim.row("queues", queue_id)
    assert (row[COLUMN], row["description"]) == (change.to_rule, "Edited by someone")


def test_a_412_because_the_rule_itself_changed_is_reported_not_overwritten(
    m365_settings, fresh_sim, redis_queue, platform_admin, second_admin, monkeypatch
):
    mailbox, queue_id = over_tracking_queue(fresh_sim)
    change = approved_change(mailbox, platform_admin, second_admin)
    _edit_after_first_read(monkeypatch, fresh_sim, queue_id, {COLUMN: TrackingRule.RESPONSES})
    since = fresh_sim.last_seq()

    run_worker(redis_queue)

    change.refresh_from_db()
    assert change.status == TrackingChangeStatus.FAILED
    assert "while the change was being applied" in change.error
    assert change.remote_before == TrackingRule.ALL
    assert [entry["status"] for entry in patches(fresh_sim, since, "queues", queue_id)] == [412]
    assert fresh_sim.row("queues", queue_id)[COLUMN] == TrackingRule.RESPONSES


# --- jobs: duplicates, temporary errors, retries -----------------------------------------------------


def test_a_duplicated_job_changes_nothing_twice(m365_settings, fresh_sim, redis_queue, platform_admin, second_admin):
    mailbox, queue_id = over_tracking_queue(fresh_sim)
    since = fresh_sim.last_seq()
    change = approved_change(mailbox, platform_admin, second_admin)
    redis_queue.enqueue(tracking_change_apply_job, change.pk)  # the same job, queued twice
    assert redis_queue.count == 2

    run_worker(redis_queue)

    change.refresh_from_db()
    assert change.status == TrackingChangeStatus.APPLIED
    assert change.attempts == 1
    assert len(patches(fresh_sim, since, "queues", queue_id)) == 1
    assert AuditEvent.objects.filter(action="tracking_change.applied", object_id=str(change.pk)).count() == 1


def test_a_temporary_error_puts_the_change_back_and_the_job_tries_again(
    m365_settings, fresh_sim, redis_queue, platform_admin, second_admin
):
    mailbox, queue_id = over_tracking_queue(fresh_sim)
    fresh_sim.control("PUT", "faults", {"rate_5xx": 1.0, "operations": ["PATCH queues"], "max_faults": 1})
    since = fresh_sim.last_seq()
    change = approved_change(mailbox, platform_admin, second_admin)

    run_worker(redis_queue)

    change.refresh_from_db()
    assert change.status == TrackingChangeStatus.APPROVED
    assert change.error.startswith("Temporary error, trying again: Dynamics 365 answered with an error (503")
    assert AuditEvent.objects.filter(action="tracking_change.retry_scheduled", object_id=str(change.pk)).exists()

    work_until(redis_queue, finished(change), timeout=60)

    change.refresh_from_db()
    assert change.status == TrackingChangeStatus.APPLIED, change.error
    assert (change.attempts, change.error) == (2, "")
    assert change.remote_before == TrackingRule.ALL
    attempts = patches(fresh_sim, since, "queues", queue_id)
    assert [entry["status"] for entry in attempts] == [503, 204]
    assert len(applied(attempts)) == 1
    assert fresh_sim.row("queues", queue_id)[COLUMN] == change.to_rule


def test_a_write_whose_answer_was_lost_is_not_made_again(
    m365_settings, fresh_sim, redis_queue, platform_admin, second_admin
):
    mailbox, queue_id = over_tracking_queue(fresh_sim)
    fresh_sim.control("PUT", "faults", {"rate_lost_response": 1.0, "operations": ["PATCH queues"], "max_faults": 1})
    since = fresh_sim.last_seq()
    change = approved_change(mailbox, platform_admin, second_admin)

    work_until(redis_queue, finished(change), timeout=90)

    change.refresh_from_db()
    assert change.status == TrackingChangeStatus.APPLIED, change.error
    assert change.remote_before == TrackingRule.ALL  # what it was before the write that lost its answer
    assert len(applied(patches(fresh_sim, since, "queues", queue_id))) == 1


def test_a_failed_change_can_be_retried(m365_settings, fresh_sim, redis_queue, platform_admin, second_admin, settings):
    from portal.m365.config import M365Config

    mailbox, queue_id = over_tracking_queue(fresh_sim)
    working = settings.M365
    settings.M365 = M365Config(enabled=False)
    change = approved_change(mailbox, platform_admin, second_admin)
    run_worker(redis_queue)
    change.refresh_from_db()
    assert change.status == TrackingChangeStatus.FAILED
    assert "switched off" in change.error
    assert fresh_sim.row("queues", queue_id)[COLUMN] == TrackingRule.ALL

    settings.M365 = working
    tracking_change_retry(actor=platform_admin, change_id=change.pk)  # the requester may retry: it was approved
    run_worker(redis_queue)

    change.refresh_from_db()
    assert change.status == TrackingChangeStatus.APPLIED, change.error
    assert change.attempts == 2
    assert fresh_sim.row("queues", queue_id)[COLUMN] == change.to_rule
    assert AuditEvent.objects.filter(action="tracking_change.retried", object_id=str(change.pk)).exists()
