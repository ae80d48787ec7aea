"""The policy pages, as platform admins use them and as everyone else is refused them."""

from __future__ import annotations

import datetime as dt

import pytest
from django.forms.models import model_to_dict
from django.urls import reverse
from django.utils import timezone

from portal.audit.models import AuditEvent
from portal.policy.models import BlackoutWindow, PolicySettings
from portal.policy.services import blackout_window_add, policy_get
from tests.accounts.test_navigation import nav_labels
from tests.policy.conftest import text

pytestmark = pytest.mark.django_db

SUMMARY = reverse("policy:summary")
SECTIONS = ("domains", "tracking", "waves", "thresholds", "application-users", "digest")

# For each section: a valid answer that changes something, and the audit event's before and after.
CHANGES = {
    "domains": (
        {
            "allowed_domains": "Agency.GOV.uk\r\nexample.gov.uk\r\nagency.gov.uk",
            "exchange_online_profile_name": "Microsoft Exchange Online",
            "exchange_online_profile_id": "{6F1C3A52-8D4B-4A0E-9A55-2B7DE3F0C001}",
            "require_email_approval": "no",
        },
        {"allowed_domains": ["example.gov.uk"], "exchange_online_profile_id": "", "require_email_approval": True},
        {
            "allowed_domains": ["agency.gov.uk", "example.gov.uk"],
            "exchange_online_profile_id": "6f1c3a52-8d4b-4a0e-9a55-2b7de3f0c001",
            "require_email_approval": False,
        },
    ),
    "tracking": (
        {
            "default_tracking_rule_queue": "1",
            "default_tracking_rule_shared": "3",
            "default_tracking_rule_user": "4",
            "flag_user_over_tracking": "yes",
        },
        {"default_tracking_rule_queue": 3, "default_tracking_rule_user": 2, "flag_user_over_tracking": False},
        {"default_tracking_rule_queue": 1, "default_tracking_rule_user": 4, "flag_user_over_tracking": True},
    ),
    "waves": (
        {
            "wave_test_enable_cap": "150",
            "wave_cap_window_hours": "5",
            "migrate_act_for_users": "no",
            "test_enable_poll_seconds": "60",
            "test_enable_timeout_minutes": "90",
        },
        {"wave_test_enable_cap": 200, "migrate_act_for_users": True, "test_enable_poll_seconds": 30},
        {"wave_test_enable_cap": 150, "migrate_act_for_users": False, "test_enable_poll_seconds": 60},
    ),
    "thresholds": (
        {
            "daily_volume_threshold": "1,000",
            "attachment_size_threshold_kb": "4096",
            "attachment_near_limit_percent": "80",
        },
        {"daily_volume_threshold": 400, "attachment_near_limit_percent": 90},
        {"daily_volume_threshold": 1000, "attachment_near_limit_percent": 80},
    ),
    "application-users": (
        {"application_users": ["1", "3"]},
        {"application_users": []},
        {"application_users": ["1", "3"]},
    ),
    "digest": (
        {"weekly_digest_enabled": "no"},
        {"weekly_digest_enabled": True},
        {"weekly_digest_enabled": False},
    ),
}


def section_url(section: str) -> str:
    return reverse("policy:section_change", args=[section])


def policy_values() -> dict:
    return model_to_dict(policy_get())


@pytest.fixture
def admin(platform_admin, client_for):
    return client_for(platform_admin)


# --- the summary ---------------------------------------------------------------------------------


def test_the_summary_shows_every_section_with_a_change_link(admin, registrations, stages):
    page = text(admin.get(SUMMARY))

    for heading in (
        "Settings held in Dataverse",
        "Domains and Exchange Online profile",
        "Tracking rules",
        "Approval stages and SLAs",
        "Migration waves and blackout windows",
        "Thresholds",
        "Application users",
        "Digest",
    ):
        assert f'<h2 class="govuk-summary-card__title">{heading}</h2>' in page
    for section in SECTIONS:
        assert f'href="{section_url(section)}"' in page
    # Stages are changed on the onboarding approval stages page, the one place that edits them.
    for stage in stages:
        change = reverse("onboarding:approval_stage_change", args=[stage.pk])
        assert f'href="{change}">Change<span class="govuk-visually-hidden"> {stage.name}</span></a>' in page
    assert f'href="{reverse("onboarding:approval_stages")}"' in page
    assert '1. Business owner</td> <td class="govuk-table__cell">48 hours</td>' in page
    assert f'href="{reverse("policy:blackout_add")}"' in page
    assert "example.gov.uk" in page and "Email messages from Dynamics 365 leads, contacts and accounts" in page
    assert "Client id 33333333-3333-4333-8333-333333333333" in page
    assert "All configured application users are used, including any added later." in page


def test_platform_admins_see_policy_in_the_navigation(admin):
    assert "Policy" in nav_labels(admin.get(reverse("home")).content.decode())


