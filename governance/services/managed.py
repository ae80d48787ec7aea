"""Which mailboxes the portal keeps healthy, kept in step with onboarding and the inventory.

A mailbox is managed when the portal onboarded it (its request is active or needs attention)
or when discovery found it on compliant server-side sync (which is where migrated mailboxes
end up). Owners are the request's owner and backup owner; for mailboxes the portal did not
onboard, the owner named in the inventory annotation, else the business owners of the portal
team in the mailbox's Dataverse business unit (or named like its Dataverse team).
"""

from __future__ import annotations

import calendar
import datetime as dt
import uuid
from dataclasses import dataclass, field

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from governance.models import ManagedKind, ManagedMailbox, ManagedSource
from migration.models import Classification, InventoryMailbox, OwnerType
from onboarding.models import MailboxKind, MailboxRequest, RequestStatus
from portal.accounts.models import Team, User

MANAGED_REQUEST_STATUSES = (RequestStatus.ACTIVE, RequestStatus.NEEDS_ATTENTION)
_FIELDS = (
    "name",
    "email_address",
    "kind",
    "source",
    "owner_dataverse_id",
    "request",
    "inventory",
    "team",
    "retention_months",
    "review_due_on",
    "is_active",
)


@dataclass
class _Wanted:
    dataverse_id: uuid.UUID
    name: str
    email_address: str
    kind: str
    source: str
    owner_dataverse_id: uuid.UUID | None
    request_id: int | None = None
    inventory_id: int | None = None
    team_id: int | None = None
    retention_months: int | None = None
    review_due_on: dt.date | None = None
    owner_ids: set[int] = field(default_factory=set)


def add_months(day: dt.date, months: int) -> dt.date:
    """``day`` plus whole calendar months, clamped to the month's last day (31 Jan + 1 → 28/29 Feb)."""
    month_index = day.month - 1 + months
    year, month = day.year + month_index // 12, month_index % 12 + 1
    return dt.date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def _uuid(value: str | uuid.UUID | None) -> uuid.UUID | None:
    if not value:
        return None
    try:
        return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
    except ValueError:
        return None


def _from_requests() -> dict[uuid.UUID, _Wanted]:
    wanted: dict[uuid.UUID, _Wanted] = {}
    requests = MailboxRequest.objects.filter(status__in=MANAGED_REQUEST_STATUSES).exclude(dataverse_mailbox_id="")
    for request in requests.order_by("activated_at", "id"):
        mailbox_id = _uuid(request.dataverse_mailbox_id)
        if mailbox_id is None:
            continue
        activated = (request.activated_at or request.decided_at or request.created_at).date()
        wanted[mailbox_id] = _Wanted(
            dataverse_id=mailbox_id,
            name=request.display_name,
            email_address=request.address,
            kind=ManagedKind.QUEUE if request.kind == MailboxKind.QUEUE else ManagedKind.SHARED,
            source=ManagedSource.ONBOARDING,
            owner_dataverse_id=_uuid(request.dataverse_queue_id),
            request_id=request.pk,
            team_id=request.team_id,
            retention_months=request.retention_months,
            review_due_on=add_months(activated, request.retention_months) if request.retention_months else None,
            owner_ids={pk for pk in (request.owner_id, request.backup_owner_id) if pk},
        )
    return wanted


