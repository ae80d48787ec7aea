"""The platform admin's provisioning pages: who may see them, the list, a run's steps, retry and mark done."""

from __future__ import annotations

import pytest
from django.urls import reverse
from django.utils import timezone

from onboarding.models import MailboxRequest, ProvisioningRun, ProvisioningStep, RequestStatus, RunStatus, StepStatus
from portal.audit.models import AuditEvent
from tests.onboarding.provisioning_support import provisioning_request, start

pytestmark = pytest.mark.django_db


def _needs_attention(run: ProvisioningRun, failing: str, error: str = "Something went wrong.") -> ProvisioningStep:
    """Shape a run as the job leaves it when a step fails for good."""
    now = timezone.now()
    steps = list(run.steps.order_by("order"))
    failed = next(step for step in steps if step.name == failing)
    for step in steps:
        if step.order < failed.order:
            step.status = StepStatus.SUCCEEDED
            step.attempts = 1
            step.started_at = step.finished_at = now
            step.before_state = {"exists": False}
            step.result = {"action": "created"}
        elif step.order == failed.order:
            step.status = StepStatus.FAILED
            step.attempts = 2
            step.started_at = step.finished_at = now
            step.before_state = {"queue_emailrouteraccessapproval": 0}
            step.error = error
            step.error_code = "0x80040220"
        step.save()
    ProvisioningRun.objects.filter(pk=run.pk).update(status=RunStatus.NEEDS_ATTENTION, last_error=error, started_at=now)
    MailboxRequest.objects.filter(pk=run.request_id).update(status=RequestStatus.NEEDS_ATTENTION)
    failed.refresh_from_db()
    return failed


@pytest.fixture
def run(platform_admin):
    return start(provisioning_request(), platform_admin)


@pytest.fixture
def admin_client(platform_admin, client_for):
    return client_for(platform_admin)


def _urls(run: ProvisioningRun) -> list[tuple[str, str]]:
    step = run.steps.get(order=1)
    return [
        ("get", reverse("onboarding:provisioning_runs")),
        ("get", reverse("onboarding:provisioning_run", args=[run.pk])),
        ("post", reverse("onboarding:provisioning_step_retry", args=[run.pk, step.pk])),
        ("get", reverse("onboarding:provisioning_step_done", args=[run.pk, step.pk])),
        ("post", reverse("onboarding:provisioning_step_done", args=[run.pk, step.pk])),
    ]


# --- access ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("persona", ["requester", "approver", "auditor", "migration_lead", "outsider"])
def test_only_platform_admins_may_use_the_pages(request, persona, run, client_for):
    client = client_for(request.getfixturevalue(persona))
    for method, url in _urls(run):
        assert getattr(client, method)(url).status_code == 403, url
    assert ProvisioningRun.objects.get(pk=run.pk).status == RunStatus.QUEUED


def test_signed_out_people_are_sent_to_sign_in(client, run):
    for method, url in _urls(run):
        response = getattr(client, method)(url)
        assert response.status_code == 302
        assert response.url.startswith(reverse("accounts:sign_in")), url


def test_unknown_runs_and_steps_of_other_runs_are_not_found(admin_client, run, platform_admin):
    other = start(provisioning_request(), platform_admin)
    foreign_step = other.steps.get(order=1)
    assert admin_client.get(reverse("onboarding:provisioning_run", args=[999999])).status_code == 404
    retry = reverse("onboarding:provisioning_step_retry", args=[run.pk, foreign_step.pk])
    assert admin_client.post(retry).status_code == 404
    done = reverse("onboarding:provisioning_step_done", args=[run.pk, foreign_step.pk])
    assert admin_client.get(done).status_code == 404


# --- the list --------------------------------------------------------------------------------------


