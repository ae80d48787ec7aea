"""When Microsoft 365 refuses: the run needs attention with Microsoft's words, and a platform admin finishes it."""

from __future__ import annotations

import pytest
from django.urls import reverse

from onboarding.models import (
    MailboxRequest,
    Notification,
    NotificationEvent,
    ProvisioningRun,
    ProvisioningStep,
    RequestStatus,
    RunStatus,
    StepStatus,
)
from portal.audit.models import AuditEvent
from tests.onboarding.provisioning_support import (
    applied,
    graph_user_id,
    operations,
    prepare,
    provisioning_request,
    run_finished,
    run_worker,
    standard_members,
    start,
    work_until,
)

pytestmark = pytest.mark.django_db(transaction=True)


def _states(run: ProvisioningRun) -> tuple[str, str]:
    run.refresh_from_db()
    return run.status, MailboxRequest.objects.get(pk=run.request_id).status


def test_failing_test_and_enable_shows_the_alert_and_retry_completes_it(
    m365_settings, fresh_sim, redis_queue, platform_admin, client_for
):
    # Test & Enable takes a few seconds, so the mailbox can leave Exchange Online while it runs.
    prepare(fresh_sim, test_enable_delay=4)
    request = provisioning_request(members=standard_members(fresh_sim))
    since = fresh_sim.last_seq()
    run = start(request, platform_admin)

    run_worker(redis_queue)  # steps 1 to 7, and a first look at the test that is still running
    assert _states(run) == (RunStatus.WAITING, RequestStatus.PROVISIONING)
    assert ProvisioningStep.objects.get(run=run, name="await_test").status == StepStatus.RUNNING
    user_id = graph_user_id(fresh_sim, request.address)
    fresh_sim.control("PATCH", f"state/graph_users/{user_id}", {"mailbox_location": "on_premises"})

    work_until(redis_queue, run_finished(run.pk))

    assert _states(run) == (RunStatus.NEEDS_ATTENTION, RequestStatus.NEEDS_ATTENTION)
    step = ProvisioningStep.objects.get(run=run, name="await_test")
    assert step.status == StepStatus.FAILED and step.error_code == "test_enable_failed"
    assert "was not found in Exchange Online" in step.error
    assert step.before_state["alerts"][0]["tracecode"] == 31
    notification = Notification.objects.get(request=request, event=NotificationEvent.NEEDS_ATTENTION)
    assert {request.requester.email, request.owner.email, platform_admin.email} <= set(notification.recipients)

    admin = client_for(platform_admin)
    page = admin.get(reverse("onboarding:provisioning_run", args=[run.pk])).content.decode()
    assert "Needs attention" in page
    assert "was not found in Exchange Online" in page
    listing = admin.get(reverse("onboarding:provisioning_runs")).content.decode()
    assert request.reference in listing and "Needs attention" in listing

    # The cause is cleared; the admin retries from the failed step, which tests the mailbox again.
    fresh_sim.control("PATCH", f"state/graph_users/{user_id}", {"mailbox_location": "exchange_online"})
    response = admin.post(reverse("onboarding:provisioning_step_retry", args=[run.pk, step.pk]), follow=True)
    assert "Provisioning will start again from step 7" in response.content.decode()

    work_until(redis_queue, run_finished(run.pk))

    assert _states(run) == (RunStatus.SUCCEEDED, RequestStatus.ACTIVE)
    mailbox = fresh_sim.row("mailboxes", MailboxRequest.objects.get(pk=request.pk).dataverse_mailbox_id)
    assert (mailbox["incomingemailstatus"], mailbox["outgoingemailstatus"]) == (1, 1)
    assert applied(fresh_sim, since, "New-Mailbox") == 1
    assert applied(fresh_sim, since, "POST queues") == 1
    assert len(operations(fresh_sim, since, "New-Mailbox", "POST queues")) == 2
    page = admin.get(reverse("onboarding:provisioning_run", args=[run.pk])).content.decode()
    assert "The mailbox is set up and the request is active." in page


def test_refused_address_approval_explains_who_must_approve_and_can_be_done_by_hand(
    m365_settings, fresh_sim, redis_queue, platform_admin, client_for
):
    prepare(fresh_sim, deny_address_approval=True)
    request = provisioning_request(members=standard_members(fresh_sim))
    run = start(request, platform_admin)

    work_until(redis_queue, run_finished(run.pk))

    assert _states(run) == (RunStatus.NEEDS_ATTENTION, RequestStatus.NEEDS_ATTENTION)
    step = ProvisioningStep.objects.get(run=run, name="approve_address")
    assert step.status == StepStatus.FAILED
    assert "Exchange administrator or Global administrator must approve it" in step.error
    assert "prvApproveRejectEmailAddress" in step.error  # Microsoft's own words
    assert step.before_state == {"queue_emailrouteraccessapproval": 0, "mailbox_emailrouteraccessapproval": 0}

    admin = client_for(platform_admin)
    done_url = reverse("onboarding:provisioning_step_done", args=[run.pk, step.pk])
    page = admin.get(reverse("onboarding:provisioning_run", args=[run.pk])).content.decode()
    assert "Mark as done by hand" in page and done_url in page

    # An Exchange admin approves the address in Dynamics 365; the platform admin records it.
    queue_id = MailboxRequest.objects.get(pk=request.pk).dataverse_queue_id
    fresh_sim.control("PATCH", f"state/queues/{queue_id}", {"emailrouteraccessapproval": 1})
    missing = admin.post(done_url, {"note": ""}).content.decode()
    assert "There is a problem" in missing and "Enter what you did to complete this step" in missing
    response = admin.post(done_url, {"note": "Approved by the Exchange admin in Dynamics 365."}, follow=True)
    assert "marked as done by hand" in response.content.decode()

    work_until(redis_queue, run_finished(run.pk))

    assert _states(run) == (RunStatus.SUCCEEDED, RequestStatus.ACTIVE)
    step.refresh_from_db()
    assert step.status == StepStatus.DONE_BY_HAND and step.done_by == platform_admin
    assert AuditEvent.objects.filter(action="provisioning.step_done_by_hand", actor_id=platform_admin.pk).exists()
    assert ProvisioningStep.objects.get(run=run, name="await_test").status == StepStatus.SUCCEEDED


def test_refused_approval_retried_once_the_privilege_is_granted(
    m365_settings, fresh_sim, redis_queue, platform_admin, client_for
):
    prepare(fresh_sim, deny_address_approval=True)
    request = provisioning_request(members=standard_members(fresh_sim))
    since = fresh_sim.last_seq()
    run = start(request, platform_admin)
    work_until(redis_queue, run_finished(run.pk))
    step = ProvisioningStep.objects.get(run=run, name="approve_address")
    assert step.status == StepStatus.FAILED

    fresh_sim.control("PUT", "settings", {"deny_address_approval": False})
    client_for(platform_admin).post(reverse("onboarding:provisioning_step_retry", args=[run.pk, step.pk]))
    work_until(redis_queue, run_finished(run.pk))

    assert _states(run) == (RunStatus.SUCCEEDED, RequestStatus.ACTIVE)
    approvals = [call for call in operations(fresh_sim, since, "PATCH queues") if call["status"] < 300]
    assert len(approvals) == 1
    assert len([call for call in operations(fresh_sim, since, "PATCH queues") if call["status"] == 403]) == 1
    assert applied(fresh_sim, since, "New-Mailbox") == 1
