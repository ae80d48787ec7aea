"""Provisioning against the tenant simulator, on a real RQ worker: outcomes, re-checks, duplicates, lost responses."""

from __future__ import annotations

import datetime as dt

import django_rq
import pytest
from django.core import mail
from django.db import transaction
from django.utils import timezone

from onboarding.jobs import provisioning_run_job
from onboarding.models import (
    MailboxKind,
    MailboxRequest,
    Notification,
    NotificationEvent,
    ProvisioningRun,
    ProvisioningStep,
    QueueVisibility,
    RequestStatus,
    RunStatus,
    StepStatus,
)
from onboarding.services.provisioning import (
    provisioning_advance,
    provisioning_recover,
    provisioning_retry_from_step,
    provisioning_start,
)
from portal.audit.models import AuditEvent
from portal.exceptions import InvalidStateError
from portal.m365.exchange import ExchangeAdminClient
from portal.policy.models import TrackingRule
from tests.onboarding.factories import MailboxRequestFactory
from tests.onboarding.provisioning_support import (
    WRITE_OPERATIONS,
    applied,
    exchange_online_profile_id,
    operations,
    prepare,
    provisioning_request,
    run_finished,
    standard_members,
    start,
    work_until,
)

QUEUE_STEPS = [
    "exchange_mailbox",
    "mailbox_permissions",
    "dataverse_queue",
    "dataverse_mailbox",
    "server_profile",
    "approve_address",
    "schedule_test",
    "await_test",
]

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def ready(m365_settings, fresh_sim, redis_queue):
    prepare(fresh_sim)
    return fresh_sim


def _actions(request: MailboxRequest) -> list[str]:
    return list(
        AuditEvent.objects.filter(object_type="mailbox_request", object_id=str(request.pk))
        .order_by("seq")
        .values_list("action", flat=True)
    )


# --- starting --------------------------------------------------------------------------------------


def test_start_creates_one_run_with_keyed_steps_and_queues_it_after_commit(ready, redis_queue, platform_admin):
    request = provisioning_request(members=standard_members(ready))

    run = start(request, platform_admin)

    steps = list(run.steps.order_by("order"))
    assert [step.name for step in steps] == QUEUE_STEPS
    assert [step.idempotency_key for step in steps] == [f"{request.reference}:{name}" for name in QUEUE_STEPS]
    assert all(step.status == StepStatus.PENDING for step in steps)
    assert steps[0].inputs["address"] == request.address
    assert steps[2].inputs["incomingemailfilteringmethod"] == request.tracking_rule
    assert run.status == RunStatus.QUEUED
    assert redis_queue.count == 1
    assert "provisioning.started" in _actions(request)
    # A second call (a retried approval) returns the same run and queues nothing more.
    assert start(request, platform_admin).pk == run.pk
    assert ProvisioningRun.objects.count() == 1
    assert redis_queue.count == 1


def test_shared_mailbox_requests_have_only_the_exchange_steps(ready, platform_admin):
    request = provisioning_request(kind=MailboxKind.SHARED, members=standard_members(ready))
    run = start(request, platform_admin)
    assert list(run.steps.order_by("order").values_list("name", flat=True)) == QUEUE_STEPS[:2]


def test_nothing_is_started_or_queued_when_the_approval_rolls_back(ready, redis_queue, platform_admin):
    request = provisioning_request(members=standard_members(ready))
    with pytest.raises(RuntimeError), transaction.atomic():
        provisioning_start(request=MailboxRequest.objects.select_for_update().get(pk=request.pk), actor=platform_admin)
        raise RuntimeError("approval abandoned")
    assert not ProvisioningRun.objects.exists()
    assert redis_queue.count == 0


def test_a_request_that_is_not_being_set_up_cannot_start(ready, platform_admin):
    request = MailboxRequestFactory(status=RequestStatus.SUBMITTED)
    with pytest.raises(InvalidStateError):
        start(request, platform_admin)


# --- outcomes ----------------------------------------------------------------------------------------


