"""The requester's services: drafts, answers, submission and withdrawal, and every transition they refuse."""

from __future__ import annotations

import django_rq
import pytest
import redis
from rq import Queue

from onboarding.models import (
    MailboxKind,
    MailboxRequest,
    Notification,
    NotificationEvent,
    NotificationStatus,
    RequestStatus,
    StageStatus,
)
from onboarding.services.mailbox_requests import (
    RequestIncompleteError,
    mailbox_request_create_draft,
    mailbox_request_missing_answers,
    mailbox_request_submit,
    mailbox_request_update,
    mailbox_request_withdraw,
)
from portal.audit.models import AuditEvent
from portal.exceptions import InvalidStateError, PermissionDeniedError, PortalError
from portal.policy.models import TrackingRule
from portal.policy.services import policy_update
from tests.onboarding.factories import MailboxRequestFactory, TeamFactory
from tests.onboarding.mailbox_request_support import (
    OPEN_OR_CLOSED,
    another_requester,
    complete_request,
    person,
    record_approval_route,
)
from tests.servers import free_port

pytestmark = pytest.mark.django_db


@pytest.fixture
def recorded_route(monkeypatch):
    return record_approval_route(monkeypatch)


def events_for(request: MailboxRequest, action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(object_type="mailbox_request", object_id=str(request.pk), action=action))


# --- drafts ------------------------------------------------------------------------------------


def test_a_draft_gets_a_reference_from_its_id_and_is_audited(requester):
    draft = mailbox_request_create_draft(actor=requester)
    assert draft.reference == f"MBX-{draft.pk:06d}"
    assert draft.status == RequestStatus.DRAFT
    assert draft.requester == requester
    [event] = events_for(draft, "mailbox_request.created")
    assert event.actor_id == requester.pk
    assert event.after == {"reference": draft.reference, "status": "draft"}


def test_references_are_unique(requester):
    references = {mailbox_request_create_draft(actor=requester).reference for _ in range(3)}
    assert len(references) == 3


@pytest.mark.parametrize("persona", ["approver", "platform_admin", "auditor", "outsider"])
def test_only_requesters_start_drafts(persona, request):
    with pytest.raises(PermissionDeniedError):
        mailbox_request_create_draft(actor=request.getfixturevalue(persona))
    assert not MailboxRequest.objects.exists()


# --- answers -----------------------------------------------------------------------------------


def test_answers_are_saved_and_audited_with_only_what_changed(requester):
    draft = mailbox_request_create_draft(actor=requester)
    mailbox_request_update(actor=requester, request_id=draft.pk, changes={"kind": "queue", "display_name": "Finance"})
    mailbox_request_update(
        actor=requester, request_id=draft.pk, changes={"kind": "queue", "display_name": "Finance enquiries"}
    )
    draft.refresh_from_db()
    assert (draft.kind, draft.display_name) == ("queue", "Finance enquiries")
    first, second = sorted(events_for(draft, "mailbox_request.updated"), key=lambda event: event.seq)
    assert first.before == {"kind": "", "display_name": ""}
    assert second.before == {"display_name": "Finance"}
    assert second.after == {"display_name": "Finance enquiries"}


def test_saving_the_same_answers_again_changes_nothing(requester):
    draft = mailbox_request_create_draft(actor=requester)
    mailbox_request_update(actor=requester, request_id=draft.pk, changes={"display_name": "Payroll"})
    mailbox_request_update(actor=requester, request_id=draft.pk, changes={"display_name": "Payroll"})
    assert len(events_for(draft, "mailbox_request.updated")) == 1


def test_the_address_is_lower_cased(requester):
    draft = mailbox_request_create_draft(actor=requester)
    mailbox_request_update(
        actor=requester, request_id=draft.pk, changes={"local_part": " Finance.Enquiries ", "domain": "EXAMPLE.gov.uk"}
    )
    draft.refresh_from_db()
    assert draft.address == "finance.enquiries@example.gov.uk"


