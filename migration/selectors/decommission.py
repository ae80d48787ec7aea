"""Reading decommission plans: which mailboxes each legacy source still serves, checklist progress,
and the organisation's "Process Email Using" setting.

A served mailbox counts as migrated when the inventory already sees it as compliant or its latest
wave entry finished migrated (the inventory catches up at the next discovery). An Email Router
serves the live inventory mailboxes its imported configuration lists; an Outlook-client population
serves its business unit's live mailboxes still classified as using the Outlook client.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

from django.db.models import CharField, Exists, F, Func, IntegerField, OuterRef, Q, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from migration.models import (
    Classification,
    DecommissionItem,
    DecommissionPlan,
    InventoryMailbox,
    LegacyMailboxLink,
    LegacySource,
    LegacySourceKind,
    OrganizationSnapshot,
    Readiness,
    WaveMailbox,
    WaveMailboxState,
)
from portal.audit.models import AuditEvent

# The checklist item worked out from the mailboxes, never ticked by hand.
ALL_MIGRATED = "all_migrated"
ROUTER_STOPPED = "router_stopped"
SERVER_RETIRED = "server_retired"
OUTLOOK_REMOVED = "outlook_removed"

CHECKLISTS: dict[str, tuple[tuple[str, str], ...]] = {
    LegacySourceKind.EMAIL_ROUTER: (
        (ALL_MIGRATED, "All its mailboxes migrated"),
        (ROUTER_STOPPED, "Router service stopped"),
        (SERVER_RETIRED, "Server retired or configuration archived"),
    ),
    LegacySourceKind.OUTLOOK_CLIENT: (
        (ALL_MIGRATED, "All its mailboxes migrated"),
        (OUTLOOK_REMOVED, "Outlook client removed or its synchronisation disabled for the organisation"),
    ),
}

# How many not-yet-migrated mailboxes a page or a refusal names before saying "and N more".
REMAINING_SHOWN = 20

ORG_CHECK_ACTION = "organization.email_channel_checked"
CHANNEL_LABELS = {0: "Server-Side Synchronization", 1: "Microsoft Dynamics 365 Email Router"}


def _count(queryset: QuerySet) -> Coalesce:
    """``SELECT COUNT(id) …`` as a subquery; Func avoids the GROUP BY an aggregate would add."""
    return Coalesce(
        Subquery(queryset.order_by().values(n=Func(F("id"), function="COUNT")), output_field=IntegerField()),
        0,
    )


def _latest_wave_state(mailbox_ref: str = "pk") -> Coalesce:
    """The state of the mailbox's newest wave entry, or "" (never NULL, so negated filters keep it)."""
    latest = WaveMailbox.objects.filter(mailbox_id=OuterRef(mailbox_ref)).order_by("-id").values("state")[:1]
    return Coalesce(Subquery(latest), Value(""), output_field=CharField())


def _migrated() -> Q:
    return Q(readiness=Readiness.COMPLIANT) | Q(latest_wave_state=WaveMailboxState.MIGRATED)


def _router_served(source_ref) -> QuerySet[InventoryMailbox]:
    return InventoryMailbox.objects.filter(
        Exists(LegacyMailboxLink.objects.filter(source_id=source_ref, mailbox_id=OuterRef("pk"))),
        removed_at__isnull=True,
    )


def _outlook_served(business_unit_ref) -> QuerySet[InventoryMailbox]:
    return InventoryMailbox.objects.filter(
        business_unit_id=business_unit_ref, classification=Classification.OUTLOOK_CLIENT, removed_at__isnull=True
    )


def served_mailboxes(source: LegacySource, *, business_unit_id=None) -> QuerySet[InventoryMailbox]:
    """The live inventory mailboxes the source serves, each annotated with ``latest_wave_state``."""
    if source.kind == LegacySourceKind.OUTLOOK_CLIENT:
        mailboxes = _outlook_served(business_unit_id) if business_unit_id else InventoryMailbox.objects.none()
    else:
        mailboxes = _router_served(source.pk)
    return mailboxes.annotate(latest_wave_state=_latest_wave_state())


