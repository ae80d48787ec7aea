"""Email volume and attachment sizes per managed mailbox per day, and the thresholds that raise alerts."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from django.db.models import Count, Max, Q, Sum
from django.utils import timezone

from governance.models import AlertLevel, AlertSource, EmailAttachment, MailboxEmail, ManagedMailbox
from governance.services.alerts import alert_observe
from migration.models import OrganizationSnapshot
from portal.policy.services import policy_get

# Dataverse's default ``maxuploadfilesize`` when the organisation's own has not been read yet.
DEFAULT_MAX_UPLOAD_BYTES = 5 * 1024 * 1024


@dataclass(frozen=True)
class DayFigures:
    day: dt.date
    incoming: int
    outgoing: int
    attachments: int
    attachment_bytes: int
    largest_attachment: int

    @property
    def total(self) -> int:
        return self.incoming + self.outgoing


def daily_figures(*, mailbox_ids: Iterable[int], start: dt.date, end: dt.date) -> list[DayFigures]:
    """One entry per day from ``start`` to ``end`` inclusive, zeros where nothing happened (two queries)."""
    ids = list(mailbox_ids)
    emails = (
        MailboxEmail.objects.filter(mailbox_id__in=ids, day__range=(start, end))
        .values("day")
        .annotate(incoming=Count("pk", filter=Q(outgoing=False)), outgoing=Count("pk", filter=Q(outgoing=True)))
    )
    attachments = (
        EmailAttachment.objects.filter(email__mailbox_id__in=ids, email__day__range=(start, end))
        .values("email__day")
        .annotate(count=Count("pk"), total=Sum("size_bytes"), largest=Max("size_bytes"))
    )
    by_day = {row["day"]: row for row in emails}
    sizes = {row["email__day"]: row for row in attachments}
    figures = []
    day = start
    while day <= end:
        counts, size = by_day.get(day, {}), sizes.get(day, {})
        figures.append(
            DayFigures(
                day=day,
                incoming=counts.get("incoming", 0),
                outgoing=counts.get("outgoing", 0),
                attachments=size.get("count", 0),
                attachment_bytes=size.get("total") or 0,
                largest_attachment=size.get("largest") or 0,
            )
        )
        day += dt.timedelta(days=1)
    return figures


def max_upload_bytes() -> int:
    snapshot = OrganizationSnapshot.objects.filter(pk=1).only("max_upload_file_size").first()
    return (snapshot.max_upload_file_size if snapshot else None) or DEFAULT_MAX_UPLOAD_BYTES


def _megabytes(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MB"


def thresholds_check(*, pairs: Iterable[tuple[int, dt.date]]) -> int:
    """Raise a portal alert for each threshold a mailbox broke on a day; the number of alerts touched."""
    policy = policy_get()
    limit = max_upload_bytes()
    near_limit = limit * policy.attachment_near_limit_percent // 100
    large = policy.attachment_size_threshold_kb * 1024
    by_mailbox: dict[int, set[dt.date]] = {}
    for mailbox_id, day in pairs:
        by_mailbox.setdefault(mailbox_id, set()).add(day)
    mailboxes = ManagedMailbox.objects.in_bulk(list(by_mailbox))
    touched = 0
    now = timezone.now()
    for mailbox_id, days in by_mailbox.items():
        mailbox = mailboxes.get(mailbox_id)
        if mailbox is None:
            continue
        for figures in daily_figures(mailbox_ids=[mailbox_id], start=min(days), end=max(days)):
            if figures.day not in days:
                continue
            breaches = []
            if figures.total > policy.daily_volume_threshold:
                breaches.append(
                    (
                        "daily_volume",
                        AlertLevel.WARNING,
                        f"{figures.total} emails on {figures.day:%-d %B %Y} ({figures.incoming} in, "
                        f"{figures.outgoing} out), above the policy's {policy.daily_volume_threshold} a day.",
                    )
                )
            if figures.largest_attachment >= near_limit:
                breaches.append(
                    (
                        "attachment_near_limit",
                        AlertLevel.ERROR,
                        f"An attachment of {_megabytes(figures.largest_attachment)} on {figures.day:%-d %B %Y} is at "
                        f"least {policy.attachment_near_limit_percent}% of Dynamics 365's {_megabytes(limit)} "
                        "upload limit; bigger ones are not tracked.",
                    )
                )
            elif figures.largest_attachment >= large:
                breaches.append(
                    (
                        "large_attachment",
                        AlertLevel.WARNING,
                        f"An attachment of {_megabytes(figures.largest_attachment)} on {figures.day:%-d %B %Y}, "
                        f"above the policy's {policy.attachment_size_threshold_kb:,} KB.",
                    )
                )
            for code, level, text in breaches:
                moment = dt.datetime.combine(figures.day, dt.time(12), tzinfo=dt.UTC)
                alert_observe(
                    key=f"threshold:{mailbox.dataverse_id}:{code}:{figures.day.isoformat()}",
                    source=AlertSource.THRESHOLD,
                    mailbox=mailbox,
                    level=level,
                    code=code,
                    text=text,
                    first_seen=min(moment, now),
                    last_seen=min(moment, now),
                )
                touched += 1
    return touched