@pytest.mark.parametrize(
    ("local_part", "message"),
    [
        ("fin ance", "can only contain"),
        ("finance..enquiries", "two full stops in a row"),
        (".finance", "cannot start or end with a full stop"),
        ("finance.", "cannot start or end with a full stop"),
        ("a" * 65, "64 characters or fewer"),
        ("café", "can only contain"),
        ("finance<script>", "can only contain"),
    ],
)
def test_exchange_alias_rules_are_enforced(requester, local_part, message):
    draft = mailbox_request_create_draft(actor=requester)
    with pytest.raises(PortalError, match=message) as caught:
        mailbox_request_update(
            actor=requester, request_id=draft.pk, changes={"local_part": local_part, "domain": "example.gov.uk"}
        )
    assert caught.value.field == "local_part"


def test_every_allowed_alias_character_is_accepted(requester):
    draft = mailbox_request_create_draft(actor=requester)
    local_part = "a!#$%&'*+-/=?^_`{|}~.b" + "c" * 42
    assert len(local_part) == 64
    mailbox_request_update(
        actor=requester, request_id=draft.pk, changes={"local_part": local_part, "domain": "example.gov.uk"}
    )
    draft.refresh_from_db()
    assert draft.local_part == local_part


def test_the_domain_must_be_allowed_by_policy(requester, platform_admin):
    draft = mailbox_request_create_draft(actor=requester)
    with pytest.raises(PortalError, match="Select a domain from the list") as caught:
        mailbox_request_update(
            actor=requester, request_id=draft.pk, changes={"local_part": "finance", "domain": "gmail.com"}
        )
    assert caught.value.field == "domain"
    policy_update(actor=platform_admin, changes={"allowed_domains": ["example.gov.uk", "agency.gov.uk"]})
    mailbox_request_update(
        actor=requester, request_id=draft.pk, changes={"local_part": "finance", "domain": "agency.gov.uk"}
    )


@pytest.mark.parametrize("status", OPEN_OR_CLOSED["open"])
def test_an_address_held_by_an_open_request_is_refused(requester, status):
    holder = complete_request(another_requester(), local_part="finance", status=status)
    draft = mailbox_request_create_draft(actor=requester)
    with pytest.raises(PortalError, match=f"That address is already used by request {holder.reference}"):
        mailbox_request_update(
            actor=requester, request_id=draft.pk, changes={"local_part": "Finance", "domain": "example.gov.uk"}
        )


@pytest.mark.parametrize("status", OPEN_OR_CLOSED["closed"])
def test_an_address_of_a_withdrawn_or_rejected_request_is_free_again(requester, status):
    complete_request(another_requester(), local_part="finance", status=status)
    draft = mailbox_request_create_draft(actor=requester)
    mailbox_request_update(
        actor=requester, request_id=draft.pk, changes={"local_part": "finance", "domain": "example.gov.uk"}
    )


def test_a_request_does_not_clash_with_its_own_address(requester):
    draft = complete_request(requester, local_part="finance")
    mailbox_request_update(
        actor=requester, request_id=draft.pk, changes={"local_part": "finance", "domain": "example.gov.uk"}
    )


def test_the_owning_team_must_be_one_of_the_requesters(requester):
    mine = TeamFactory(name="Finance", members=[requester])
    owned = TeamFactory(name="Payroll", business_owners=[requester])
    theirs = TeamFactory(name="Legal")
    draft = mailbox_request_create_draft(actor=requester)
    for team in (mine, owned):
        mailbox_request_update(actor=requester, request_id=draft.pk, changes={"team": team})
    with pytest.raises(PortalError, match="Select one of your teams"):
        mailbox_request_update(actor=requester, request_id=draft.pk, changes={"team": theirs})


