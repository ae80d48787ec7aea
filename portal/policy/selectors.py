"""Reading the policy: the summary page's data, and what the Microsoft 365 clients need from it."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from migration.models import OrganizationSnapshot, ServerProfile
from onboarding.models import ApprovalStage
from portal.m365.config import AppRegistration

from .models import BlackoutWindow, PolicySettings
from .services import policy_get

BLACKOUTS_SHOWN = 100
EMAIL_CHANNEL_LABELS = {0: "Server-side synchronization", 1: "Email Router"}
EXPECTED_EMAIL_CHANNEL = 0


def policy_application_users() -> list[str]:
    """The registration names the policy allows (empty: all), in one query that writes nothing."""
    names = PolicySettings.objects.filter(pk=1).values_list("application_users", flat=True).first()
    return [str(name) for name in names or []]


# --- application users -------------------------------------------------------------------------


@dataclass(frozen=True)
class ApplicationUser:
    name: str
    client_id: str
    in_use: bool


@dataclass(frozen=True)
class ApplicationUsers:
    configured: list[ApplicationUser]
    # Names the policy allows that are no longer configured (a registration was removed).
    missing: list[str]
    all_allowed: bool
    # The policy allows none of the configured registrations, so the clients use them all.
    falls_back: bool


def application_users(policy: PolicySettings) -> ApplicationUsers:
    registrations: tuple[AppRegistration, ...] = settings.M365.registrations
    allowed = set(policy.application_users)
    names = {registration.name for registration in registrations}
    falls_back = bool(allowed) and bool(registrations) and not allowed & names
    everyone = not allowed or falls_back
    return ApplicationUsers(
        configured=[
            ApplicationUser(registration.name, registration.client_id, everyone or registration.name in allowed)
            for registration in registrations
        ],
        missing=[name for name in policy.application_users if name not in names],
        all_allowed=not allowed,
        falls_back=falls_back,
    )


# --- what Dataverse holds ----------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    setting: str
    dataverse: str
    portal: str
    # None: Dataverse did not say, so there is nothing to compare.
    matches: bool | None


@dataclass(frozen=True)
class DataverseSettings:
    organisation_name: str
    taken_at: dt.datetime
    rows: list[Comparison]
    max_upload_file_size: int | None  # bytes

    @property
    def differences(self) -> int:
        return sum(1 for row in self.rows if row.matches is False)


def _yes_no(value: bool) -> str:
    return "Required" if value else "Not required"


def _profile_label(profile: ServerProfile | None, profile_id: uuid.UUID | str) -> str:
    return f"{profile.name} ({profile.dataverse_id})" if profile else f"A profile discovery did not read ({profile_id})"


def _profile_comparison(policy: PolicySettings, default_id: uuid.UUID | None) -> Comparison:
    policy_id = uuid.UUID(policy.exchange_online_profile_id) if policy.exchange_online_profile_id else None
    wanted = Q(name__iexact=policy.exchange_online_profile_name) if policy_id is None else Q(dataverse_id=policy_id)
    known = Q(dataverse_id=default_id) if default_id else Q(pk__in=[])
    profiles = list(ServerProfile.objects.filter(wanted | known).order_by("name", "dataverse_id"))
    by_id = {profile.dataverse_id: profile for profile in profiles}
    dataverse = _profile_label(by_id.get(default_id), default_id) if default_id else "No default profile"
    if policy_id is not None:
        portal = _profile_label(by_id.get(policy_id), policy_id)
        return Comparison("Default email server profile", dataverse, portal, default_id == policy_id)
    named = [profile for profile in profiles if profile.name.lower() == policy.exchange_online_profile_name.lower()]
    if not named:
        portal = f"{policy.exchange_online_profile_name} (no profile of that name in Dataverse)"
        return Comparison("Default email server profile", dataverse, portal, False)
    portal = " or ".join(f"{profile.name} ({profile.dataverse_id})" for profile in named)
    return Comparison("Default email server profile", dataverse, portal, default_id in {p.dataverse_id for p in named})


def dataverse_settings(policy: PolicySettings) -> DataverseSettings | None:
    """The organisation's email settings from the last discovery beside what the policy expects;
    None when discovery has not read them yet. Two queries."""
    snapshot = OrganizationSnapshot.objects.filter(pk=1, taken_at__isnull=False).first()
    if snapshot is None:
        return None
    channel = snapshot.email_connection_channel
    rows = [
        Comparison(
            "Process email using",
            EMAIL_CHANNEL_LABELS.get(channel, f"Unknown value {channel}") if channel is not None else "Not read",
            EMAIL_CHANNEL_LABELS[EXPECTED_EMAIL_CHANNEL],
            None if channel is None else channel == EXPECTED_EMAIL_CHANNEL,
        ),
        Comparison(
            "Approval of email addresses for users",
            _yes_no(snapshot.require_approval_user_email),
            _yes_no(policy.require_email_approval),
            snapshot.require_approval_user_email == policy.require_email_approval,
        ),
        Comparison(
            "Approval of email addresses for queues",
            _yes_no(snapshot.require_approval_queue_email),
            _yes_no(policy.require_email_approval),
            snapshot.require_approval_queue_email == policy.require_email_approval,
        ),
        _profile_comparison(policy, snapshot.default_profile_id),
    ]
    return DataverseSettings(
        organisation_name=snapshot.name,
        taken_at=snapshot.taken_at,
        rows=rows,
        max_upload_file_size=snapshot.max_upload_file_size,
    )


# --- the summary page --------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyOverview:
    policy: PolicySettings
    stages: list[ApprovalStage]
    blackouts: list[BlackoutWindow]
    application_users: ApplicationUsers
    dataverse: DataverseSettings | None

    @property
    def near_limit_kb(self) -> int | None:
        """The attachment size flagged as near Dataverse's limit, in KB, when the limit is known."""
        if self.dataverse is None or not self.dataverse.max_upload_file_size:
            return None
        return self.dataverse.max_upload_file_size * self.policy.attachment_near_limit_percent // 100 // 1024


def policy_overview() -> PolicyOverview:
    """Everything the summary page shows, in a fixed number of queries."""
    policy = policy_get()
    return PolicyOverview(
        policy=policy,
        stages=list(ApprovalStage.objects.order_by("order")),
        blackouts=list(
            BlackoutWindow.objects.filter(ends_at__gt=timezone.now()).order_by("starts_at")[:BLACKOUTS_SHOWN]
        ),
        application_users=application_users(policy),
        dataverse=dataverse_settings(policy),
    )
