"""Forms of the policy pages: one per section of the summary, and the blackout window forms.

Each section form knows the policy settings it changes (``policy_fields``), how to show their current
values (``initial_for``) and what to hand ``policy_update`` (``changes``). Every one asks for the
reason for the change, which goes into the audit trail.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any, ClassVar

from crispy_forms_gds.choices import Choice
from crispy_forms_gds.layout import Button, Field, Layout, Size
from django import forms
from django.conf import settings as django_settings
from django.utils import timezone

from portal.forms import GOVUKDateField, GOVUKForm
from portal.m365.config import AppRegistration

from .models import PolicySettings, TrackingRule
from .services import (
    BLACKOUT_REASON_MAX_LENGTH,
    MAX_DOMAINS,
    REASON_MAX_LENGTH,
)

YES_NO = (("yes", "Yes"), ("no", "No"))
_TIME = re.compile(r"^([01]?\d|2[0-3])[:.]([0-5]\d)$")


def _yes_no_field(label: str, *, required_message: str, help_text: str = "", choices=YES_NO) -> forms.Field:
    return forms.TypedChoiceField(
        label=label,
        help_text=help_text,
        choices=choices,
        coerce=lambda value: value == "yes",
        widget=forms.RadioSelect,
        error_messages={"required": required_message},
    )


def _yes_no(value: bool) -> str:
    return "yes" if value else "no"


class _WholeNumberField(forms.IntegerField):
    """A whole number, accepting the thousands separators people type (1,000)."""

    def to_python(self, value: Any) -> int | None:
        if isinstance(value, str):
            value = value.replace(",", "").replace(" ", "")
        return super().to_python(value)


def _whole_number(
    label: str, *, noun: str, minimum: int, maximum: int, help_text: str = "", example: int
) -> forms.IntegerField:
    between = f"{noun[0].upper()}{noun[1:]} must be between {minimum:,} and {maximum:,}"
    return _WholeNumberField(
        label=label,
        help_text=help_text,
        min_value=minimum,
        max_value=maximum,
        widget=forms.TextInput(attrs={"inputmode": "numeric", "spellcheck": "false"}),
        error_messages={
            "required": f"Enter {noun}",
            "invalid": f"Enter {noun} as a whole number, like {example:,}",
            "min_value": between,
            "max_value": between,
        },
    )


def _reason_field() -> forms.CharField:
    field = forms.CharField(
        label="Reason for the change",
        help_text="This is kept in the audit trail with the settings before and after the change.",
        widget=forms.Textarea(attrs={"rows": 3}),
        max_length=REASON_MAX_LENGTH,
        error_messages={
            "required": "Enter the reason for the change",
            "max_length": f"The reason must be {REASON_MAX_LENGTH:,} characters or fewer",
        },
    )
    field.widget.attrs.pop("maxlength", None)
    return field


class _ReasonedForm(GOVUKForm):
    """A policy form: its questions, then the reason for the change, then the button."""

    submit_label = "Save changes"
    label_size = Size.MEDIUM

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # A too-long answer gets an error message, not silent truncation by the browser.
        for field in self.fields.values():
            field.widget.attrs.pop("maxlength", None)

    def layout_field(self, name: str, field: forms.Field) -> Any:
        if name == "reason":
            return Field.textarea(name, label_size=Size.SMALL, rows=3)
        return super().layout_field(name, field)


class PolicySectionForm(_ReasonedForm):
    slug: ClassVar[str]
    title: ClassVar[str]
    saved_message: ClassVar[str]
    policy_fields: ClassVar[tuple[str, ...]]
    # Set when the section cannot be changed yet; the page explains why instead of showing the form.
    unavailable: str = ""

    def __init__(self, *args: Any, policy: PolicySettings, **kwargs: Any) -> None:
        kwargs.setdefault("initial", self.initial_for(policy))
        super().__init__(*args, **kwargs)
        self.fields["reason"] = _reason_field()
        self.helper.layout = self.build_layout()

    def initial_for(self, policy: PolicySettings) -> dict[str, Any]:
        return {name: getattr(policy, name) for name in self.policy_fields}

    def changes(self) -> dict[str, Any]:
        return {name: self.cleaned_data[name] for name in self.policy_fields}


class DomainsForm(PolicySectionForm):
    slug = "domains"
    title = "Domains and Exchange Online profile"
    saved_message = "The domains and Exchange Online profile settings were saved."
    policy_fields = (
        "allowed_domains",
        "exchange_online_profile_id",
        "exchange_online_profile_name",
        "require_email_approval",
    )
    field_widths: ClassVar[dict[str, int | str]] = {"exchange_online_profile_id": 30}

    allowed_domains = forms.CharField(
        label="Allowed email domains",
        help_text=f"New mailboxes can only have addresses in these domains. Enter one domain a line, "
        f"like agency.gov.uk ({MAX_DOMAINS} at most).",
        widget=forms.Textarea(attrs={"rows": 5, "spellcheck": "false", "autocapitalize": "none"}),
        max_length=MAX_DOMAINS * 254,
        error_messages={
            "required": "Enter at least one allowed domain",
            "max_length": f"Enter {MAX_DOMAINS} domains or fewer",
        },
    )
    exchange_online_profile_name = forms.CharField(
        label="Name of the Exchange Online server profile",
        help_text="The email server profile in Dynamics 365 that mailboxes are bound to.",
        max_length=200,
        error_messages={
            "required": "Enter the name of the Exchange Online server profile",
            "max_length": "The profile name must be 200 characters or fewer",
        },
    )
    exchange_online_profile_id = forms.CharField(
        label="Id of the Exchange Online server profile (optional)",
        help_text="If you enter it, the profile is found by its id instead of its name. "
        "For example, 6f1c3a52-8d4b-4a0e-9a55-2b7de3f0c001",
        required=False,
        max_length=38,
        error_messages={"max_length": "Enter the profile id as a GUID, like 6f1c3a52-8d4b-4a0e-9a55-2b7de3f0c001"},
    )
    require_email_approval = _yes_no_field(
        "Should Dynamics 365 require email addresses to be approved?",
        help_text="What the portal expects Dynamics 365's settings to be for users and queues.",
        required_message="Select whether Dynamics 365 should require email addresses to be approved",
        choices=(("yes", "Yes, addresses must be approved"), ("no", "No")),
    )

    def initial_for(self, policy: PolicySettings) -> dict[str, Any]:
        return {
            "allowed_domains": "\n".join(policy.allowed_domains),
            "exchange_online_profile_id": policy.exchange_online_profile_id,
            "exchange_online_profile_name": policy.exchange_online_profile_name,
            "require_email_approval": _yes_no(policy.require_email_approval),
        }

    def clean_allowed_domains(self) -> list[str]:
        # Only split here: the service validates, lower-cases and removes duplicates.
        return [line for line in re.split(r"[\s,;]+", self.cleaned_data["allowed_domains"]) if line]


class TrackingForm(PolicySectionForm):
    slug = "tracking"
    title = "Tracking rules"
    saved_message = "The tracking rules were saved."
    policy_fields = (
        "default_tracking_rule_queue",
        "default_tracking_rule_shared",
        "default_tracking_rule_user",
        "flag_user_over_tracking",
    )

    default_tracking_rule_queue = forms.TypedChoiceField(
        label="Default tracking rule for queue mailboxes",
        help_text="Recommended to people requesting a queue mailbox.",
        choices=TrackingRule.choices,
        coerce=int,
        widget=forms.RadioSelect,
        error_messages={"required": "Select the default tracking rule for queue mailboxes"},
    )
    default_tracking_rule_shared = forms.TypedChoiceField(
        label="Default tracking rule for shared mailboxes",
        choices=TrackingRule.choices,
        coerce=int,
        widget=forms.RadioSelect,
        error_messages={"required": "Select the default tracking rule for shared mailboxes"},
    )
    default_tracking_rule_user = forms.TypedChoiceField(
        label="Default tracking rule for users",
        help_text="Dynamics 365's own default for users is email messages from leads, contacts and accounts.",
        choices=TrackingRule.choices,
        coerce=int,
        widget=forms.RadioSelect,
        error_messages={"required": "Select the default tracking rule for users"},
    )
    flag_user_over_tracking = _yes_no_field(
        "Flag users who track all email messages as over-tracking?",
        help_text="Queues that track all email messages are always flagged.",
        required_message="Select whether to flag users who track all email messages",
    )

    def initial_for(self, policy: PolicySettings) -> dict[str, Any]:
        initial = super().initial_for(policy)
        initial["flag_user_over_tracking"] = _yes_no(policy.flag_user_over_tracking)
        return initial


class WavesForm(PolicySectionForm):
    slug = "waves"
    title = "Migration waves and Test & Enable"
    saved_message = "The migration wave settings were saved."
    policy_fields = (
        "wave_test_enable_cap",
        "wave_cap_window_hours",
        "migrate_act_for_users",
        "test_enable_poll_seconds",
        "test_enable_timeout_minutes",
    )
    field_widths: ClassVar[dict[str, int | str]] = {
        "wave_test_enable_cap": 5,
        "wave_cap_window_hours": 4,
        "test_enable_poll_seconds": 5,
        "test_enable_timeout_minutes": 5,
    }

    wave_test_enable_cap = _whole_number(
        "Most Test & Enables in a window",
        help_text="Counted over every wave. Microsoft's guidance is at most 200 mailboxes every 5 hours.",
        noun="the most Test & Enables in a window",
        minimum=1,
        maximum=10_000,
        example=200,
    )
    wave_cap_window_hours = _whole_number(
        "Length of the window, in hours",
        noun="the length of the window",
        minimum=1,
        maximum=168,
        example=5,
    )
    migrate_act_for_users = _yes_no_field(
        "Move users' appointments, contacts and tasks to server-side synchronization too?",
        required_message="Select whether to move users' appointments, contacts and tasks",
    )
    test_enable_poll_seconds = _whole_number(
        "Check a running Test & Enable every (seconds)",
        noun="how often to check a running Test & Enable",
        minimum=5,
        maximum=3_600,
        example=30,
    )
    test_enable_timeout_minutes = _whole_number(
        "Give up waiting for a Test & Enable after (minutes)",
        help_text="Dynamics 365 retries transient errors about 10 times, 5 minutes apart, before it gives up.",
        noun="how long to wait for a Test & Enable",
        minimum=5,
        maximum=1_440,
        example=90,
    )

    def initial_for(self, policy: PolicySettings) -> dict[str, Any]:
        initial = super().initial_for(policy)
        initial["migrate_act_for_users"] = _yes_no(policy.migrate_act_for_users)
        return initial

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        poll, timeout = data.get("test_enable_poll_seconds"), data.get("test_enable_timeout_minutes")
        if poll and timeout and timeout * 60 <= poll:
            self.add_error(
                "test_enable_timeout_minutes", "The time to wait must be longer than the time between checks"
            )
        return data


class ThresholdsForm(PolicySectionForm):
    slug = "thresholds"
    title = "Thresholds"
    saved_message = "The thresholds were saved."
    policy_fields = ("daily_volume_threshold", "attachment_size_threshold_kb", "attachment_near_limit_percent")
    field_widths: ClassVar[dict[str, int | str]] = {
        "daily_volume_threshold": 10,
        "attachment_size_threshold_kb": 10,
        "attachment_near_limit_percent": 3,
    }

    daily_volume_threshold = _whole_number(
        "Emails a day per mailbox",
        help_text="Incoming and outgoing together. A mailbox above this is flagged.",
        noun="the number of emails a day",
        minimum=1,
        maximum=1_000_000,
        example=400,
    )
    attachment_size_threshold_kb = _whole_number(
        "Large attachment size, in KB",
        help_text="An attachment at least this big is flagged. 1,024 KB is 1 MB.",
        noun="the attachment size",
        minimum=1,
        maximum=1_048_576,
        example=4096,
    )
    attachment_near_limit_percent = _whole_number(
        "Share of Dynamics 365's maximum attachment size, in percent",
        help_text="An attachment at or above this share of the maximum file size Dynamics 365 accepts is flagged.",
        noun="the share of the maximum attachment size",
        minimum=1,
        maximum=100,
        example=90,
    )


def _registration_choice(registration: AppRegistration) -> Choice:
    return Choice(
        registration.name,
        f"Application user {registration.name}",
        hint=f"Client id {registration.client_id}",
    )


class ApplicationUsersForm(PolicySectionForm):
    slug = "application-users"
    title = "Application users"
    saved_message = "The application users were saved."
    policy_fields = ("application_users",)
    label_size = Size.MEDIUM

    application_users = forms.MultipleChoiceField(
        label="Which application users may the portal use?",
        help_text="Each is its own Dynamics 365 application user with its own service protection limits, so "
        "more of them is faster. If you select all of them, registrations added later are used too.",
        widget=forms.CheckboxSelectMultiple,
        error_messages={
            "required": "Select at least one application user",
            "invalid_choice": "Select application users from the list",
        },
    )

    def __init__(
        self,
        *args: Any,
        policy: PolicySettings,
        registrations: tuple[AppRegistration, ...] | None = None,
        **kwargs: Any,
    ) -> None:
        self.registrations = django_settings.M365.registrations if registrations is None else registrations
        super().__init__(*args, policy=policy, **kwargs)
        self.fields["application_users"].choices = [_registration_choice(r) for r in self.registrations]

    @property
    def unavailable(self) -> str:
        if self.registrations:
            return ""
        return (
            "Microsoft 365 is not connected, so there are no application users to choose from. "
            "Set M365_TENANT_ID, M365_CLIENT_ID and their settings first."
        )

    def initial_for(self, policy: PolicySettings) -> dict[str, Any]:
        configured = [registration.name for registration in self.registrations]
        allowed = [name for name in policy.application_users if name in configured]
        return {"application_users": allowed or configured}

    def clean_application_users(self) -> list[str]:
        chosen = self.cleaned_data["application_users"]
        # Every one chosen is stored as "all", so a registration added later is used without a visit here.
        if {registration.name for registration in self.registrations} <= set(chosen):
            return []
        return chosen


class DigestForm(PolicySectionForm):
    slug = "digest"
    title = "Digest"
    saved_message = "The digest setting was saved."
    policy_fields = ("weekly_digest_enabled",)

    weekly_digest_enabled = _yes_no_field(
        "Send platform admins the weekly digest?",
        help_text="A summary of alerts, volumes, attachment sizes and migration progress, every week.",
        required_message="Select whether to send the weekly digest",
    )

    def initial_for(self, policy: PolicySettings) -> dict[str, Any]:
        return {"weekly_digest_enabled": _yes_no(policy.weekly_digest_enabled)}


SECTION_FORMS: dict[str, type[PolicySectionForm]] = {
    form.slug: form for form in (DomainsForm, TrackingForm, WavesForm, ThresholdsForm, ApplicationUsersForm, DigestForm)
}


def _time_field(label: str) -> forms.CharField:
    return forms.CharField(
        label=label,
        help_text="In the 24-hour clock, like 18:00",
        max_length=5,
        error_messages={
            "required": f"Enter the {label.lower()}",
            "max_length": f"Enter the {label.lower()} in the 24-hour clock, like 18:00",
        },
    )


class BlackoutWindowForm(_ReasonedForm):
    submit_label = "Add blackout window"
    label_size = Size.SMALL
    field_widths: ClassVar[dict[str, int | str]] = {"starts_time": 5, "ends_time": 5}
    # The service names the moments; the form asks for them as a date and a time each.
    service_fields: ClassVar[dict[str, str]] = {"starts_at": "starts_on", "ends_at": "ends_on"}

    starts_on = GOVUKDateField(label="Start date", help_text="For example, 27 3 2026")
    starts_time = _time_field("Start time")
    ends_on = GOVUKDateField(label="End date", help_text="For example, 31 3 2026")
    ends_time = _time_field("End time")
    reason = forms.CharField(
        label="Reason for the blackout",
        help_text="Migration leads see this. For example, Month-end close",
        max_length=BLACKOUT_REASON_MAX_LENGTH,
        error_messages={
            "required": "Enter the reason for the blackout",
            "max_length": f"The reason must be {BLACKOUT_REASON_MAX_LENGTH} characters or fewer",
        },
    )

    def layout_field(self, name: str, field: forms.Field) -> Any:
        if name == "reason":
            return Field.text(name, label_size=Size.SMALL)
        return super().layout_field(name, field)

    def _clean_time(self, name: str) -> dt.time:
        label = self.fields[name].label.lower()
        match = _TIME.match(self.cleaned_data[name].strip())
        if not match:
            raise forms.ValidationError(f"Enter the {label} in the 24-hour clock, like 18:00")
        return dt.time(int(match[1]), int(match[2]))

    def clean_starts_time(self) -> dt.time:
        return self._clean_time("starts_time")

    def clean_ends_time(self) -> dt.time:
        return self._clean_time("ends_time")

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        zone = timezone.get_current_timezone()
        for moment, day, time in (("starts_at", "starts_on", "starts_time"), ("ends_at", "ends_on", "ends_time")):
            if data.get(day) and data.get(time):
                data[moment] = dt.datetime.combine(data[day], data[time], tzinfo=zone)
        return data


class BlackoutRemoveForm(_ReasonedForm):
    submit_label = "Remove blackout window"

    reason = _reason_field()

    def build_layout(self) -> Layout:
        return Layout(self.layout_field("reason", self.fields["reason"]), Button.warning("submit", self.submit_label))