def test_owners_must_be_active_and_different_people(requester):
    draft = mailbox_request_create_draft(actor=requester)
    owner, inactive = person("olu"), person("ivy", is_active=False)
    with pytest.raises(PortalError, match="different person") as caught:
        mailbox_request_update(actor=requester, request_id=draft.pk, changes={"owner": owner, "backup_owner": owner})
    assert caught.value.field == "backup_owner"
    with pytest.raises(PortalError, match="not active") as caught:
        mailbox_request_update(actor=requester, request_id=draft.pk, changes={"owner": inactive})
    assert caught.value.field == "owner"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"justification": "x" * 10_000}, "justification"),
        ({"display_name": "y" * 65}, "display_name"),
        ({"display_name": "Finance\x00"}, "display_name"),
        ({"display_name": "Finance\x1b[31m"}, "display_name"),
        ({"display_name": "abc\u202edef"}, "display_name"),
        ({"expected_daily_volume": -1}, "expected_daily_volume"),
        ({"expected_daily_volume": 10**9}, "expected_daily_volume"),
        ({"retention_months": 0}, "retention_months"),
        ({"typical_attachment_kb": "12"}, "typical_attachment_kb"),
        ({"kind": "mailing_list"}, "kind"),
        ({"tracking_rule": 9}, "tracking_rule"),
    ],
)
def test_answers_out_of_bounds_are_refused(requester, changes, field):
    draft = mailbox_request_create_draft(actor=requester)
    with pytest.raises(PortalError) as caught:
        mailbox_request_update(actor=requester, request_id=draft.pk, changes=changes)
    assert caught.value.field == field


def test_text_in_any_script_is_kept(requester):
    draft = mailbox_request_create_draft(actor=requester)
    name = "Ymholiadau Cyllid \u2013 ffôn 👩\u200d💻"
    mailbox_request_update(actor=requester, request_id=draft.pk, changes={"display_name": name})
    draft.refresh_from_db()
    assert draft.display_name == name


def test_unknown_answers_are_a_programming_error(requester):
    draft = mailbox_request_create_draft(actor=requester)
    with pytest.raises(ValueError, match="status"):
        mailbox_request_update(actor=requester, request_id=draft.pk, changes={"status": "active"})


def test_a_shared_mailbox_drops_the_queue_answers(requester):
    draft = complete_request(requester, tracking_rule=TrackingRule.ALL, tracking_reason="Every message matters")
    mailbox_request_update(actor=requester, request_id=draft.pk, changes={"kind": MailboxKind.SHARED})
    draft.refresh_from_db()
    assert (draft.queue_visibility, draft.tracking_rule, draft.tracking_reason) == (None, None, "")


def test_a_narrower_tracking_rule_drops_the_over_tracking_reason(requester):
    draft = complete_request(requester, tracking_rule=TrackingRule.ALL, tracking_reason="Every message matters")
    mailbox_request_update(actor=requester, request_id=draft.pk, changes={"tracking_rule": TrackingRule.RESPONSES})
    draft.refresh_from_db()
    assert draft.tracking_reason == ""


def test_members_are_replaced_together_and_audited(requester):
    draft = mailbox_request_create_draft(actor=requester)
    first = [
        {"email": "Ann@example.gov.uk", "full_access": True, "automapping": True},
        {"email": "bob@example.gov.uk", "send_as": True},
    ]
    mailbox_request_update(actor=requester, request_id=draft.pk, changes={}, members=first)
    assert list(draft.members.values_list("email", "full_access", "automapping", "send_as")) == [
        ("ann@example.gov.uk", True, True, False),
        ("bob@example.gov.uk", False, False, True),
    ]
    with pytest.raises(PortalError, match="already a member"):
        mailbox_request_update(
            actor=requester,
            request_id=draft.pk,
            changes={},
            members=[{"email": "cat@example.gov.uk", "full_access": True}, {"email": "CAT@example.gov.uk"}],
        )
    assert draft.members.count() == 2  # nothing half-replaced
    mailbox_request_update(
        actor=requester, request_id=draft.pk, changes={}, members=[{"email": "cat@example.gov.uk", "send_as": True}]
    )
    assert list(draft.members.values_list("email", flat=True)) == ["cat@example.gov.uk"]
    last = max(events_for(draft, "mailbox_request.updated"), key=lambda event: event.seq)
    assert [member["email"] for member in last.before["members"]] == ["ann@example.gov.uk", "bob@example.gov.uk"]
    assert [member["email"] for member in last.after["members"]] == ["cat@example.gov.uk"]


