"""Changing the portal's policy: the settings row and blackout windows.

Approval stages are changed on the approval stages page (``onboarding.services.approvals``).

Every change locks what it changes, re-checks it inside the lock, and writes one audit event with
the values before and after in the same transaction. Services raise :class:`PortalError` (with the
form field it concerns) for anything a person can correct.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from portal.audit.services import audit_record
from portal.exceptions import InvalidStateError, PortalError

from .models import BlackoutWindow, PolicySettings

EDITABLE = (
    # Domains and the Exchange Online profile
    "allowed_domains",
    "exchange_online_profile_id",
    "exchange_online_profile_name",
    "require_email_approval",
    # Tracking rules
    "default_tracking_rule_queue",
    "default_tracking_rule_shared",
    "default_tracking_rule_user",
    "flag_user_over_tracking",
    # Test & Enable and migration waves
    "test_enable_poll_seconds",
    "test_enable_timeout_minutes",
    "wave_test_enable_cap",
    "wave_cap_window_hours",
    "migrate_act_for_users",
    # Thresholds
    "daily_volume_threshold",
    "attachment_size_threshold_kb",
    "attachment_near_limit_percent",
    # Application users and the digest
    "application_users",
    "weekly_digest_enabled",
)

MAX_DOMAINS = 100
REASON_MAX_LENGTH = 2000
BLACKOUT_REASON_MAX_LENGTH = BlackoutWindow._meta.get_field("reason").max_length
_DOMAIN_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_TOP_LEVEL = re.compile(r"^(?:[a-z]{2,63}|xn--[a-z0-9-]{1,59})$")


def policy_get() -> PolicySettings:
    """The policy row, created with defaults the first time it is read."""
    policy, _ = PolicySettings.objects.get_or_create(pk=1)
    return policy


# --- cleaning values ---------------------------------------------------------------------------


def domains_clean(values: Iterable[str]) -> list[str]:
    """Domain names lower-cased, in the order given, duplicates removed; the first bad one is refused."""
    domains: list[str] = []
    for raw in values:
        domain = str(raw).strip().lower().rstrip(".")
        if not domain:
            continue
        if not _is_domain(domain):
            raise PortalError(
                f"{domain[:80]} is not a domain name. Enter domains like agency.gov.uk", field="allowed_domains"
            )
        if domain not in domains:
            domains.append(domain)
    if not domains:
        raise PortalError("Enter at least one allowed domain", field="allowed_domains")
    if len(domains) > MAX_DOMAINS:
        raise PortalError(f"Enter {MAX_DOMAINS} domains or fewer", field="allowed_domains")
    return domains


def _is_domain(domain: str) -> bool:
    if len(domain) > 253 or not domain.isascii():
        return False
    labels = domain.split(".")
    return (
        len(labels) >= 2 and all(_DOMAIN_LABEL.match(label) for label in labels) and bool(_TOP_LEVEL.match(labels[-1]))
    )


def _profile_id_clean(value: Any) -> str:
    text = str(value or "").strip().strip("{}")
    if not text:
        return ""
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise PortalError(
            "Enter the profile id as a GUID, like 6f1c3a52-8d4b-4a0e-9a55-2b7de3f0c001, or leave it empty",
            field="exchange_online_profile_id",
        ) from None


def configured_application_users() -> tuple[str, ...]:
    """Names of the application registrations this installation is configured with, in order."""
    return tuple(registration.name for registration in settings.M365.registrations)


def _application_users_clean(value: Any) -> list[str]:
    if not isinstance(value, list | tuple) or not all(isinstance(name, str) for name in value):
        raise PortalError("Select the application users the portal may use", field="application_users")
    configured = configured_application_users()
    unknown = [name for name in value if name not in configured]
    if unknown:
        raise PortalError(
            f"Application user {unknown[0][:20]} is not configured. Select from the configured application users",
            field="application_users",
        )
    # In configuration order, so the same choice always reads (and audits) the same way.
    return [name for name in configured if name in value]


def _clean_changes(changes: dict[str, Any]) -> dict[str, Any]:
    cleaned = dict(changes)
    if "allowed_domains" in cleaned:
        cleaned["allowed_domains"] = domains_clean(cleaned["allowed_domains"])
    if "exchange_online_profile_id" in cleaned:
        cleaned["exchange_online_profile_id"] = _profile_id_clean(cleaned["exchange_online_profile_id"])
    if "exchange_online_profile_name" in cleaned:
        name = str(cleaned["exchange_online_profile_name"] or "").strip()
        if not name:
            raise PortalError(
                "Enter the name of the Exchange Online server profile", field="exchange_online_profile_name"
            )
        cleaned["exchange_online_profile_name"] = name
    if "application_users" in cleaned:
        cleaned["application_users"] = _application_users_clean(cleaned["application_users"])
    return cleaned


def _reason_clean(reason: str) -> str:
    reason = (reason or "").strip()
    if len(reason) > REASON_MAX_LENGTH:
        raise PortalError(f"The reason must be {REASON_MAX_LENGTH:,} characters or fewer", field="reason")
    return reason


def _first_error(error: ValidationError) -> PortalError:
    if hasattr(error, "error_dict"):
        field, messages = next(iter(error.message_dict.items()))
        return PortalError(messages[0], field=None if field == "__all__" else field)
    return PortalError(error.messages[0])


# --- the settings row --------------------------------------------------------------------------


def policy_update(*, actor: Any, changes: dict[str, Any], reason: str = "") -> PolicySettings:
    """Change policy settings; the single write path. Audited with the changed values before and after.

    Settings given with the value they already have are left alone; when nothing changes, nothing
    is written and no event is recorded.
    """
    unknown = set(changes) - set(EDITABLE)
    if unknown:
        raise ValueError(f"not policy settings: {', '.join(sorted(unknown))}")
    cleaned = _clean_changes(changes)
    reason = _reason_clean(reason)
    with transaction.atomic():
        policy_get()
        policy = PolicySettings.objects.select_for_update().get(pk=1)
        changed = {name: value for name, value in cleaned.items() if getattr(policy, name) != value}
        if not changed:
            return policy
        before = {name: getattr(policy, name) for name in changed}
        for name, value in changed.items():
            setattr(policy, name, value)
        try:
            policy.full_clean()
        except ValidationError as error:
            raise _first_error(error) from None
        policy.save(update_fields=[*changed, "updated_at"])
        audit_record(
            actor=actor,
            action="policy.updated",
            object_type="policy",
            object_id=1,
            before=before,
            after={name: getattr(policy, name) for name in changed},
            reason=reason,
        )
    return policy


# --- blackout windows --------------------------------------------------------------------------


def _window_state(window: BlackoutWindow) -> dict[str, Any]:
    return {
        "starts_at": window.starts_at.astimezone(dt.UTC).isoformat(),
        "ends_at": window.ends_at.astimezone(dt.UTC).isoformat(),
        "reason": window.reason,
    }


def blackout_window_add(*, actor: Any, starts_at: dt.datetime, ends_at: dt.datetime, reason: str) -> BlackoutWindow:
    """A period in which no migration Test & Enable starts. ``reason`` says what it is for (it is shown
    to migration leads) and is the audit event's reason too."""
    if timezone.is_naive(starts_at) or timezone.is_naive(ends_at):
        raise ValueError("blackout windows need timezone-aware start and end")
    reason = (reason or "").strip()
    if not reason:
        raise PortalError("Enter the reason for the blackout", field="reason")
    if len(reason) > BLACKOUT_REASON_MAX_LENGTH:
        raise PortalError(f"The reason must be {BLACKOUT_REASON_MAX_LENGTH} characters or fewer", field="reason")
    if ends_at <= starts_at:
        raise PortalError("The end must be after the start", field="ends_at")
    now = timezone.now()
    if ends_at <= now:
        raise PortalError("The blackout must end in the future", field="ends_at")
    with transaction.atomic():
        # Policy changes serialise on the policy row.
        policy_get()
        PolicySettings.objects.select_for_update().get(pk=1)
        window = BlackoutWindow.objects.create(starts_at=starts_at, ends_at=ends_at, reason=reason, created_at=now)
        audit_record(
            actor=actor,
            action="policy.blackout_added",
            object_type="blackout_window",
            object_id=window.pk,
            after=_window_state(window),
            reason=reason,
        )
    return window


def blackout_window_remove(*, actor: Any, window_id: int, reason: str = "") -> None:
    """Remove a blackout window; Test & Enables it held back may then start."""
    reason = _reason_clean(reason)
    with transaction.atomic():
        window = BlackoutWindow.objects.select_for_update().filter(pk=window_id).first()
        if window is None:
            raise InvalidStateError("This blackout window has already been removed.")
        before = _window_state(window)
        window.delete()
        audit_record(
            actor=actor,
            action="policy.blackout_removed",
            object_type="blackout_window",
            object_id=window_id,
            before=before,
            reason=reason,
        )
