"""Sign-in, sign-out and the demo accounts; each change lands in the audit trail."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from django.contrib.auth import authenticate, login, logout
from django.contrib.auth.models import Group, Permission
from django.contrib.contenttypes.models import ContentType
from django.db import transaction
from django.http import HttpRequest

from portal.audit.models import Outcome
from portal.audit.services import audit_record
from portal.exceptions import PortalError
from portal.security import client_address

from . import throttle
from .models import Team, User
from .roles import ROLE_GROUP_NAMES, Role, sync_role_groups

logger = logging.getLogger(__name__)

SIGN_IN_FAILED = "Enter a correct username and password. Both are case-sensitive."
# The same words whether or not the username exists, so a lock reveals nothing about accounts.
SIGN_IN_THROTTLED = "Too many attempts to sign in. Wait {minutes} minutes, then try again."
SIGN_IN_UNAVAILABLE = "Sorry, signing in is not available at the moment. Try again in a few minutes."
# How the person signed in ("entra"); absent for local accounts.
SIGN_IN_METHOD_SESSION_KEY = "sign_in_method"
# The same, carried over sign-out so the signed-out page can offer to end the Microsoft session too.
SIGNED_OUT_METHOD_SESSION_KEY = "signed_out_method"


class SignInError(PortalError):
    pass


class SignInThrottledError(SignInError):
    """Too many recent failures for this username or from this address; the password was not checked."""


class SignInUnavailableError(SignInError):
    """The failure counts cannot be read, so no password is checked (guessing stays limited)."""


def _audit_failed_sign_in(username: str, *, reason: str) -> None:
    audit_record(
        actor=None,
        actor_name="Anonymous",
        action="auth.sign_in",
        object_type="user",
        object_id=username[:100],
        outcome=Outcome.FAILURE,
        reason=reason,
    )


def session_sign_in(*, request: HttpRequest, username: str, password: str) -> User:
    address = client_address(request)
    attempt = throttle.attempt_for(username=username, address=address)
    try:
        allowed = throttle.attempt_reserve(attempt)
    except throttle.ThrottleUnavailableError:
        logger.exception("sign-in refused: the failure counts in Redis cannot be read")
        raise SignInUnavailableError(SIGN_IN_UNAVAILABLE) from None
    if not allowed:
        logger.warning("sign-in refused: too many failed attempts for the username or from %s", address)
        _audit_failed_sign_in(username, reason="too many failed attempts; refused without checking the password")
        raise SignInThrottledError(SIGN_IN_THROTTLED.format(minutes=throttle.lockout_minutes()))
    user = authenticate(request, username=username, password=password)
    with transaction.atomic():
        if user is None:
            _audit_failed_sign_in(username, reason="username or password not recognised")
        else:
            login(request, user)
            audit_record(actor=user, action="auth.sign_in", object_type="user", object_id=user.pk)
    if user is None:
        # Raised after the transaction so the failed attempt stays recorded; the attempt stays
        # counted as a failure.
        raise SignInError(SIGN_IN_FAILED)
    throttle.attempt_succeeded(attempt)
    return user


def session_sign_out(*, request: HttpRequest) -> None:
    user = request.user
    method = request.session.get(SIGN_IN_METHOD_SESSION_KEY, "")
    with transaction.atomic():
        if user.is_authenticated:
            audit_record(actor=user, action="auth.sign_out", object_type="user", object_id=user.pk)
        logout(request)
    if method and user.is_authenticated:
        request.session[SIGNED_OUT_METHOD_SESSION_KEY] = method


def roles_sync() -> None:
    """Make sure every role's group exists with exactly its permissions (idempotent)."""
    with transaction.atomic():
        sync_role_groups(group_model=Group, permission_model=Permission, content_type_model=ContentType)


@dataclass(frozen=True)
class DemoPerson:
    username: str
    first_name: str
    last_name: str
    roles: tuple[Role, ...]

    @property
    def email(self) -> str:
        # The tenant simulator's demo organisation has these people, with Exchange Online mailboxes.
        return f"{self.first_name}.{self.last_name}@example.gov.uk".lower()


DEMO_PEOPLE: tuple[DemoPerson, ...] = (
    DemoPerson("requester", "Riya", "Patel", (Role.REQUESTER,)),
    DemoPerson("approver", "Owen", "Hughes", (Role.REQUESTER, Role.APPROVER)),
    DemoPerson("admin", "Grace", "Okafor", (Role.PLATFORM_ADMIN,)),
    DemoPerson("migration", "Tom", "Fletcher", (Role.MIGRATION_LEAD,)),
    DemoPerson("auditor", "Aisha", "Khan", (Role.AUDITOR,)),
    DemoPerson("outsider", "Sam", "Doyle", ()),
)


def user_roles_set(
    *, actor: User | None, user: User, roles: tuple[Role, ...] | list[Role], actor_name: str | None = None
) -> None:
    """Make ``user`` hold exactly ``roles``; the change is audited with before and after."""
    with transaction.atomic():
        locked = User.objects.select_for_update().get(pk=user.pk)
        before = sorted(role.value for role in locked.roles())
        groups = list(Group.objects.filter(name__in=[ROLE_GROUP_NAMES[role] for role in roles]))
        locked.groups.set(groups)
        after = sorted(Role(role).value for role in roles)
        if before != after:
            audit_record(
                actor=actor,
                actor_name=actor_name,
                action="account.roles_changed",
                object_type="user",
                object_id=user.pk,
                before={"roles": before},
                after={"roles": after},
            )


def demo_accounts_seed(*, password: str) -> list[tuple[User, bool]]:
    """Create (or reset) one demo account per role and an outsider with no role."""
    results = []
    with transaction.atomic():
        roles_sync()
        for person in DEMO_PEOPLE:
            user, created = User.objects.get_or_create(
                username=person.username,
                defaults={
                    "first_name": person.first_name,
                    "last_name": person.last_name,
                    "email": person.email,
                },
            )
            user.set_password(password)
            user.is_active = True
            user.email = person.email
            user.save(update_fields=["password", "is_active", "email"])
            if created:
                audit_record(
                    actor=None,
                    actor_name="System (demo seed)",
                    action="account.created",
                    object_type="user",
                    object_id=user.pk,
                    after={"username": user.username, "name": user.get_full_name()},
                )
            user_roles_set(actor=None, user=user, roles=person.roles)
            results.append((user, created))
    return results


DEMO_TEAMS: tuple[tuple[str, str, tuple[str, ...], tuple[str, ...]], ...] = (
    # name, business unit, business owners, members (usernames)
    ("Finance", "Finance", ("approver",), ("requester", "approver")),
    ("Customer Services", "Customer Services", ("approver",), ("requester",)),
    ("Digital and Technology", "Digital and Technology", ("admin",), ("migration",)),
)


def demo_teams_seed() -> list[Team]:
    """The demo organisation's teams, their business owners and members (idempotent)."""
    teams = []
    with transaction.atomic():
        people = {user.username: user for user in User.objects.filter(username__in=[p.username for p in DEMO_PEOPLE])}
        for name, unit, owners, members in DEMO_TEAMS:
            team, created = Team.objects.get_or_create(name=name, defaults={"business_unit": unit})
            team.business_owners.set([people[u] for u in owners if u in people])
            team.members.set([people[u] for u in members if u in people])
            if created:
                audit_record(
                    actor=None,
                    actor_name="System (demo seed)",
                    action="team.created",
                    object_type="team",
                    object_id=team.pk,
                    after={"name": name, "business_owners": list(owners), "members": list(members)},
                )
            teams.append(team)
    return teams