@pytest.mark.parametrize(
    ("member", "message"),
    [
        ({"email": "not-an-address", "full_access": True}, "correct format"),
        ({"email": "ann@example.gov.uk"}, "at least one permission"),
        ({"email": "ann@example.gov.uk", "automapping": True}, "at least one permission"),
        ({"email": "a" * 250 + "@example.gov.uk", "full_access": True}, "254 characters or fewer"),
    ],
)
def test_bad_members_are_refused(requester, member, message):
    draft = mailbox_request_create_draft(actor=requester)
    with pytest.raises(PortalError, match=message):
        mailbox_request_update(actor=requester, request_id=draft.pk, changes={}, members=[member])


def test_auto_mapping_needs_full_access(requester):
    draft = mailbox_request_create_draft(actor=requester)
    mailbox_request_update(
        actor=requester,
        request_id=draft.pk,
        changes={},
        members=[{"email": "ann@example.gov.uk", "send_as": True, "automapping": True}],
    )
    assert draft.members.get().automapping is False


def test_only_the_requester_changes_answers(requester):
    draft = mailbox_request_create_draft(actor=requester)
    with pytest.raises(PermissionDeniedError):
        mailbox_request_update(actor=another_requester(), request_id=draft.pk, changes={"display_name": "Mine now"})


@pytest.mark.parametrize(
    "status",
    [
        RequestStatus.SUBMITTED,
        RequestStatus.PROVISIONING,
        RequestStatus.ACTIVE,
        RequestStatus.WITHDRAWN,
        RequestStatus.REJECTED,
        RequestStatus.NEEDS_ATTENTION,
    ],
)
def test_answers_are_fixed_once_submitted(requester, status):
    submitted = complete_request(requester, status=status)
    with pytest.raises(InvalidStateError):
        mailbox_request_update(actor=requester, request_id=submitted.pk, changes={"display_name": "Renamed"})


def test_a_returned_request_can_be_changed(requester):
    returned = complete_request(requester, status=RequestStatus.RETURNED)
    mailbox_request_update(actor=requester, request_id=returned.pk, changes={"display_name": "Renamed"})
    returned.refresh_from_db()
    assert returned.display_name == "Renamed"


# --- submission --------------------------------------------------------------------------------


def test_submission_starts_the_route_inside_the_transaction_and_tells_the_requester(requester, recorded_route):
    draft = complete_request(requester)
    submitted = mailbox_request_submit(actor=requester, request_id=draft.pk)
    assert submitted.status == RequestStatus.SUBMITTED
    assert submitted.submitted_at is not None
    [call] = recorded_route.starts
    assert (call.request_id, call.status, call.in_transaction, call.actor_id) == (
        draft.pk,
        RequestStatus.SUBMITTED,
        True,
        requester.pk,
    )
    [notification] = Notification.objects.filter(request=draft)
    assert notification.event == NotificationEvent.SUBMITTED
    assert notification.recipients == [requester.email]
    [event] = events_for(draft, "mailbox_request.submitted")
    assert event.before == {"status": "draft"}
    assert event.after["status"] == "submitted"
    assert event.after["facts_hash"] == submitted.facts_hash()


def test_a_returned_request_is_resubmitted(requester, recorded_route):
    returned = complete_request(requester, status=RequestStatus.RETURNED)
    mailbox_request_submit(actor=requester, request_id=returned.pk)
    returned.refresh_from_db()
    assert returned.status == RequestStatus.SUBMITTED
    assert events_for(returned, "mailbox_request.resubmitted")
    assert len(recorded_route.starts) == 1


def test_an_incomplete_request_lists_every_missing_answer(requester, recorded_route):
    draft = mailbox_request_create_draft(actor=requester)
    mailbox_request_update(actor=requester, request_id=draft.pk, changes={"kind": "queue"})
    with pytest.raises(RequestIncompleteError) as caught:
        mailbox_request_submit(actor=requester, request_id=draft.pk)
    fields = [field for field, _ in caught.value.problems]
    assert fields == [
        "display_name",
        "local_part",
        "team",
        "owner",
        "backup_owner",
        "queue_visibility",
        "tracking_rule",
        "expected_daily_volume",
        "typical_attachment_kb",
        "retention_months",
        "data_classification",
        "justification",
    ]
    draft.refresh_from_db()
    assert draft.status == RequestStatus.DRAFT
    assert recorded_route.starts == []


