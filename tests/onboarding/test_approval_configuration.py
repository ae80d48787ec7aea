"""Platform admins configure the approval route: add, change, reorder, deactivate — all audited."""

from __future__ import annotations

import pytest

from onboarding.models import ApprovalStage, ApproverKind
from onboarding.services.approvals import (
    approval_stage_activate,
    approval_stage_create,
    approval_stage_deactivate,
    approval_stage_move,
    approval_stage_update,
)
from portal.accounts.roles import Role
from portal.audit.models import AuditEvent
from portal.exceptions import InvalidStateError, PermissionDeniedError, PortalError
from tests.factories import UserFactory
from tests.onboarding.approval_helpers import configure_route, owner_stage, role_stage

pytestmark = pytest.mark.django_db


@pytest.fixture
def route(db):
    return configure_route(owner_stage(), role_stage(Role.PLATFORM_ADMIN))


def names() -> list[tuple[int, str, bool]]:
    return list(ApprovalStage.objects.order_by("order").values_list("order", "name", "is_active"))


def settings_for(**overrides):
    return {
        "name": "Information governance",
        "approver_kind": ApproverKind.NAMED,
        "role": "",
        "team_scoped": False,
        "approvers": [],
        "fallback_approvers": [],
        "sla_hours": 72,
        "reason_required": True,
        **overrides,
    }


def test_a_new_stage_goes_at_the_end_and_is_audited(platform_admin, approver, route):
    stage = approval_stage_create(actor=platform_admin, **settings_for(approvers=[approver, approver]))

    assert names() == [(1, "Business owner", True), (2, "Platform admin", True), (3, "Information governance", True)]
    assert list(stage.approvers.all()) == [approver]
    assert (stage.sla_hours, stage.reason_required) == (72, True)
    event = AuditEvent.objects.get(action="approval_stage.created")
    assert event.actor == platform_admin and '"approvers":["owen@example.gov.uk"]' in event.after_json


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"name": "  "}, "name", "Enter the stage name"),
        ({"name": "x" * 101}, "name", "100 characters or fewer"),
        ({"approver_kind": "anyone"}, "approver_kind", "Select who decides this stage"),
        ({"approvers": []}, "approvers", "at least one approver"),
        ({"approver_kind": ApproverKind.ROLE, "role": ""}, "role", "Select a role"),
        ({"approver_kind": ApproverKind.ROLE, "role": Role.AUDITOR}, "role", "Select a role"),
        ({"sla_hours": 0}, "sla_hours", "between 1 and 2160 hours"),
        ({"sla_hours": 2161}, "sla_hours", "between 1 and 2160 hours"),
    ],
)
def test_settings_that_cannot_work_are_refused(platform_admin, approver, route, overrides, field, message):
    values = settings_for(approvers=[approver])
    values.update(overrides)
    with pytest.raises(PortalError, match=message) as refused:
        approval_stage_create(actor=platform_admin, **values)
    assert refused.value.field == field
    assert ApprovalStage.objects.count() == 2


@pytest.mark.parametrize("field", ["approvers", "fallback_approvers"])
def test_named_people_must_be_able_to_decide(platform_admin, approver, requester, route, field):
    values = settings_for(approvers=[approver])
    values[field] = [requester]
    with pytest.raises(PortalError, match=r"riya@example\.gov\.uk cannot decide approvals") as refused:
        approval_stage_create(actor=platform_admin, **values)
    assert refused.value.field == field


def test_settings_that_do_not_apply_to_the_kind_are_dropped(platform_admin, approver, route):
    stage = approval_stage_create(
        actor=platform_admin,
        **settings_for(
            approver_kind=ApproverKind.TEAM_OWNER, role=Role.APPROVER, team_scoped=True, approvers=[approver]
        ),
    )
    assert (stage.role, stage.team_scoped, list(stage.approvers.all())) == ("", False, [])