def test_a_queue_request_provisions_to_active(ready, redis_queue, platform_admin):
    members = standard_members(ready)
    request = provisioning_request(
        members=members, tracking_rule=TrackingRule.RESPONSES, queue_visibility=QueueVisibility.PRIVATE
    )
    since = ready.last_seq()
    run = start(request, platform_admin)

    work_until(redis_queue, run_finished(run.pk))

    run.refresh_from_db()
    request.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED and run.finished_at
    assert request.status == RequestStatus.ACTIVE and request.activated_at
    assert request.exchange_mailbox_id and request.dataverse_queue_id and request.dataverse_mailbox_id

    exchange = next(
        row
        for row in ready.control("GET", "rows/exchange_mailboxes")["value"]
        if row["PrimarySmtpAddress"].lower() == request.address.lower()
    )
    assert exchange["RecipientTypeDetails"] == "SharedMailbox"
    assert {entry["User"].lower(): entry["AutoMapping"] for entry in exchange["_full_access"]} == {
        members[0]["email"].lower(): True,
        members[1]["email"].lower(): False,
    }
    assert [user.lower() for user in exchange["_send_as"]] == [members[0]["email"].lower()]
    assert [user.lower() for user in exchange["GrantSendOnBehalfTo"]] == [members[1]["email"].lower()]

    queue = ready.row("queues", request.dataverse_queue_id)
    assert queue["emailaddress"] == request.address
    assert queue["name"] == request.display_name
    assert queue["incomingemailfilteringmethod"] == TrackingRule.RESPONSES
    assert queue["queueviewtype"] == QueueVisibility.PRIVATE
    assert queue["emailrouteraccessapproval"] == 1

    mailbox = ready.row("mailboxes", request.dataverse_mailbox_id)
    assert mailbox["_regardingobjectid_value"] == request.dataverse_queue_id
    assert mailbox["_emailserverprofile_value"] == exchange_online_profile_id(ready)
    assert (mailbox["incomingemaildeliverymethod"], mailbox["outgoingemaildeliverymethod"]) == (2, 2)
    assert mailbox["actdeliverymethod"] == 2  # None: appointments, contacts and tasks off
    assert mailbox["emailrouteraccessapproval"] == 1
    assert (mailbox["incomingemailstatus"], mailbox["outgoingemailstatus"]) == (1, 1)

    steps = list(run.steps.order_by("order"))
    assert all(step.status == StepStatus.SUCCEEDED for step in steps)
    assert all(step.before_state is not None and step.result is not None for step in steps)
    assert all(step.started_at and step.finished_at for step in steps)
    assert steps[0].before_state == {"exists": False}
    assert steps[0].result["action"] == "created"
    assert steps[2].result["action"] == "created"

    actions = _actions(request)
    for action in (
        "provisioning.started",
        "provisioning.run_claimed",
        "m365.exchange.mailbox_created",
        "m365.exchange.full_access_granted",
        "m365.exchange.send_as_granted",
        "m365.exchange.send_on_behalf_set",
        "m365.dataverse.queue_created",
        "m365.dataverse.address_approved",
        "m365.dataverse.test_enable_scheduled",
        "provisioning.step_succeeded",
        "provisioning.succeeded",
    ):
        assert action in actions
    assert actions.count("provisioning.step_succeeded") == len(QUEUE_STEPS)

    notification = Notification.objects.get(request=request, event=NotificationEvent.ACTIVE)
    assert set(notification.recipients) == {
        request.requester.email,
        request.owner.email,
        request.backup_owner.email,
    }
    assert any(request.address in message.body and "What to do next" in message.body for message in mail.outbox)

    assert applied(ready, since, "New-Mailbox") == 1
    assert applied(ready, since, "POST queues") == 1


def test_a_shared_mailbox_request_stops_after_permissions_and_is_active(ready, redis_queue, platform_admin):
    request = provisioning_request(kind=MailboxKind.SHARED, members=standard_members(ready))
    since = ready.last_seq()
    run = start(request, platform_admin)

    work_until(redis_queue, run_finished(run.pk))

    request.refresh_from_db()
    assert request.status == RequestStatus.ACTIVE
    assert request.exchange_mailbox_id and not request.dataverse_queue_id
    assert applied(ready, since, "New-Mailbox") == 1
    assert not operations(ready, since, "POST queues", "PATCH mailboxes")


