"""Reading tracking rules across the estate: who is over-tracking, what to recommend, who may see what.

Over-tracking is a queue or shared mailbox set to "All email messages" (Dataverse's
``incomingemailfilteringmethod`` 0), and a user mailbox set to it when the policy says users count
too. The recommended rule is the policy's default for the mailbox's kind. Platform admins see every
managed mailbox and change; a mailbox's owners see theirs; nobody else sees any.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db.models import Count, OuterRef, Q, QuerySet, Subquery

from governance.models import ManagedKind, ManagedMailbox, TrackingChange, TrackingChangeStatus
from portal.accounts.models import User
from portal.accounts.roles import perm
from portal.policy.models import PolicySettings, TrackingRule

OPEN_CHANGE_STATUSES = (TrackingChangeStatus.PENDING, TrackingChangeStatus.APPROVED, TrackingChangeStatus.APPLYING)
NOT_READ = "not_read"


# --- who sees what --------------------------------------------------------------------------------


def is_platform_admin(user: Any) -> bool:
    return bool(user is not None and user.is_authenticated and user.has_perm(perm("administer_platform")))


def tracking_access_allowed(user: Any) -> bool:
    """Platform admins, and anyone who owns a managed mailbox, may use the tracking pages."""
    if user is None or not user.is_authenticated:
        return False
    return is_platform_admin(user) or ManagedMailbox.objects.filter(owners=user).exists()


def managed_mailboxes_visible_to(user: User) -> QuerySet[ManagedMailbox]:
    """Active managed mailboxes the user may see: every one for a platform admin, their own otherwise."""
    mailboxes = ManagedMailbox.objects.filter(is_active=True)
    if is_platform_admin(user):
        return mailboxes
    return mailboxes.filter(owners=user)


def tracking_changes_visible_to(user: User) -> QuerySet[TrackingChange]:
    changes = TrackingChange.objects.select_related("mailbox", "requested_by", "decided_by")
    if is_platform_admin(user):
        return changes
    return changes.filter(mailbox__owners=user)


def tracking_change_for_user(user: User, change_id: int) -> TrackingChange | None:
    """The change if the user may see it, else None (the caller answers 404)."""
    return tracking_changes_visible_to(user).filter(pk=change_id).first()


def may_request_for(user: User, mailbox: ManagedMailbox) -> bool:
    """Platform admins may request a change for any mailbox; owners for theirs."""
    if is_platform_admin(user):
        return True
    return mailbox.owners.filter(pk=user.pk).exists()


# --- the rules ------------------------------------------------------------------------------------


def recommended_rule(kind: str, policy: PolicySettings) -> int:
    """The policy's default tracking rule for a kind of mailbox."""
    if kind == ManagedKind.QUEUE:
        return policy.default_tracking_rule_queue
    if kind == ManagedKind.SHARED:
        return policy.default_tracking_rule_shared
    if kind == ManagedKind.USER:
        return policy.default_tracking_rule_user
    raise ValueError(f"unknown managed mailbox kind {kind!r}")


def over_tracking_kinds(policy: PolicySettings) -> tuple[str, ...]:
    kinds: tuple[str, ...] = (ManagedKind.QUEUE, ManagedKind.SHARED)
    if policy.flag_user_over_tracking:
        kinds = (*kinds, ManagedKind.USER)
    return kinds


def over_tracking_q(policy: PolicySettings) -> Q:
    return Q(tracking_rule=TrackingRule.ALL, kind__in=over_tracking_kinds(policy))


def is_over_tracking(mailbox: ManagedMailbox, policy: PolicySettings) -> bool:
    return (
        mailbox.is_active and mailbox.tracking_rule == TrackingRule.ALL and mailbox.kind in over_tracking_kinds(policy)
    )


# --- the estate report ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TrackingFilters:
    kind: str = ""
    over_tracking_only: bool = False

    def as_query(self) -> dict[str, str]:
        query = {}
        if self.kind:
            query["kind"] = self.kind
        if self.over_tracking_only:
            query["over_tracking"] = "on"
        return query


@dataclass(frozen=True)
class CountColumn:
    key: int | str  # a TrackingRule value, or NOT_READ
    label: str


@dataclass(frozen=True)
class KindCounts:
    kind: str
    label: str
    cells: list[tuple[CountColumn, int, bool]]  # column, count, over-tracking cell
    total: int


