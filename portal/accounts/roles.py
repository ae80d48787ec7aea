"""The portal's roles and what each may do.

A role is a Django group holding a fixed set of permissions. Views check
permissions, never group names, so a person holding several roles gets the
union of what those roles allow. This module is the one place that says which
role grants what; migrations and the demo seed read it from here.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db import models


class Role(models.TextChoices):
    REQUESTER = "requester", "Requester"
    APPROVER = "approver", "Approver"
    PLATFORM_ADMIN = "platform_admin", "Platform admin"
    MIGRATION_LEAD = "migration_lead", "Migration lead"
    AUDITOR = "auditor", "Auditor"


@dataclass(frozen=True)
class PermissionSpec:
    codename: str
    name: str


# Declared on accounts.PortalAccess (a table-less model) so they live in one content type.
PERMISSIONS: tuple[PermissionSpec, ...] = (
    PermissionSpec("submit_mailbox_requests", "Can request new shared and queue mailboxes"),
    PermissionSpec("decide_approvals", "Can decide approval stages assigned to them"),
    PermissionSpec("administer_platform", "Can run provisioning and manage policy"),
    PermissionSpec("lead_migration", "Can manage inventory, waves and decommissioning"),
    PermissionSpec("view_audit_trail", "Can view the audit trail"),
    PermissionSpec("export_audit_trail", "Can export the audit trail and check its integrity"),
)

ROLE_PERMISSIONS: dict[Role, tuple[str, ...]] = {
    Role.REQUESTER: ("submit_mailbox_requests",),
    Role.APPROVER: ("decide_approvals",),
    Role.PLATFORM_ADMIN: ("administer_platform", "decide_approvals", "view_audit_trail"),
    Role.MIGRATION_LEAD: ("lead_migration",),
    Role.AUDITOR: ("view_audit_trail", "export_audit_trail"),
}

# Group names are what an administrator sees; they are also what Entra ID app
# roles map onto.
ROLE_GROUP_NAMES: dict[Role, str] = {role: role.label for role in Role}


def perm(codename: str) -> str:
    """The full permission name for ``user.has_perm``."""
    return f"accounts.{codename}"


def sync_role_groups(*, group_model, permission_model, content_type_model) -> None:
    """Create the permissions and one group per role, each with exactly its permissions.

    Takes the models as arguments so migrations can pass their historical ones.
    """
    content_type, _ = content_type_model.objects.get_or_create(app_label="accounts", model="portalaccess")
    by_codename = {}
    for spec in PERMISSIONS:
        permission, _ = permission_model.objects.get_or_create(
            content_type=content_type, codename=spec.codename, defaults={"name": spec.name}
        )
        by_codename[spec.codename] = permission
    for role, codenames in ROLE_PERMISSIONS.items():
        group, _ = group_model.objects.get_or_create(name=ROLE_GROUP_NAMES[role])
        group.permissions.set([by_codename[codename] for codename in codenames])