def test_shared_mailboxes_need_no_queue_answers():
    shared = MailboxRequestFactory.build(kind=MailboxKind.SHARED, queue_visibility=None, tracking_rule=None)
    shared.owner_id = shared.backup_owner_id = shared.team_id = 1
    assert mailbox_request_missing_answers(shared) == []


def test_tracking_everything_needs_a_reason(requester, recorded_route):
    draft = complete_request(requester, tracking_rule=TrackingRule.ALL, tracking_reason="")
    with pytest.raises(RequestIncompleteError) as caught:
        mailbox_request_submit(actor=requester, request_id=draft.pk)
    assert caught.value.problems == [("tracking_reason", "Enter why the queue needs to track all email messages")]


def test_the_address_is_checked_again_at_submission(requester, recorded_route):
    draft = complete_request(requester, local_part="finance")
    # Someone else's request got there first (for example, while this one was returned).
    complete_request(another_requester(), local_part="finance", status=RequestStatus.SUBMITTED)
    with pytest.raises(PortalError, match="That address is already used by request") as caught:
        mailbox_request_submit(actor=requester, request_id=draft.pk)
    assert caught.value.field == "local_part"
    draft.refresh_from_db()
    assert draft.status == RequestStatus.DRAFT


def test_an_owner_who_left_since_is_caught_at_submission(requester, recorded_route):
    draft = complete_request(requester)
    draft.owner.is_active = False
    draft.owner.save(update_fields=["is_active"])
    with pytest.raises(PortalError, match="not active") as caught:
        mailbox_request_submit(actor=requester, request_id=draft.pk)
    assert caught.value.field == "owner"


def test_the_same_person_cannot_own_and_back_up(requester, recorded_route):
    both = person("olu")
    draft = complete_request(requester, owner=both, backup_owner=both)
    with pytest.raises(PortalError, match="different person"):
        mailbox_request_submit(actor=requester, request_id=draft.pk)


def test_a_domain_withdrawn_from_policy_is_caught_at_submission(requester, recorded_route):
    draft = complete_request(requester, domain="old.gov.uk")
    with pytest.raises(PortalError, match="no longer allowed"):
        mailbox_request_submit(actor=requester, request_id=draft.pk)


def test_only_the_requester_submits(requester, recorded_route):
    draft = complete_request(requester)
    with pytest.raises(PermissionDeniedError):
        mailbox_request_submit(actor=another_requester(), request_id=draft.pk)
    assert recorded_route.starts == []


@pytest.mark.parametrize(
    "status",
    [
        RequestStatus.SUBMITTED,
        RequestStatus.REJECTED,
        RequestStatus.WITHDRAWN,
        RequestStatus.PROVISIONING,
        RequestStatus.ACTIVE,
        RequestStatus.NEEDS_ATTENTION,
    ],
)
def test_only_drafts_and_returned_requests_are_submitted(requester, recorded_route, status):
    request = complete_request(requester, status=status)
    with pytest.raises(InvalidStateError):
        mailbox_request_submit(actor=requester, request_id=request.pk)
    assert recorded_route.starts == []


def test_a_failing_route_leaves_the_draft_as_it_was(requester, monkeypatch):
    from onboarding.services import approvals

    def broken(*, request, actor):
        raise RuntimeError("route unavailable")

    monkeypatch.setattr(approvals, "approval_route_start", broken)
    draft = complete_request(requester)
    with pytest.raises(RuntimeError):
        mailbox_request_submit(actor=requester, request_id=draft.pk)
    draft.refresh_from_db()
    assert (draft.status, draft.submitted_at) == (RequestStatus.DRAFT, None)
    assert not events_for(draft, "mailbox_request.submitted")
    assert not Notification.objects.filter(request=draft).exists()