@dataclass(frozen=True)
class TrackingCounts:
    columns: list[CountColumn]
    rows: list[KindCounts]
    totals: list[int]
    total: int
    over_tracking: int


def count_columns() -> list[CountColumn]:
    return [CountColumn(rule.value, rule.label) for rule in TrackingRule] + [CountColumn(NOT_READ, "Not read yet")]


def tracking_rule_counts(user: User, policy: PolicySettings) -> TrackingCounts:
    """Managed mailboxes the user may see, per kind and tracking rule (one query)."""
    grouped = (
        managed_mailboxes_visible_to(user)
        .order_by()
        .values("kind", "tracking_rule")
        .annotate(mailboxes=Count("id"))
        .values_list("kind", "tracking_rule", "mailboxes")
    )
    found: dict[tuple[str, int | str], int] = {}
    for kind, rule, mailboxes in grouped:
        key = (kind, NOT_READ if rule is None else rule)
        found[key] = found.get(key, 0) + mailboxes
    columns = count_columns()
    flagged = set(over_tracking_kinds(policy))
    rows = []
    for kind in ManagedKind:
        cells = [
            (column, found.get((kind.value, column.key), 0), column.key == TrackingRule.ALL and kind in flagged)
            for column in columns
        ]
        rows.append(KindCounts(kind.value, kind.label, cells, sum(count for _, count, _ in cells)))
    totals = [sum(row.cells[index][1] for row in rows) for index in range(len(columns))]
    over = sum(count for row in rows for _, count, is_flagged in row.cells if is_flagged)
    return TrackingCounts(columns=columns, rows=rows, totals=totals, total=sum(totals), over_tracking=over)


def tracking_report_mailboxes(user: User, policy: PolicySettings, filters: TrackingFilters) -> QuerySet[ManagedMailbox]:
    """The report's list: visible mailboxes, filtered in the database, each with its open change if any."""
    mailboxes = managed_mailboxes_visible_to(user)
    if filters.kind:
        mailboxes = mailboxes.filter(kind=filters.kind)
    if filters.over_tracking_only:
        mailboxes = mailboxes.filter(over_tracking_q(policy))
    open_change = TrackingChange.objects.filter(mailbox=OuterRef("pk"), status__in=OPEN_CHANGE_STATUSES).order_by(
        "-requested_at"
    )
    return (
        mailboxes.annotate(
            open_change_id=Subquery(open_change.values("pk")[:1]),
            open_change_status=Subquery(open_change.values("status")[:1]),
            open_change_to_rule=Subquery(open_change.values("to_rule")[:1]),
        )
        .only("id", "name", "email_address", "kind", "tracking_rule", "is_active", "owner_dataverse_id")
        .order_by("name", "id")
    )


@dataclass(frozen=True)
class TrackingRow:
    mailbox: ManagedMailbox
    over_tracking: bool
    recommended: int
    recommended_label: str
    open_change_id: int | None
    open_change_label: str
    can_request: bool


_RULE_LABELS = dict(TrackingRule.choices)
_STATUS_LABELS = dict(TrackingChangeStatus.choices)


def rule_label(rule: int | None) -> str:
    return "Not read yet" if rule is None else _RULE_LABELS.get(rule, str(rule))


def tracking_rows(
    mailboxes: list[ManagedMailbox], policy: PolicySettings, *, user_may_request: bool
) -> list[TrackingRow]:
    """Rows for one page of :func:`tracking_report_mailboxes` (no further queries).

    ``user_may_request``: whether the user may request changes for the mailboxes they can see
    (platform admins for all, owners for theirs, and owners only see theirs).
    """
    rows = []
    for mailbox in mailboxes:
        recommended = recommended_rule(mailbox.kind, policy)
        flagged = is_over_tracking(mailbox, policy)
        open_id = getattr(mailbox, "open_change_id", None)
        rows.append(
            TrackingRow(
                mailbox=mailbox,
                over_tracking=flagged,
                recommended=recommended,
                recommended_label=rule_label(recommended),
                open_change_id=open_id,
                open_change_label=_STATUS_LABELS.get(getattr(mailbox, "open_change_status", None) or "", ""),
                can_request=user_may_request and flagged and open_id is None and recommended != mailbox.tracking_rule,
            )
        )
    return rows