def remaining_mailboxes(source: LegacySource, *, business_unit_id=None) -> QuerySet[InventoryMailbox]:
    """Served mailboxes not migrated yet, by name."""
    return (
        served_mailboxes(source, business_unit_id=business_unit_id)
        .exclude(_migrated())
        .order_by("name", "email_address", "id")
    )


def _with_counts(sources: QuerySet[LegacySource]) -> QuerySet[LegacySource]:
    """Each source annotated with served and remaining counts for both kinds, in the same query."""
    # The links' Exists sits inside the mailbox subquery, so the source is two levels out.
    router = _router_served(OuterRef(OuterRef("pk"))).annotate(latest_wave_state=_latest_wave_state())
    outlook = _outlook_served(OuterRef("plan_business_unit_id")).annotate(latest_wave_state=_latest_wave_state())
    return sources.annotate(plan_business_unit_id=F("decommission__business_unit_id")).annotate(
        router_served=_count(router),
        router_remaining=_count(router.exclude(_migrated())),
        outlook_served=_count(outlook),
        outlook_remaining=_count(outlook.exclude(_migrated())),
    )


def is_overdue(plan: DecommissionPlan | None, *, today: dt.date | None = None) -> bool:
    if plan is None or plan.due_date is None or plan.signed_off_at is not None:
        return False
    return plan.due_date < (today or timezone.localdate())


@dataclass(frozen=True)
class SourceProgress:
    source: LegacySource
    plan: DecommissionPlan | None
    served: int
    remaining: int
    items_done: int
    items_total: int
    overdue: bool

    @property
    def migrated(self) -> int:
        return self.served - self.remaining

    @property
    def percent(self) -> int:
        return round(100 * self.migrated / self.served) if self.served else 100


def decommission_overview() -> list[SourceProgress]:
    """Every legacy source with its plan, mailboxes remaining and checklist progress: two queries."""
    sources = list(
        _with_counts(LegacySource.objects.select_related("decommission", "decommission__owner")).order_by(
            "kind", "name", "id"
        )
    )
    plan_ids = [source.decommission.pk for source in sources if _plan_of(source) is not None]
    manual_done: dict[int, tuple[int, int]] = {}
    for item in (
        DecommissionItem.objects.filter(plan_id__in=plan_ids).exclude(code=ALL_MIGRATED).values("plan_id", "done")
    ):
        done, total = manual_done.get(item["plan_id"], (0, 0))
        manual_done[item["plan_id"]] = (done + int(item["done"]), total + 1)
    today = timezone.localdate()
    rows = []
    for source in sources:
        plan = _plan_of(source)
        outlook = source.kind == LegacySourceKind.OUTLOOK_CLIENT
        served = source.outlook_served if outlook else source.router_served
        remaining = source.outlook_remaining if outlook else source.router_remaining
        if plan is not None:
            done, total = manual_done.get(plan.pk, (0, 0))
            items_done, items_total = done + int(remaining == 0), total + 1
        else:
            items_done, items_total = 0, len(CHECKLISTS.get(source.kind, ()))
        rows.append(
            SourceProgress(
                source=source,
                plan=plan,
                served=served,
                remaining=remaining,
                items_done=items_done,
                items_total=items_total,
                overdue=is_overdue(plan, today=today),
            )
        )
    return rows


def _plan_of(source: LegacySource) -> DecommissionPlan | None:
    try:
        return source.decommission
    except DecommissionPlan.DoesNotExist:
        return None


@dataclass(frozen=True)
class ChecklistItem:
    item: DecommissionItem
    computed: bool
    done: bool


