from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.contrib.auth.models import AbstractUser
from django.db import models

from .roles import PERMISSIONS, ROLE_GROUP_NAMES, Role


def display_name_of(first_name: str, last_name: str, username: str) -> str:
    """How a person is named on pages: their full name, or their username when they have none."""
    return f"{first_name} {last_name}".strip() or username


def display_name_in(values: Mapping[str, Any], person: str) -> str:
    """``display_name_of`` the person a ``.values()`` row names through the foreign key ``person``
    (``<person>_id``, ``<person>__first_name`` …); "" when it names nobody."""
    if not values[f"{person}_id"]:
        return ""
    return display_name_of(
        values[f"{person}__first_name"], values[f"{person}__last_name"], values[f"{person}__username"]
    )


class User(AbstractUser):
    """A member of staff. Local password or, later, Entra ID sign-in."""

    entra_object_id = models.CharField(
        max_length=64, blank=True, default="", help_text="Entra ID object id, when signed in that way."
    )

    class Meta:
        ordering = ["username"]
        constraints = [
            models.UniqueConstraint(
                fields=["entra_object_id"],
                condition=~models.Q(entra_object_id=""),
                name="accounts_user_unique_entra_object_id",
            )
        ]

    @property
    def display_name(self) -> str:
        return display_name_of(self.first_name, self.last_name, self.username)

    def roles(self) -> list[Role]:
        """Roles held, in the order of :class:`Role`. Uses the prefetched groups when present."""
        names = {group.name for group in self.groups.all()}
        return [role for role in Role if ROLE_GROUP_NAMES[role] in names]


class PortalAccess(models.Model):
    """Holder of the portal's permissions; it has no table and no rows."""

    class Meta:
        managed = False
        default_permissions = ()
        permissions = [(spec.codename, spec.name) for spec in PERMISSIONS]

    def __str__(self) -> str:
        return "Portal access"


class Team(models.Model):
    """A business team: owns mailboxes, has business owners who approve its requests, and members."""

    name = models.CharField(max_length=200, unique=True)
    business_unit = models.CharField(max_length=200, help_text="The Dataverse business unit the team sits in.")
    business_owners = models.ManyToManyField(User, related_name="owned_teams", blank=True)
    members = models.ManyToManyField(User, related_name="teams", blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name