# --- re-checks and duplicates --------------------------------------------------------------------------


def test_running_every_step_again_changes_nothing(ready, redis_queue, platform_admin):
    """As if every checkpoint had been lost just after its change was made: each step finds its work done."""
    request = provisioning_request(members=standard_members(ready))
    run = start(request, platform_admin)
    work_until(redis_queue, run_finished(run.pk))
    assert ProvisioningRun.objects.get(pk=run.pk).status == RunStatus.SUCCEEDED

    run.steps.update(status=StepStatus.PENDING, started_at=None, finished_at=None, result=None, before_state=None)
    ProvisioningRun.objects.filter(pk=run.pk).update(status=RunStatus.QUEUED)
    MailboxRequest.objects.filter(pk=request.pk).update(status=RequestStatus.PROVISIONING)
    since = ready.last_seq()

    provisioning_advance(run_id=run.pk)

    assert ProvisioningRun.objects.get(pk=run.pk).status == RunStatus.SUCCEEDED
    assert MailboxRequest.objects.get(pk=request.pk).status == RequestStatus.ACTIVE
    calls = ready.ledger(since)
    assert calls, "the steps must have looked at Microsoft 365"
    assert not [call for call in calls if call["applied"]]
    assert not operations(ready, since, *WRITE_OPERATIONS)
    results = dict(run.steps.values_list("name", "result"))
    assert results["exchange_mailbox"]["action"] == "adopted"
    assert results["dataverse_queue"]["action"] == "adopted"
    assert results["server_profile"]["changed"] is False
    assert results["approve_address"]["approved"] == []
    assert results["schedule_test"]["action"] == "already_passed"


def test_a_duplicate_job_does_nothing_twice(ready, redis_queue, platform_admin):
    request = provisioning_request(members=standard_members(ready))
    since = ready.last_seq()
    run = start(request, platform_admin)
    django_rq.get_queue("default").enqueue(provisioning_run_job, run.pk)  # the same job, queued twice
    assert redis_queue.count == 2

    work_until(redis_queue, run_finished(run.pk))

    assert ProvisioningRun.objects.get(pk=run.pk).status == RunStatus.SUCCEEDED
    assert len(operations(ready, since, "New-Mailbox")) == 1
    assert len(operations(ready, since, "POST queues")) == 1
    assert len(operations(ready, since, "Add-MailboxPermission")) == 2


def test_a_job_for_a_run_another_worker_holds_does_nothing(ready, platform_admin):
    request = provisioning_request(members=standard_members(ready))
    run = start(request, platform_admin)
    expires = timezone.now() + dt.timedelta(minutes=1)
    ProvisioningRun.objects.filter(pk=run.pk).update(
        status=RunStatus.RUNNING, lease_owner="another-worker", lease_expires_at=expires
    )
    since = ready.last_seq()

    provisioning_advance(run_id=run.pk)

    run.refresh_from_db()
    assert (run.status, run.lease_owner, run.lease_expires_at) == (RunStatus.RUNNING, "another-worker", expires)
    assert not ready.ledger(since)
    assert not run.steps.exclude(status=StepStatus.PENDING).exists()


def test_a_job_for_a_waiting_run_that_is_not_due_does_nothing(ready, platform_admin):
    request = provisioning_request(members=standard_members(ready))
    run = start(request, platform_admin)
    ProvisioningRun.objects.filter(pk=run.pk).update(
        status=RunStatus.WAITING, next_attempt_at=timezone.now() + dt.timedelta(minutes=5)
    )
    since = ready.last_seq()
    provisioning_advance(run_id=run.pk)
    assert ProvisioningRun.objects.get(pk=run.pk).status == RunStatus.WAITING
    assert not ready.ledger(since)