def test_changing_a_stage_records_before_and_after(platform_admin, approver, route):
    owner_stage_config = route[0]
    approval_stage_update(
        actor=platform_admin,
        stage_id=owner_stage_config.pk,
        **settings_for(
            name="Business owner or team approver",
            approver_kind=ApproverKind.ROLE,
            role=Role.APPROVER,
            team_scoped=True,
            fallback_approvers=[approver],
            sla_hours=24,
            reason_required=False,
        ),
    )
    owner_stage_config.refresh_from_db()
    assert (owner_stage_config.approver_kind, owner_stage_config.role, owner_stage_config.team_scoped) == (
        "role", "approver", True,
    )  # fmt: skip
    event = AuditEvent.objects.get(action="approval_stage.updated")
    assert '"approver_kind":"team_owner"' in event.before_json and '"approver_kind":"role"' in event.after_json
    assert '"fallback_approvers":[]' in event.before_json
    assert '"fallback_approvers":["owen@example.gov.uk"]' in event.after_json


def test_saving_without_changes_records_nothing(platform_admin, route):
    stage = route[1]
    approval_stage_update(
        actor=platform_admin,
        stage_id=stage.pk,
        **settings_for(
            name=stage.name,
            approver_kind=stage.approver_kind,
            role=stage.role,
            sla_hours=stage.sla_hours,
            reason_required=stage.reason_required,
        ),
    )
    assert not AuditEvent.objects.filter(action="approval_stage.updated").exists()


def test_stages_move_up_and_down(platform_admin, approver, route):
    third = approval_stage_create(actor=platform_admin, **settings_for(approvers=[approver]))

    approval_stage_move(actor=platform_admin, stage_id=third.pk, direction="up")
    assert [name for _, name, _ in names()] == ["Business owner", "Information governance", "Platform admin"]
    approval_stage_move(actor=platform_admin, stage_id=route[0].pk, direction="down")
    assert [name for _, name, _ in names()] == ["Information governance", "Business owner", "Platform admin"]
    assert [order for order, _, _ in names()] == [1, 2, 3]
    moved = AuditEvent.objects.filter(action="approval_stage.moved").order_by("seq").last()
    assert f'{{"order":1,"stage":{route[0].pk}}}' in moved.before_json

    with pytest.raises(InvalidStateError, match="already first"):
        approval_stage_move(actor=platform_admin, stage_id=third.pk, direction="up")
    with pytest.raises(InvalidStateError, match="already last"):
        approval_stage_move(actor=platform_admin, stage_id=route[1].pk, direction="down")


def test_at_least_one_stage_stays_active(platform_admin, route):
    approval_stage_deactivate(actor=platform_admin, stage_id=route[0].pk)
    with pytest.raises(InvalidStateError, match="At least one stage must stay active"):
        approval_stage_deactivate(actor=platform_admin, stage_id=route[1].pk)
    with pytest.raises(InvalidStateError, match="already inactive"):
        approval_stage_deactivate(actor=platform_admin, stage_id=route[0].pk)

    approval_stage_activate(actor=platform_admin, stage_id=route[0].pk)
    approval_stage_deactivate(actor=platform_admin, stage_id=route[1].pk)
    assert names() == [(1, "Business owner", True), (2, "Platform admin", False)]
    actions = list(AuditEvent.objects.order_by("seq").values_list("action", flat=True))
    assert actions == [
        "approval_stage.deactivated",
        "approval_stage.activated",
        "approval_stage.deactivated",
    ]


@pytest.mark.parametrize("persona", ["approver", "requester", "auditor", "outsider"])
def test_only_platform_admins_configure_the_route(persona, request, route):
    person = request.getfixturevalue(persona)
    approver = UserFactory(roles=[Role.APPROVER])
    with pytest.raises(PermissionDeniedError):
        approval_stage_create(actor=person, **settings_for(approvers=[approver]))
    with pytest.raises(PermissionDeniedError):
        approval_stage_update(actor=person, stage_id=route[0].pk, **settings_for(approvers=[approver]))
    with pytest.raises(PermissionDeniedError):
        approval_stage_move(actor=person, stage_id=route[0].pk, direction="down")
    with pytest.raises(PermissionDeniedError):
        approval_stage_deactivate(actor=person, stage_id=route[0].pk)
    assert not AuditEvent.objects.exists()