@dataclass(frozen=True)
class PlanDetail:
    source: LegacySource
    plan: DecommissionPlan | None
    served: int
    remaining: list[InventoryMailbox]
    remaining_count: int
    items: list[ChecklistItem]
    overdue: bool

    @property
    def can_sign_off(self) -> bool:
        return self.plan is not None and self.plan.signed_off_at is None and all(entry.done for entry in self.items)


def decommission_plan_detail(source_id: int) -> PlanDetail | None:
    """One source's plan with its checklist, evidence and the mailboxes still to migrate."""
    source = (
        LegacySource.objects.select_related("decommission", "decommission__owner", "decommission__signed_off_by")
        .filter(pk=source_id)
        .first()
    )
    if source is None:
        return None
    plan = _plan_of(source)
    business_unit_id = plan.business_unit_id if plan else None
    served = served_mailboxes(source, business_unit_id=business_unit_id).count()
    remaining_rows = remaining_mailboxes(source, business_unit_id=business_unit_id)
    remaining = list(
        remaining_rows.only("id", "name", "email_address", "classification", "readiness")[: REMAINING_SHOWN + 1]
    )
    remaining_count = len(remaining) if len(remaining) <= REMAINING_SHOWN else remaining_rows.count()
    items: list[ChecklistItem] = []
    if plan is not None:
        for item in (
            DecommissionItem.objects.filter(plan=plan)
            .select_related("done_by")
            .prefetch_related("evidence")
            .order_by("id")
        ):
            computed = item.code == ALL_MIGRATED
            items.append(
                ChecklistItem(item=item, computed=computed, done=remaining_count == 0 if computed else item.done)
            )
    return PlanDetail(
        source=source,
        plan=plan,
        served=served,
        remaining=remaining[:REMAINING_SHOWN],
        remaining_count=remaining_count,
        items=items,
        overdue=is_overdue(plan),
    )


# --- "Process Email Using" ------------------------------------------------------------------------


@dataclass(frozen=True)
class EmailChannelStatus:
    router_mailboxes: int  # live inventory mailboxes on the Email Router and not migrated since
    channel: int | None  # last known emailconnectionchannel
    known_at: dt.datetime | None
    source: str  # "discovery", "check" or "" when never read

    @property
    def can_switch(self) -> bool:
        return self.router_mailboxes == 0

    @property
    def is_sss(self) -> bool:
        return self.channel == 0

    @property
    def channel_label(self) -> str:
        if self.channel is None:
            return "Not known yet"
        return f"{CHANNEL_LABELS.get(self.channel, 'Unknown value')} ({self.channel})"


def email_channel_status() -> EmailChannelStatus:
    """The newer of discovery's snapshot and the latest live check; three queries."""
    # A mailbox migrated since the last discovery still carries its old classification.
    router_mailboxes = (
        InventoryMailbox.objects.filter(classification=Classification.EMAIL_ROUTER, removed_at__isnull=True)
        .annotate(latest_wave_state=_latest_wave_state())
        .exclude(latest_wave_state=WaveMailboxState.MIGRATED)
        .count()
    )
    snapshot = OrganizationSnapshot.objects.filter(pk=1).first()
    channel, known_at, source = None, None, ""
    if snapshot is not None and snapshot.taken_at is not None:
        channel, known_at, source = snapshot.email_connection_channel, snapshot.taken_at, "discovery"
    check = (
        AuditEvent.objects.filter(action=ORG_CHECK_ACTION, outcome="success")
        .order_by("-seq")
        .only("created_at", "after_json")
        .first()
    )
    if check is not None and (known_at is None or check.created_at > known_at):
        try:
            after = json.loads(check.after_json) or {}
        except ValueError:
            after = {}
        value = after.get("email_connection_channel") if isinstance(after, dict) else None
        if isinstance(value, int) or value is None:
            channel, known_at, source = value, check.created_at, "check"
    return EmailChannelStatus(router_mailboxes=router_mailboxes, channel=channel, known_at=known_at, source=source)