def _from_inventory(wanted: dict[uuid.UUID, _Wanted]) -> None:
    all_teams = list(Team.objects.prefetch_related("business_owners").order_by("-name"))
    teams = {team.name.casefold(): team for team in all_teams}
    # Portal teams record the Dataverse business unit they sit in; the first team by name wins.
    units = {team.business_unit.casefold(): team for team in all_teams if team.business_unit}
    users_by_email: dict[str, int] = {}
    rows = list(
        InventoryMailbox.objects.filter(removed_at__isnull=True, classification=Classification.COMPLIANT_SSS)
        .select_related("annotation")
        .only(
            "id",
            "dataverse_id",
            "name",
            "email_address",
            "owner_type",
            "owner_dataverse_id",
            "team_name",
            "business_unit_name",
            "annotation__owner_correction",
        )
    )
    corrections = {
        (row.annotation.owner_correction or "").casefold()
        for row in rows
        if hasattr(row, "annotation") and row.annotation.owner_correction
    }
    if corrections:
        users_by_email = {
            user.email.casefold(): user.pk
            for user in User.objects.filter(Q(email__in=corrections) | Q(username__in=corrections))
        }
    for row in rows:
        existing = wanted.get(row.dataverse_id)
        if existing is not None:
            existing.inventory_id = row.pk  # onboarded, and discovery has seen it since
            continue
        team = units.get((row.business_unit_name or "").casefold()) or teams.get((row.team_name or "").casefold())
        correction = row.annotation.owner_correction.casefold() if hasattr(row, "annotation") else ""
        owners = {users_by_email[correction]} if correction in users_by_email else set()
        if not owners and team is not None:
            owners = {user.pk for user in team.business_owners.all()}
        wanted[row.dataverse_id] = _Wanted(
            dataverse_id=row.dataverse_id,
            name=row.name,
            email_address=row.email_address,
            kind=ManagedKind.QUEUE if row.owner_type == OwnerType.QUEUE else ManagedKind.USER,
            source=ManagedSource.INVENTORY,
            owner_dataverse_id=row.owner_dataverse_id,
            inventory_id=row.pk,
            team_id=team.pk if team is not None else None,
            owner_ids=owners,
        )


def managed_mailboxes_refresh() -> dict[str, ManagedMailbox]:
    """Bring the managed set in line with onboarding and the inventory; the active ones by Dataverse id.

    Mailboxes that stop qualifying are kept (with their alerts and history) but marked inactive.
    """
    wanted = _from_requests()
    _from_inventory(wanted)
    now = timezone.now()
    with transaction.atomic():
        existing = {row.dataverse_id: row for row in ManagedMailbox.objects.select_for_update()}
        to_create, to_update = [], []
        for mailbox_id, spec in wanted.items():
            values = {
                "name": spec.name[:300],
                "email_address": spec.email_address[:320],
                "kind": spec.kind,
                "source": spec.source,
                "owner_dataverse_id": spec.owner_dataverse_id,
                "request_id": spec.request_id,
                "inventory_id": spec.inventory_id,
                "team_id": spec.team_id,
                "retention_months": spec.retention_months,
                "review_due_on": spec.review_due_on,
                "is_active": True,
            }
            row = existing.get(mailbox_id)
            if row is None:
                to_create.append(ManagedMailbox(dataverse_id=mailbox_id, added_at=now, **values))
            elif any(getattr(row, name) != value for name, value in values.items()):
                for name, value in values.items():
                    setattr(row, name, value)
                to_update.append(row)
        gone = [row for mailbox_id, row in existing.items() if mailbox_id not in wanted and row.is_active]
        for row in gone:
            row.is_active = False
        ManagedMailbox.objects.bulk_create(to_create, batch_size=1000)
        update_fields = [name if name not in ("request", "inventory", "team") else f"{name}_id" for name in _FIELDS]
        ManagedMailbox.objects.bulk_update([*to_update, *gone], update_fields, batch_size=1000)
        active = {row.dataverse_id: row for row in ManagedMailbox.objects.filter(is_active=True)}
        _sync_owners(active, wanted)
    return {str(mailbox_id): row for mailbox_id, row in active.items()}


def _sync_owners(active: dict[uuid.UUID, ManagedMailbox], wanted: dict[uuid.UUID, _Wanted]) -> None:
    through = ManagedMailbox.owners.through
    have = set(through.objects.values_list("managedmailbox_id", "user_id"))
    want = {(active[mailbox_id].pk, user_id) for mailbox_id, spec in wanted.items() for user_id in spec.owner_ids}
    stale = have - want
    if stale:
        for mailbox_pk, user_pk in stale:
            through.objects.filter(managedmailbox_id=mailbox_pk, user_id=user_pk).delete()
    through.objects.bulk_create(
        [through(managedmailbox_id=mailbox_pk, user_id=user_pk) for mailbox_pk, user_pk in want - have],
        batch_size=1000,
    )