@pytest.mark.parametrize(
    ("operation", "expected_calls"),
    [("New-Mailbox", 1), ("Add-MailboxPermission", 2), ("POST queues", 1), ("PATCH queues", 1)],
)
def test_a_lost_response_still_ends_with_one_change(ready, redis_queue, platform_admin, operation, expected_calls):
    """The change is applied but its answer never arrives: the retried step finds it and does not repeat it."""
    ready.control("PUT", "faults", {"rate_lost_response": 1.0, "operations": [operation], "max_faults": 1})
    request = provisioning_request(members=standard_members(ready))
    since = ready.last_seq()
    run = start(request, platform_admin)

    work_until(redis_queue, run_finished(run.pk))

    assert ProvisioningRun.objects.get(pk=run.pk).status == RunStatus.SUCCEEDED
    calls = operations(ready, since, operation)
    assert len(calls) == expected_calls
    assert [call["fault"] for call in calls].count("lost_response") == 1
    assert all(call["applied"] for call in calls)
    retried = AuditEvent.objects.filter(object_id=str(request.pk), action="provisioning.step_retry_scheduled")
    assert retried.count() == 1


def test_throttling_waits_for_retry_after_and_carries_on(ready, redis_queue, platform_admin):
    ready.control("PUT", "faults", {"rate_429": 1.0, "operations": ["POST queues"], "max_faults": 1, "retry_after": 1})
    request = provisioning_request(members=standard_members(ready))
    since = ready.last_seq()
    run = start(request, platform_admin)

    work_until(redis_queue, run_finished(run.pk))

    assert ProvisioningRun.objects.get(pk=run.pk).status == RunStatus.SUCCEEDED
    calls = operations(ready, since, "POST queues")
    assert [call["status"] for call in calls] == [429, 204]
    assert applied(ready, since, "POST queues") == 1
    event = AuditEvent.objects.get(object_id=str(request.pk), action="provisioning.step_retry_scheduled")
    assert '"retry_in_seconds":1' in event.after_json.replace(" ", "")
    assert ProvisioningStep.objects.get(run=run, name="dataverse_queue").attempts == 2


# --- adopting what exists ---------------------------------------------------------------------------------


def test_an_unowned_shared_mailbox_at_the_address_is_adopted(ready, redis_queue, platform_admin, m365_settings):
    request = provisioning_request(members=standard_members(ready))
    ExchangeAdminClient(m365_settings).new_shared_mailbox(
        name=request.local_part, display_name="Made earlier", primary_smtp_address=request.address
    )
    since = ready.last_seq()
    run = start(request, platform_admin)

    work_until(redis_queue, run_finished(run.pk))

    assert ProvisioningRun.objects.get(pk=run.pk).status == RunStatus.SUCCEEDED
    step = ProvisioningStep.objects.get(run=run, name="exchange_mailbox")
    assert step.before_state["RecipientTypeDetails"] == "SharedMailbox"
    assert step.result["action"] == "adopted"
    assert not operations(ready, since, "New-Mailbox")


def test_a_mailbox_that_is_not_shared_is_not_adopted(ready, redis_queue, platform_admin, m365_settings):
    request = provisioning_request(members=standard_members(ready))
    ExchangeAdminClient(m365_settings).new_shared_mailbox(
        name=request.local_part, display_name="A person", primary_smtp_address=request.address
    )
    row = f"state/exchange_mailboxes/{request.address.lower()}"
    ready.control("PATCH", row, {"RecipientTypeDetails": "UserMailbox"})
    run = start(request, platform_admin)

    work_until(redis_queue, run_finished(run.pk))

    run.refresh_from_db()
    request.refresh_from_db()
    assert run.status == RunStatus.NEEDS_ATTENTION
    assert request.status == RequestStatus.NEEDS_ATTENTION
    step = run.steps.get(name="exchange_mailbox")
    assert step.status == StepStatus.FAILED
    assert step.error_code == "address_in_use"
    assert "person's mailbox" in step.error and "only a shared mailbox can be adopted" in step.error
    assert not run.steps.exclude(name="exchange_mailbox").exclude(status=StepStatus.PENDING).exists()


