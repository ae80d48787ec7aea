"""The policy's write paths: each change audited with before and after, bad values refused."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from portal.audit.models import AuditEvent
from portal.exceptions import InvalidStateError, PortalError
from portal.policy.models import BlackoutWindow, PolicySettings, TrackingRule
from portal.policy.services import (
    EDITABLE,
    blackout_window_add,
    blackout_window_remove,
    policy_get,
    policy_update,
)

pytestmark = pytest.mark.django_db


def only_event(action: str) -> AuditEvent:
    events = list(AuditEvent.objects.filter(action=action))
    assert len(events) == 1, [event.action for event in events]
    return events[0]


# --- the settings row ----------------------------------------------------------------------------


def test_new_settings_have_their_defaults():
    policy = policy_get()
    assert policy.default_tracking_rule_shared == TrackingRule.EMAIL_ENABLED_RECORDS
    assert policy.default_tracking_rule_user == TrackingRule.LEADS_CONTACTS_ACCOUNTS
    assert policy.flag_user_over_tracking is False
    assert policy.daily_volume_threshold == 400
    assert policy.attachment_size_threshold_kb == 4096
    assert policy.attachment_near_limit_percent == 90
    assert policy.require_email_approval is True
    assert policy.application_users == []
    assert policy.weekly_digest_enabled is True


def test_every_editable_setting_is_a_field_of_the_policy():
    fields = {field.name for field in PolicySettings._meta.get_fields()}
    assert set(EDITABLE) <= fields
    assert {"wave_test_enable_cap", "wave_cap_window_hours", "migrate_act_for_users"} <= set(EDITABLE)
    assert fields - set(EDITABLE) == {"id", "updated_at"}


def test_an_update_records_only_what_changed_before_and_after(platform_admin):
    policy_update(
        actor=platform_admin,
        changes={"daily_volume_threshold": 500, "attachment_size_threshold_kb": 4096, "wave_test_enable_cap": 150},
        reason="Finance sends more email",
    )

    event = only_event("policy.updated")
    assert event.before == {"daily_volume_threshold": 400, "wave_test_enable_cap": 200}
    assert event.after == {"daily_volume_threshold": 500, "wave_test_enable_cap": 150}
    assert event.reason == "Finance sends more email" and event.actor_id == platform_admin.pk
    assert PolicySettings.objects.get().daily_volume_threshold == 500


def test_an_update_that_changes_nothing_records_nothing(platform_admin):
    policy_update(actor=platform_admin, changes={"daily_volume_threshold": 400}, reason="Looked again")
    assert not AuditEvent.objects.filter(action="policy.updated").exists()


def test_domains_are_lower_cased_and_duplicates_removed(platform_admin):
    policy = policy_update(
        actor=platform_admin, changes={"allowed_domains": [" Agency.GOV.uk ", "example.gov.uk", "agency.gov.uk."]}
    )
    assert policy.allowed_domains == ["agency.gov.uk", "example.gov.uk"]


@pytest.mark.parametrize(
    ("domains", "message"),
    [
        ([], "Enter at least one allowed domain"),
        (["agency_gov.uk"], "agency_gov.uk is not a domain name"),
        (["localhost"], "localhost is not a domain name"),
        (["-agency.gov.uk"], "-agency.gov.uk is not a domain name"),
        (["agency.gov.1"], "agency.gov.1 is not a domain name"),
        (["name@agency.gov.uk"], "name@agency.gov.uk is not a domain name"),
    ],
)
def test_things_that_are_not_domains_are_refused(platform_admin, domains, message):
    with pytest.raises(PortalError, match=message) as refused:
        policy_update(actor=platform_admin, changes={"allowed_domains": domains})
    assert refused.value.field == "allowed_domains"
    assert policy_get().allowed_domains == ["example.gov.uk"]


def test_values_outside_the_models_rules_are_a_domain_error(platform_admin):
    with pytest.raises(PortalError) as refused:
        policy_update(actor=platform_admin, changes={"attachment_near_limit_percent": 101})
    assert refused.value.field == "attachment_near_limit_percent"
    assert not AuditEvent.objects.filter(action="policy.updated").exists()


def test_application_users_must_be_configured_registrations(platform_admin, registrations):
    policy = policy_update(actor=platform_admin, changes={"application_users": ["3", "1"]})
    assert policy.application_users == ["1", "3"]  # in configuration order

    with pytest.raises(PortalError, match="Application user 7 is not configured"):
        policy_update(actor=platform_admin, changes={"application_users": ["7"]})


def test_unknown_settings_are_a_programming_error(platform_admin):
    with pytest.raises(ValueError, match="not policy settings: updated_at"):
        policy_update(actor=platform_admin, changes={"updated_at": None})


# --- blackout windows -----------------------------------------------------------------------------


def test_adding_and_removing_a_blackout_is_audited(platform_admin):
    starts = timezone.now() + dt.timedelta(days=1)
    window = blackout_window_add(
        actor=platform_admin, starts_at=starts, ends_at=starts + dt.timedelta(hours=6), reason="Month-end close"
    )

    added = only_event("policy.blackout_added")
    assert added.before is None and added.reason == "Month-end close"
    assert added.after == {
        "starts_at": starts.astimezone(dt.UTC).isoformat(),
        "ends_at": (starts + dt.timedelta(hours=6)).astimezone(dt.UTC).isoformat(),
        "reason": "Month-end close",
    }

    blackout_window_remove(actor=platform_admin, window_id=window.pk, reason="Close moved")

    removed = only_event("policy.blackout_removed")
    assert removed.before == added.after and removed.after is None and removed.reason == "Close moved"
    assert not BlackoutWindow.objects.exists()
    with pytest.raises(InvalidStateError, match="already been removed"):
        blackout_window_remove(actor=platform_admin, window_id=window.pk)


@pytest.mark.parametrize(
    ("start_hours", "end_hours", "message"),
    [
        (5, 2, "The end must be after the start"),
        (5, 5, "The end must be after the start"),
        (-10, -2, "The blackout must end in the future"),
    ],
)
def test_blackouts_that_cannot_apply_are_refused(platform_admin, start_hours, end_hours, message):
    now = timezone.now()
    with pytest.raises(PortalError, match=message) as refused:
        blackout_window_add(
            actor=platform_admin,
            starts_at=now + dt.timedelta(hours=start_hours),
            ends_at=now + dt.timedelta(hours=end_hours),
            reason="Freeze",
        )
    assert refused.value.field == "ends_at"
    assert not BlackoutWindow.objects.exists() and not AuditEvent.objects.exists()


def test_a_blackout_already_under_way_may_be_added(platform_admin):
    now = timezone.now()
    window = blackout_window_add(
        actor=platform_admin, starts_at=now - dt.timedelta(hours=1), ends_at=now + dt.timedelta(hours=1), reason="Now"
    )
    assert window.pk