@pytest.mark.parametrize("persona", ["requester", "approver", "migration_lead", "auditor", "outsider"])
def test_nobody_else_sees_policy_in_the_navigation(persona, request, client_for):
    html = client_for(request.getfixturevalue(persona)).get(reverse("home")).content.decode()
    assert "Policy" not in nav_labels(html)


# --- changing each section -----------------------------------------------------------------------


@pytest.mark.parametrize("section", SECTIONS)
def test_each_section_change_is_audited_with_before_and_after(section, admin, platform_admin, registrations):
    answers, before, after = CHANGES[section]
    assert admin.get(section_url(section)).status_code == 200

    response = admin.post(section_url(section), {**answers, "reason": f"Changing {section}"}, follow=True)

    assert response.redirect_chain == [(SUMMARY, 302)]
    assert "govuk-notification-banner--success" in text(response)
    event = AuditEvent.objects.get(action="policy.updated")
    assert (event.before, event.after) == (before, after)
    assert event.reason == f"Changing {section}" and event.actor_id == platform_admin.pk
    policy = policy_get()
    assert {name: getattr(policy, name) for name in after} == after


def test_the_forms_show_the_current_settings(admin, registrations):
    PolicySettings.objects.create(
        pk=1, allowed_domains=["agency.gov.uk", "example.gov.uk"], application_users=["2"], daily_volume_threshold=750
    )

    assert "agency.gov.uk\nexample.gov.uk</textarea>" in admin.get(section_url("domains")).content.decode()
    assert 'value="750"' in text(admin.get(section_url("thresholds")))
    users = text(admin.get(section_url("application-users")))
    assert users.count('checked="checked"') == 1 and "Client id 22222222-2222-4222-8222-222222222222" in users


def test_choosing_every_application_user_means_all_of_them(admin, registrations):
    PolicySettings.objects.update_or_create(pk=1, defaults={"application_users": ["2"]})

    admin.post(section_url("application-users"), {"application_users": ["1", "2", "3"], "reason": "Use all"})

    assert policy_get().application_users == []
    assert AuditEvent.objects.get(action="policy.updated").after == {"application_users": []}


@pytest.mark.parametrize(
    ("section", "answers", "message"),
    [
        ("domains", {"allowed_domains": ""}, "Enter at least one allowed domain"),
        ("domains", {"allowed_domains": "agency.gov.uk\nagency_gov"}, "agency_gov is not a domain name"),
        ("domains", {"exchange_online_profile_id": "not-a-guid"}, "Enter the profile id as a GUID"),
        ("domains", {"exchange_online_profile_name": ""}, "Enter the name of the Exchange Online server profile"),
        ("domains", {"reason": ""}, "Enter the reason for the change"),
        ("tracking", {"default_tracking_rule_queue": ""}, "Select the default tracking rule for queue mailboxes"),
        ("tracking", {"flag_user_over_tracking": ""}, "Select whether to flag users who track all email messages"),
        ("waves", {"wave_test_enable_cap": "0"}, "The most Test &amp; Enables in a window must be between 1 and"),
        (
            "waves",
            {"test_enable_poll_seconds": "3600", "test_enable_timeout_minutes": "60"},
            "The time to wait must be longer than the time between checks",
        ),
        ("thresholds", {"daily_volume_threshold": "lots"}, "Enter the number of emails a day as a whole number"),
        (
            "thresholds",
            {"attachment_near_limit_percent": "101"},
            "The share of the maximum attachment size must be between 1 and 100",
        ),
        ("application-users", {"application_users": []}, "Select at least one application user"),
        ("application-users", {"application_users": ["9"]}, "Select application users from the list"),
        ("digest", {"weekly_digest_enabled": ""}, "Select whether to send the weekly digest"),
    ],
)
def test_invalid_answers_get_an_error_summary_and_change_nothing(section, answers, message, admin, registrations):
    before = policy_values()
    valid, _, _ = CHANGES[section]

    response = admin.post(section_url(section), {**valid, "reason": "Trying", **answers})

    assert response.status_code == 200
    page = text(response)
    assert "govuk-error-summary" in page and message in page
    assert page.count(message) >= 2  # in the summary and beside the field
    assert "<title>Error: " in page
    assert policy_values() == before
    assert not AuditEvent.objects.filter(action="policy.updated").exists()


def test_without_microsoft_365_there_are_no_application_users_to_choose(admin, settings):
    from portal.m365.config import M365Config

    settings.M365 = M365Config(enabled=False)
    page = text(admin.get(section_url("application-users")))
    assert "Microsoft 365 is not connected" in page and 'type="checkbox"' not in page


def test_unknown_sections_are_404(admin):
    assert admin.get(section_url("nonsense")).status_code == 404


# --- blackout windows -----------------------------------------------------------------------------