def test_a_shared_mailbox_another_request_owns_is_not_adopted(ready, redis_queue, platform_admin, m365_settings):
    members = standard_members(ready)
    owner_request = provisioning_request(members=members)
    owner_request.status = RequestStatus.ACTIVE
    owner_request.save(update_fields=["status"])
    ExchangeAdminClient(m365_settings).new_shared_mailbox(
        name=owner_request.local_part, display_name="Theirs", primary_smtp_address=owner_request.address
    )
    request = provisioning_request(members=members, local_part=owner_request.local_part)
    run = start(request, platform_admin)

    work_until(redis_queue, run_finished(run.pk))

    step = ProvisioningStep.objects.get(run=run, name="exchange_mailbox")
    assert step.status == StepStatus.FAILED
    assert owner_request.reference in step.error


def test_an_address_exchange_refuses_fails_with_exchanges_words(ready, redis_queue, platform_admin):
    """A person's address Get-Mailbox cannot see: New-Mailbox says the proxy address is in use."""
    person = standard_members(ready)[0]["email"]
    local_part, domain = person.split("@")
    request = provisioning_request(members=standard_members(ready), local_part=local_part, domain=domain)
    run = start(request, platform_admin)

    work_until(redis_queue, run_finished(run.pk))

    step = ProvisioningStep.objects.get(run=run, name="exchange_mailbox")
    assert step.status == StepStatus.FAILED
    assert "Exchange Online answered with an error (400" in step.error
    assert "is already being used" in step.error
    notification = Notification.objects.get(request=request, event=NotificationEvent.NEEDS_ATTENTION)
    assert request.requester.email in notification.recipients
    assert platform_admin.email in notification.recipients


# --- crash recovery ---------------------------------------------------------------------------------------


def test_the_watchdog_requeues_a_run_whose_worker_died(ready, redis_queue, platform_admin):
    request = provisioning_request(members=standard_members(ready))
    run = start(request, platform_admin)
    redis_queue.empty()  # the job was lost with its worker
    ProvisioningRun.objects.filter(pk=run.pk).update(
        status=RunStatus.RUNNING,
        lease_owner="dead-worker",
        lease_expires_at=timezone.now() - dt.timedelta(seconds=1),
    )
    ProvisioningStep.objects.filter(run=run, order=1).update(
        status=StepStatus.RUNNING, attempts=1, started_at=timezone.now()
    )

    provisioning_recover(run_id=run.pk)

    assert ProvisioningRun.objects.get(pk=run.pk).status == RunStatus.QUEUED
    assert redis_queue.count == 1
    work_until(redis_queue, run_finished(run.pk))
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED
    assert "provisioning.run_recovered" in _actions(request)
    assert run.steps.get(order=1).attempts == 2


def test_the_watchdog_leaves_a_live_worker_alone_and_looks_again_later(ready, redis_queue, platform_admin):
    request = provisioning_request(members=standard_members(ready))
    run = start(request, platform_admin)
    redis_queue.empty()
    ProvisioningRun.objects.filter(pk=run.pk).update(
        status=RunStatus.RUNNING, lease_owner="live-worker", lease_expires_at=timezone.now() + dt.timedelta(seconds=30)
    )

    provisioning_recover(run_id=run.pk)

    assert ProvisioningRun.objects.get(pk=run.pk).lease_owner == "live-worker"
    assert redis_queue.count == 0
    assert redis_queue.scheduled_job_registry.count == 1


def test_an_unavailable_job_queue_is_recorded_and_can_be_retried(settings, redis_queue, platform_admin):
    working = settings.RQ_QUEUES
    # Nothing listens on port 1: the enqueue after commit fails as it would with Redis down.
    settings.RQ_QUEUES = {"default": {"URL": "redis://127.0.0.1:1/0", "DEFAULT_TIMEOUT": 60}}
    request = provisioning_request()

    run = start(request, platform_admin)

    run.refresh_from_db()
    assert run.status == RunStatus.NEEDS_ATTENTION
    assert "job queue was unavailable" in run.last_error
    assert MailboxRequest.objects.get(pk=request.pk).status == RequestStatus.NEEDS_ATTENTION
    assert "provisioning.not_queued" in _actions(request)

    settings.RQ_QUEUES = working
    provisioning_retry_from_step(actor=platform_admin, run_id=run.pk, step_order=1)
    assert ProvisioningRun.objects.get(pk=run.pk).status == RunStatus.QUEUED
    assert redis_queue.count == 1
