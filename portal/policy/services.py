"""Reading and changing the portal's policy."""

from __future__ import annotations

from typing import Any

from django.db import transaction

from portal.audit.services import audit_record

from .models import PolicySettings

EDITABLE = (
    "allowed_domains",
    "exchange_online_profile_id",
    "exchange_online_profile_name",
    "default_tracking_rule_queue",
    "test_enable_poll_seconds",
    "test_enable_timeout_minutes",
)


def policy_get() -> PolicySettings:
    """The policy row, created with defaults the first time it is read."""
    policy, _ = PolicySettings.objects.get_or_create(pk=1)
    return policy


def policy_update(*, actor: Any, changes: dict[str, Any], reason: str = "") -> PolicySettings:
    unknown = set(changes) - set(EDITABLE)
    if unknown:
        raise ValueError(f"not policy settings: {', '.join(sorted(unknown))}")
    with transaction.atomic():
        policy_get()
        policy = PolicySettings.objects.select_for_update().get(pk=1)
        before = {name: getattr(policy, name) for name in changes}
        for name, value in changes.items():
            setattr(policy, name, value)
        policy.full_clean()
        policy.save(update_fields=[*changes, "updated_at"])
        audit_record(
            actor=actor,
            action="policy.updated",
            object_type="policy",
            object_id=1,
            before=before,
            after={name: getattr(policy, name) for name in changes},
            reason=reason,
        )
    return policy