# --- withdrawal --------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [RequestStatus.SUBMITTED, RequestStatus.RETURNED])
def test_withdrawing_cancels_the_route_and_tells_the_requester(requester, recorded_route, status):
    request = complete_request(requester)
    mailbox_request_submit(actor=requester, request_id=request.pk)
    MailboxRequest.objects.filter(pk=request.pk).update(status=status)
    withdrawn = mailbox_request_withdraw(actor=requester, request_id=request.pk, reason="Merged with another team")
    assert withdrawn.status == RequestStatus.WITHDRAWN
    [call] = recorded_route.cancels
    assert (call.status, call.in_transaction) == (RequestStatus.WITHDRAWN, True)
    assert not request.stages.filter(status=StageStatus.WAITING).exists()
    [event] = events_for(request, "mailbox_request.withdrawn")
    assert (event.before, event.after, event.reason) == (
        {"status": status},
        {"status": "withdrawn"},
        "Merged with another team",
    )
    notification = Notification.objects.get(request=request, event=NotificationEvent.WITHDRAWN)
    assert requester.email in notification.recipients


def test_only_the_requester_is_told_here_the_route_tells_its_approvers(requester, recorded_route):
    request = complete_request(requester)
    mailbox_request_submit(actor=requester, request_id=request.pk)
    mailbox_request_withdraw(actor=requester, request_id=request.pk)
    notification = Notification.objects.get(request=request, event=NotificationEvent.WITHDRAWN)
    assert notification.recipients == [requester.email]


def test_withdrawing_a_draft_needs_no_route(requester, recorded_route):
    draft = mailbox_request_create_draft(actor=requester)
    mailbox_request_withdraw(actor=requester, request_id=draft.pk)
    draft.refresh_from_db()
    assert draft.status == RequestStatus.WITHDRAWN
    assert recorded_route.cancels == []


@pytest.mark.parametrize(
    "status",
    [
        RequestStatus.PROVISIONING,
        RequestStatus.ACTIVE,
        RequestStatus.NEEDS_ATTENTION,
        RequestStatus.REJECTED,
        RequestStatus.WITHDRAWN,
    ],
)
def test_withdrawal_is_refused_once_provisioning_starts_or_it_ended(requester, recorded_route, status):
    request = complete_request(requester, status=status)
    with pytest.raises(InvalidStateError, match="cannot be withdrawn"):
        mailbox_request_withdraw(actor=requester, request_id=request.pk)
    request.refresh_from_db()
    assert request.status == status
    assert recorded_route.cancels == []


@pytest.mark.parametrize("persona", ["approver", "platform_admin", "outsider"])
def test_only_the_requester_withdraws(requester, recorded_route, persona, request):
    mine = complete_request(requester, status=RequestStatus.SUBMITTED)
    with pytest.raises(PermissionDeniedError):
        mailbox_request_withdraw(actor=request.getfixturevalue(persona), request_id=mine.pk)
    mine.refresh_from_db()
    assert mine.status == RequestStatus.SUBMITTED


def test_a_withdrawal_reason_is_bounded(requester):
    draft = mailbox_request_create_draft(actor=requester)
    with pytest.raises(PortalError, match="1,000 characters or fewer"):
        mailbox_request_withdraw(actor=requester, request_id=draft.pk, reason="x" * 1001)
    with pytest.raises(PortalError, match="letters, numbers"):
        mailbox_request_withdraw(actor=requester, request_id=draft.pk, reason="bye\x07")


def test_a_queue_outage_leaves_the_submission_made_and_the_notification_marked_unsent(
    requester, recorded_route, monkeypatch, django_capture_on_commit_callbacks
):
    # Nothing listens on this port: the queue answers as Redis does when it is down.
    unreachable = Queue("default", connection=redis.Redis(host="127.0.0.1", port=free_port(), socket_timeout=1))
    monkeypatch.setattr(django_rq, "get_queue", lambda *args, **kwargs: unreachable)
    draft = complete_request(requester)
    with django_capture_on_commit_callbacks(execute=True):
        submitted = mailbox_request_submit(actor=requester, request_id=draft.pk)
    assert MailboxRequest.objects.get(pk=submitted.pk).status == RequestStatus.SUBMITTED
    [notification] = Notification.objects.filter(request=draft)
    assert notification.status == NotificationStatus.FAILED
    assert notification.error.startswith("Could not be queued: ConnectionError")