def test_the_list_shows_runs_needing_attention_first_then_in_progress_then_the_rest(admin_client, platform_admin):
    attention = start(provisioning_request(display_name="Broken one"), platform_admin)
    _needs_attention(attention, "approve_address", "Dynamics 365 refused to approve the email address.")
    finished = start(provisioning_request(display_name="Finished one"), platform_admin)
    ProvisioningRun.objects.filter(pk=finished.pk).update(status=RunStatus.SUCCEEDED, finished_at=timezone.now())
    finished.steps.update(status=StepStatus.SUCCEEDED)
    waiting = start(provisioning_request(display_name="Waiting one"), platform_admin)
    ProvisioningRun.objects.filter(pk=waiting.pk).update(status=RunStatus.WAITING)

    html = admin_client.get(reverse("onboarding:provisioning_runs")).content.decode()

    positions = [html.index(name) for name in ("Broken one", "Waiting one", "Finished one")]
    assert positions == sorted(positions)
    assert "Step 6 of 8: Approve the email address" in html
    assert "Dynamics 365 refused to approve the email address." in html
    assert "8 of 8 steps done" in html
    assert reverse("onboarding:provisioning_run", args=[attention.pk]) in html


def test_the_list_reads_a_page_in_a_constant_number_of_queries(
    admin_client, platform_admin, django_assert_max_num_queries
):
    for _ in range(12):
        start(provisioning_request(), platform_admin)
    with django_assert_max_num_queries(12):
        response = admin_client.get(reverse("onboarding:provisioning_runs"))
    assert response.status_code == 200
    assert response.content.decode().count("Step 1 of 8") == 12


def test_an_empty_list_says_so(admin_client):
    html = admin_client.get(reverse("onboarding:provisioning_runs")).content.decode()
    assert "No request has reached provisioning yet" in html


# --- one run --------------------------------------------------------------------------------------


def test_the_run_page_shows_every_step_with_what_it_found_and_did(admin_client, run):
    error = "Dynamics 365 refused: an Exchange administrator must approve it."
    failed = _needs_attention(run, "approve_address", error)

    html = admin_client.get(reverse("onboarding:provisioning_run", args=[run.pk])).content.decode()

    assert "Needs attention" in html
    assert "an Exchange administrator must approve it." in html
    assert html.count('class="govuk-summary-card"') == 8
    for title in ("Create the shared mailbox in Exchange Online", "Approve the email address", "Test &amp; Enable"):
        assert title in html
    assert "queue_emailrouteraccessapproval" in html  # the state found before acting
    assert "&quot;action&quot;: &quot;created&quot;" in html  # a result
    assert run.request.address in html  # an input
    assert "0x80040220" in html
    # Retry from the failing step or any earlier one; mark only the failing one as done.
    assert html.count("Retry from this step") == failed.order
    assert html.count("Mark as done by hand") == 1
    assert reverse("onboarding:provisioning_step_done", args=[run.pk, failed.pk]) in html


def test_a_run_in_progress_offers_no_actions(admin_client, run):
    html = admin_client.get(reverse("onboarding:provisioning_run", args=[run.pk])).content.decode()
    assert "Retry from this step" not in html
    assert "Mark as done by hand" not in html
    assert "The background job is working on this request" in html


# --- retry from a step ----------------------------------------------------------------------------


def test_retry_from_a_step_resets_it_and_the_later_ones_and_queues_the_run(
    admin_client, run, platform_admin, redis_queue, django_capture_on_commit_callbacks
):
    _needs_attention(run, "approve_address")
    second = run.steps.get(order=2)

    with django_capture_on_commit_callbacks(execute=True):
        url = reverse("onboarding:provisioning_step_retry", args=[run.pk, second.pk])
        response = admin_client.post(url, follow=True)

    assert "Provisioning will start again from step 2" in response.content.decode()
    run.refresh_from_db()
    assert run.status == RunStatus.QUEUED and run.last_error == ""
    assert MailboxRequest.objects.get(pk=run.request_id).status == RequestStatus.PROVISIONING
    statuses = dict(run.steps.values_list("order", "status"))
    assert statuses[1] == StepStatus.SUCCEEDED
    assert all(statuses[order] == StepStatus.PENDING for order in range(2, 9))
    reset = run.steps.get(order=6)
    assert (reset.error, reset.attempts, reset.before_state, reset.started_at) == ("", 0, None, None)
    event = AuditEvent.objects.get(action="provisioning.retried_from_step")
    assert event.actor_id == platform_admin.pk
    assert '"from_step":"mailbox_permissions"' in event.after_json.replace(" ", "")
    assert redis_queue.count == 1