def date_parts(prefix: str, value: dt.date) -> dict[str, str]:
    return {f"{prefix}_0": str(value.day), f"{prefix}_1": str(value.month), f"{prefix}_2": str(value.year)}


def blackout_answers(start: dt.date, end: dt.date, **overrides) -> dict:
    return {
        **date_parts("starts_on", start),
        "starts_time": "18:00",
        **date_parts("ends_on", end),
        "ends_time": "07:30",
        "reason": "Month-end close",
        **overrides,
    }


def test_adding_a_blackout_window(admin):
    today = timezone.localdate()
    start, end = today + dt.timedelta(days=3), today + dt.timedelta(days=4)

    response = admin.post(reverse("policy:blackout_add"), blackout_answers(start, end), follow=True)

    page = text(response)
    assert "The blackout window “Month-end close” was added." in page
    window = BlackoutWindow.objects.get()
    assert timezone.localtime(window.starts_at).replace(tzinfo=None) == dt.datetime.combine(start, dt.time(18, 0))
    assert timezone.localtime(window.ends_at).replace(tzinfo=None) == dt.datetime.combine(end, dt.time(7, 30))
    assert "Month-end close" in page and reverse("policy:blackout_remove", args=[window.pk]) in page
    event = AuditEvent.objects.get(action="policy.blackout_added")
    assert event.before is None and event.after["reason"] == "Month-end close"


@pytest.mark.parametrize(
    ("days", "overrides", "message"),
    [
        ((3, 2), {}, "The end must be after the start"),
        ((-5, -4), {}, "The blackout must end in the future"),
        ((3, 4), {"starts_time": "25:00"}, "Enter the start time in the 24-hour clock, like 18:00"),
        ((3, 4), {"ends_on_1": "13"}, "End date must be a real date"),
        ((3, 4), {"reason": ""}, "Enter the reason for the blackout"),
    ],
)
def test_a_blackout_that_cannot_apply_gets_an_error_summary(admin, days, overrides, message):
    today = timezone.localdate()
    answers = blackout_answers(today + dt.timedelta(days=days[0]), today + dt.timedelta(days=days[1]), **overrides)

    response = admin.post(reverse("policy:blackout_add"), answers)

    page = text(response)
    assert response.status_code == 200 and "govuk-error-summary" in page and message in page
    assert not BlackoutWindow.objects.exists() and not AuditEvent.objects.exists()


def test_removing_a_blackout_window_asks_first(admin, platform_admin):
    starts = timezone.now() + dt.timedelta(days=1)
    window = blackout_window_add(
        actor=platform_admin, starts_at=starts, ends_at=starts + dt.timedelta(hours=4), reason="Payroll run"
    )
    url = reverse("policy:blackout_remove", args=[window.pk])

    assert "Remove the blackout window “Payroll run”?" in text(admin.get(url))
    assert BlackoutWindow.objects.exists()

    no_reason = text(admin.post(url, {"reason": ""}))
    assert "govuk-error-summary" in no_reason and BlackoutWindow.objects.exists()

    response = admin.post(url, {"reason": "Payroll moved"}, follow=True)
    assert "The blackout window “Payroll run” was removed." in text(response)
    assert not BlackoutWindow.objects.exists()
    event = AuditEvent.objects.get(action="policy.blackout_removed")
    assert event.before["reason"] == "Payroll run" and event.after is None and event.reason == "Payroll moved"
    assert admin.get(url).status_code == 404


# --- everyone else --------------------------------------------------------------------------------


@pytest.fixture
def every_url(platform_admin):
    starts = timezone.now() + dt.timedelta(days=1)
    window = blackout_window_add(
        actor=platform_admin, starts_at=starts, ends_at=starts + dt.timedelta(hours=4), reason="Freeze"
    )
    # (url, whether it takes a POST): the summary only shows.
    return [
        (SUMMARY, False),
        *((section_url(section), True) for section in SECTIONS),
        (reverse("policy:blackout_add"), True),
        (reverse("policy:blackout_remove", args=[window.pk]), True),
    ]


@pytest.mark.parametrize("persona", ["requester", "approver", "migration_lead", "auditor", "outsider"])
def test_everyone_but_platform_admins_is_refused(persona, request, every_url, client_for):
    client = client_for(request.getfixturevalue(persona))
    before = policy_values()
    for url, takes_post in every_url:
        assert client.get(url).status_code == 403, url
        if takes_post:
            assert client.post(url, {"reason": "x", "weekly_digest_enabled": "no"}).status_code == 403, url
    assert policy_values() == before and BlackoutWindow.objects.count() == 1
    assert AuditEvent.objects.exclude(action="policy.blackout_added").count() == 0


def test_signed_out_visitors_are_sent_to_sign_in(every_url, client):
    for url, takes_post in every_url:
        for method in (client.get, client.post) if takes_post else (client.get,):
            response = method(url)
            assert response.status_code == 302, url
            assert response["Location"].startswith(reverse("accounts:sign_in"))
