"""Requesting, deciding and retrying tracking changes: who may, separation of duties, refused transitions."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from django.utils import timezone

from governance.jobs import tracking_change_apply_job
from governance.models import ManagedKind, ManagedMailbox, ManagedSource, TrackingChange, TrackingChangeStatus
from governance.services.tracking import (
    TrackingChangeError,
    tracking_change_apply,
    tracking_change_decide,
    tracking_change_request,
    tracking_change_retry,
)
from portal.accounts.roles import Role
from portal.audit.models import AuditEvent
from portal.exceptions import InvalidStateError, PermissionDeniedError
from portal.policy.models import PolicySettings, TrackingRule
from portal.policy.services import policy_get
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def managed(*, kind: str = ManagedKind.QUEUE, rule: int | None = TrackingRule.ALL, owners=(), **fields):
    fields.setdefault("name", f"Mailbox {uuid.uuid4().hex[:6]}")
    mailbox = ManagedMailbox.objects.create(
        dataverse_id=uuid.uuid4(),
        owner_dataverse_id=fields.pop("owner_dataverse_id", uuid.uuid4()),
        kind=kind,
        source=ManagedSource.ONBOARDING,
        tracking_rule=rule,
        added_at=timezone.now(),
        **fields,
    )
    mailbox.owners.set(owners)
    return mailbox


@pytest.fixture
def second_admin(db):
    return UserFactory(username="ravi", first_name="Ravi", last_name="Shah", roles=[Role.PLATFORM_ADMIN])


# --- requesting ------------------------------------------------------------------------------------


def test_an_admin_requests_the_recommended_rule_for_each_kind(platform_admin):
    policy_get()
    PolicySettings.objects.filter(pk=1).update(
        default_tracking_rule_queue=TrackingRule.EMAIL_ENABLED_RECORDS,
        default_tracking_rule_shared=TrackingRule.RESPONSES,
        default_tracking_rule_user=TrackingRule.LEADS_CONTACTS_ACCOUNTS,
    )
    expected = {
        ManagedKind.QUEUE: TrackingRule.EMAIL_ENABLED_RECORDS,
        ManagedKind.SHARED: TrackingRule.RESPONSES,
        ManagedKind.USER: TrackingRule.LEADS_CONTACTS_ACCOUNTS,
    }
    for kind, rule in expected.items():
        mailbox = managed(kind=kind)
        change = tracking_change_request(actor=platform_admin, mailbox_id=mailbox.pk, reason="  Too much mail  ")
        assert (change.from_rule, change.to_rule) == (TrackingRule.ALL, rule)
        assert change.status == TrackingChangeStatus.PENDING
        assert change.requested_by == platform_admin
        assert change.reason == "Too much mail"
        event = AuditEvent.objects.get(action="tracking_change.requested", object_id=str(change.pk))
        assert event.object_type == "tracking_change"
        assert event.after["to_rule"] == rule
        assert event.before == {"mailbox": mailbox.pk, "tracking_rule": TrackingRule.ALL}


def test_an_owner_requests_for_their_mailbox_and_may_choose_the_rule(requester):
    mailbox = managed(owners=[requester])
    change = tracking_change_request(actor=requester, mailbox_id=mailbox.pk, to_rule=TrackingRule.RESPONSES)
    assert change.to_rule == TrackingRule.RESPONSES


def test_someone_who_does_not_own_the_mailbox_is_refused(requester, outsider, approver):
    mailbox = managed(owners=[requester])
    for person in (outsider, approver):
        with pytest.raises(PermissionDeniedError, match="platform admin or an owner"):
            tracking_change_request(actor=person, mailbox_id=mailbox.pk)
    assert not TrackingChange.objects.exists()


def test_a_mailbox_already_at_the_target_rule_is_refused(platform_admin):
    mailbox = managed(rule=TrackingRule.EMAIL_ENABLED_RECORDS, name="Finance queue")
    with pytest.raises(InvalidStateError, match="Finance queue already tracks “Email messages from Dynamics 365"):
        tracking_change_request(actor=platform_admin, mailbox_id=mailbox.pk)
    with pytest.raises(InvalidStateError, match="nothing to change"):
        tracking_change_request(actor=platform_admin, mailbox_id=mailbox.pk, to_rule=TrackingRule.EMAIL_ENABLED_RECORDS)
    assert not TrackingChange.objects.exists()


def test_a_second_request_while_one_is_open_names_the_open_one(platform_admin, requester):
    mailbox = managed(owners=[requester], name="Benefits queue")
    first = tracking_change_request(actor=requester, mailbox_id=mailbox.pk)
    with pytest.raises(InvalidStateError) as refused:
        tracking_change_request(actor=platform_admin, mailbox_id=mailbox.pk, to_rule=TrackingRule.NONE)
    assert f"change {first.pk}" in refused.value.message
    assert "Benefits queue already has an open tracking change" in refused.value.message
    assert "waiting for approval" in refused.value.message
    assert TrackingChange.objects.count() == 1


def test_a_new_request_is_allowed_once_the_last_one_is_closed(platform_admin, second_admin):
    mailbox = managed()
    first = tracking_change_request(actor=platform_admin, mailbox_id=mailbox.pk)
    tracking_change_decide(actor=second_admin, change_id=first.pk, approve=False, reason="Not now")
    again = tracking_change_request(actor=platform_admin, mailbox_id=mailbox.pk)
    assert again.pk != first.pk


def test_inactive_and_unknown_mailboxes_are_refused(platform_admin):
    gone = managed(is_active=False)
    with pytest.raises(TrackingChangeError, match="not managed by the portal any more"):
        tracking_change_request(actor=platform_admin, mailbox_id=gone.pk)
    with pytest.raises(TrackingChangeError, match="not managed by the portal any more"):
        tracking_change_request(actor=platform_admin, mailbox_id=gone.pk + 1000)


def test_a_mailbox_whose_owner_record_is_unknown_is_refused(platform_admin):
    mailbox = managed(owner_dataverse_id=None)
    with pytest.raises(InvalidStateError, match="which queue or user owns"):
        tracking_change_request(actor=platform_admin, mailbox_id=mailbox.pk)


def test_bad_input_is_refused_with_a_field(platform_admin):
    mailbox = managed()
    with pytest.raises(TrackingChangeError) as refused:
        tracking_change_request(actor=platform_admin, mailbox_id=mailbox.pk, to_rule=9)
    assert refused.value.field == "to_rule"
    with pytest.raises(TrackingChangeError, match="2,000 characters or fewer"):
        tracking_change_request(actor=platform_admin, mailbox_id=mailbox.pk, reason="x" * 2001)


# --- deciding --------------------------------------------------------------------------------------


def test_the_requester_cannot_approve_their_own_change(platform_admin):
    change = tracking_change_request(actor=platform_admin, mailbox_id=managed().pk)
    with pytest.raises(PermissionDeniedError, match="You requested this change, so another platform admin"):
        tracking_change_decide(actor=platform_admin, change_id=change.pk, approve=True)
    with pytest.raises(PermissionDeniedError, match="another platform admin"):
        tracking_change_decide(actor=platform_admin, change_id=change.pk, approve=False, reason="Changed my mind")
    change.refresh_from_db()
    assert change.status == TrackingChangeStatus.PENDING
    assert not AuditEvent.objects.filter(action__in=["tracking_change.approved", "tracking_change.rejected"]).exists()


def test_only_a_platform_admin_decides(requester, approver):
    change = tracking_change_request(actor=requester, mailbox_id=managed(owners=[requester]).pk)
    with pytest.raises(PermissionDeniedError, match="Only a platform admin"):
        tracking_change_decide(actor=approver, change_id=change.pk, approve=True)


def test_approving_queues_the_job_after_commit(
    requester, platform_admin, redis_queue, django_capture_on_commit_callbacks
):
    change = tracking_change_request(actor=requester, mailbox_id=managed(owners=[requester]).pk)
    with django_capture_on_commit_callbacks(execute=True):
        tracking_change_decide(actor=platform_admin, change_id=change.pk, approve=True, reason="Agreed")
        assert redis_queue.count == 0  # nothing queued before the decision commits
    [job] = redis_queue.jobs
    assert job.func is tracking_change_apply_job
    assert job.args == (change.pk,)
    change.refresh_from_db()
    assert (change.status, change.decided_by, change.decision_reason) == (
        TrackingChangeStatus.APPROVED,
        platform_admin,
        "Agreed",
    )
    event = AuditEvent.objects.get(action="tracking_change.approved", object_id=str(change.pk))
    assert (event.before["status"], event.after["status"]) == ("pending", "approved")


def test_rejecting_needs_a_reason_and_queues_nothing(requester, platform_admin, redis_queue):
    change = tracking_change_request(actor=requester, mailbox_id=managed(owners=[requester]).pk)
    with pytest.raises(TrackingChangeError, match="Enter why you are rejecting the change") as refused:
        tracking_change_decide(actor=platform_admin, change_id=change.pk, approve=False, reason="   ")
    assert refused.value.field == "reason"
    tracking_change_decide(actor=platform_admin, change_id=change.pk, approve=False, reason="The team needs it all")
    change.refresh_from_db()
    assert change.status == TrackingChangeStatus.REJECTED
    assert change.decision_reason == "The team needs it all"
    assert redis_queue.count == 0
    assert AuditEvent.objects.filter(action="tracking_change.rejected", object_id=str(change.pk)).exists()


def test_a_decided_change_cannot_be_decided_again(requester, platform_admin, second_admin):
    change = tracking_change_request(actor=requester, mailbox_id=managed(owners=[requester]).pk)
    tracking_change_decide(actor=platform_admin, change_id=change.pk, approve=False, reason="No")
    with pytest.raises(InvalidStateError, match="is rejected, so it cannot be approved"):
        tracking_change_decide(actor=second_admin, change_id=change.pk, approve=True)


# --- applying and retrying (no Microsoft 365 needed for the refusals) ------------------------------


def test_the_job_leaves_a_change_that_is_not_approved_alone(requester):
    change = tracking_change_request(actor=requester, mailbox_id=managed(owners=[requester]).pk)
    tracking_change_apply(change_id=change.pk)
    change.refresh_from_db()
    assert (change.status, change.attempts) == (TrackingChangeStatus.PENDING, 0)


def test_a_change_fails_plainly_when_microsoft_365_is_switched_off(requester, platform_admin, settings):
    from portal.m365.config import M365Config

    settings.M365 = M365Config(enabled=False)
    change = tracking_change_request(actor=requester, mailbox_id=managed(owners=[requester]).pk)
    tracking_change_decide(actor=platform_admin, change_id=change.pk, approve=True)
    tracking_change_apply(change_id=change.pk)
    change.refresh_from_db()
    assert change.status == TrackingChangeStatus.FAILED
    assert "integration is switched off" in change.error
    assert AuditEvent.objects.filter(action="tracking_change.failed", object_id=str(change.pk)).exists()


def test_only_failed_changes_are_retried_and_only_by_a_platform_admin(requester, platform_admin):
    change = tracking_change_request(actor=requester, mailbox_id=managed(owners=[requester]).pk)
    with pytest.raises(InvalidStateError, match="nothing to retry"):
        tracking_change_retry(actor=platform_admin, change_id=change.pk)
    TrackingChange.objects.filter(pk=change.pk).update(status=TrackingChangeStatus.FAILED, error="Boom")
    with pytest.raises(PermissionDeniedError, match="Only a platform admin can retry"):
        tracking_change_retry(actor=requester, change_id=change.pk)
    retried = tracking_change_retry(actor=platform_admin, change_id=change.pk)
    assert (retried.status, retried.error) == (TrackingChangeStatus.APPROVED, "")
    assert AuditEvent.objects.filter(action="tracking_change.retried", object_id=str(change.pk)).exists()


def test_a_failed_change_is_not_retried_over_a_newer_open_one(requester, platform_admin):
    mailbox = managed(owners=[requester])
    old = tracking_change_request(actor=requester, mailbox_id=mailbox.pk)
    TrackingChange.objects.filter(pk=old.pk).update(status=TrackingChangeStatus.FAILED)
    newer = tracking_change_request(actor=requester, mailbox_id=mailbox.pk, to_rule=TrackingRule.NONE)
    with pytest.raises(InvalidStateError, match=f"change {newer.pk}"):
        tracking_change_retry(actor=platform_admin, change_id=old.pk)


def test_a_change_stuck_applying_after_its_worker_died_can_be_retried(requester, platform_admin):
    change = tracking_change_request(actor=requester, mailbox_id=managed(owners=[requester]).pk)
    TrackingChange.objects.filter(pk=change.pk).update(status=TrackingChangeStatus.APPLYING)
    with pytest.raises(InvalidStateError):
        tracking_change_retry(actor=platform_admin, change_id=change.pk)  # its worker may still be busy
    TrackingChange.objects.filter(pk=change.pk).update(updated_at=timezone.now() - dt.timedelta(hours=1))
    assert tracking_change_retry(actor=platform_admin, change_id=change.pk).status == TrackingChangeStatus.APPROVED