def test_retrying_the_wait_for_test_and_enable_schedules_a_new_test(admin_client, run):
    failed = _needs_attention(run, "await_test", "Test & Enable failed.")
    admin_client.post(reverse("onboarding:provisioning_step_retry", args=[run.pk, failed.pk]))
    statuses = dict(run.steps.values_list("name", "status"))
    assert statuses["approve_address"] == StepStatus.SUCCEEDED
    assert statuses["schedule_test"] == StepStatus.PENDING
    assert statuses["await_test"] == StepStatus.PENDING


def test_retry_is_refused_when_nothing_needs_attention(admin_client, run):
    step = run.steps.get(order=1)
    response = admin_client.post(reverse("onboarding:provisioning_step_retry", args=[run.pk, step.pk]), follow=True)
    assert "does not need attention" in response.content.decode()
    assert ProvisioningRun.objects.get(pk=run.pk).status == RunStatus.QUEUED
    assert not AuditEvent.objects.filter(action="provisioning.retried_from_step").exists()


def test_retry_from_beyond_the_failing_step_is_refused(admin_client, run):
    _needs_attention(run, "dataverse_queue")
    later = run.steps.get(order=5)
    response = admin_client.post(reverse("onboarding:provisioning_step_retry", args=[run.pk, later.pk]), follow=True)
    assert "the step that needs attention or an earlier one" in response.content.decode()
    assert ProvisioningRun.objects.get(pk=run.pk).status == RunStatus.NEEDS_ATTENTION


# --- mark a step as done by hand --------------------------------------------------------------------


def test_marking_done_asks_what_was_done(admin_client, run):
    failed = _needs_attention(run, "approve_address", "Approval refused.")
    url = reverse("onboarding:provisioning_step_done", args=[run.pk, failed.pk])

    page = admin_client.get(url).content.decode()
    assert "What did you do to complete this step?" in page
    assert "Approval refused." in page

    for note in ("", "   "):
        response = admin_client.post(url, {"note": note})
        html = response.content.decode()
        assert response.status_code == 200
        assert "<title>Error: " in html
        assert "govuk-error-summary" in html
        assert "Enter what you did to complete this step" in html
    assert ProvisioningStep.objects.get(pk=failed.pk).status == StepStatus.FAILED


def test_a_note_that_is_too_long_is_refused_clearly(admin_client, run):
    failed = _needs_attention(run, "approve_address")
    url = reverse("onboarding:provisioning_step_done", args=[run.pk, failed.pk])
    html = admin_client.post(url, {"note": "x" * 2001}).content.decode()
    assert "must be 2,000 characters or fewer" in html


def test_marking_done_records_who_and_why_and_the_run_continues(
    admin_client, run, platform_admin, redis_queue, django_capture_on_commit_callbacks
):
    failed = _needs_attention(run, "approve_address")
    url = reverse("onboarding:provisioning_step_done", args=[run.pk, failed.pk])

    with django_capture_on_commit_callbacks(execute=True):
        note = "Approved in Dynamics 365 by the Exchange admin, 3 March."
        response = admin_client.post(url, {"note": note}, follow=True)

    assert "Step 6 is marked as done by hand" in response.content.decode()
    step = ProvisioningStep.objects.get(pk=failed.pk)
    assert step.status == StepStatus.DONE_BY_HAND
    assert step.done_by == platform_admin
    assert step.note == "Approved in Dynamics 365 by the Exchange admin, 3 March."
    run.refresh_from_db()
    assert run.status == RunStatus.QUEUED
    assert MailboxRequest.objects.get(pk=run.request_id).status == RequestStatus.PROVISIONING
    event = AuditEvent.objects.get(action="provisioning.step_done_by_hand")
    assert event.reason == step.note and event.actor_id == platform_admin.pk
    assert redis_queue.count == 1
    html = admin_client.get(reverse("onboarding:provisioning_run", args=[run.pk])).content.decode()
    assert "Done by hand" in html and "Approved in Dynamics 365 by the Exchange admin" in html


def test_only_the_step_needing_attention_can_be_marked_done(admin_client, run):
    _needs_attention(run, "approve_address")
    earlier = run.steps.get(order=2)
    url = reverse("onboarding:provisioning_step_done", args=[run.pk, earlier.pk])
    for response in (admin_client.get(url, follow=True), admin_client.post(url, {"note": "did it"}, follow=True)):
        assert "Only the step that needs attention can be marked as done by hand" in response.content.decode()
    assert ProvisioningStep.objects.get(pk=earlier.pk).status == StepStatus.SUCCEEDED
