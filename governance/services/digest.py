"""The weekly digest: each mailbox owner gets one email listing their open alerts and threshold breaches."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.db import IntegrityError, transaction
from django.template.loader import render_to_string
from django.utils import timezone

from governance.models import OPEN_STATUSES, AlertSource, DigestDelivery, MailboxAlert
from portal.accounts.models import User
from portal.policy.services import policy_get

logger = logging.getLogger(__name__)

DIGEST_WINDOW = dt.timedelta(days=7)
ALERTS_LISTED = 50


@dataclass(frozen=True)
class DigestOutcome:
    sent: int
    skipped_nothing_to_say: int
    already_sent: int
    failed: int


def week_start(day: dt.date) -> dt.date:
    return day - dt.timedelta(days=day.weekday())


def digests_send(*, today: dt.date | None = None) -> DigestOutcome:
    """Send this week's digest to every owner with open alerts or recent breaches; once per owner per week."""
    if not policy_get().weekly_digest_enabled:
        logger.info("weekly digest is switched off in policy")
        return DigestOutcome(0, 0, 0, 0)
    today = today or timezone.localdate()
    week = week_start(today)
    since = timezone.now() - DIGEST_WINDOW
    sent = skipped = already = failed = 0
    owners = User.objects.filter(is_active=True, managed_mailboxes__is_active=True).exclude(email="").distinct()
    for owner in owners.order_by("pk"):
        if DigestDelivery.objects.filter(user=owner, week_start=week).exists():
            already += 1
            continue
        alerts = list(
            MailboxAlert.objects.filter(mailbox__owners=owner, mailbox__is_active=True, status__in=OPEN_STATUSES)
            .exclude(source=AlertSource.THRESHOLD)
            .select_related("mailbox")
            .order_by("-urgent", "-level", "mailbox__name", "-last_seen_at")[:ALERTS_LISTED]
        )
        breaches = list(
            MailboxAlert.objects.filter(
                mailbox__owners=owner, mailbox__is_active=True, source=AlertSource.THRESHOLD, last_seen_at__gte=since
            )
            .select_related("mailbox")
            .order_by("mailbox__name", "-last_seen_at")[:ALERTS_LISTED]
        )
        if not alerts and not breaches:
            skipped += 1
            continue
        try:
            with transaction.atomic():
                DigestDelivery.objects.create(
                    user=owner, week_start=week, sent_at=timezone.now(), alerts=len(alerts), breaches=len(breaches)
                )
                _send(owner, alerts, breaches, week)
        except IntegrityError:
            already += 1  # another run sent it a moment ago
        except Exception:
            failed += 1
            logger.exception("weekly digest for user %s could not be sent", owner.pk)
        else:
            sent += 1
    logger.info(
        "weekly digest: %s sent, %s with nothing to report, %s already sent, %s failed", sent, skipped, already, failed
    )
    return DigestOutcome(sent, skipped, already, failed)


def _send(owner: User, alerts: list[MailboxAlert], breaches: list[MailboxAlert], week: dt.date) -> None:
    context = {
        "owner": owner,
        "alerts": alerts,
        "breaches": breaches,
        "week": week,
        "service_name": settings.SERVICE_NAME,
        "portal_url": settings.PORTAL_BASE_URL.rstrip("/"),
    }
    subject = f"Your mailboxes this week: {len(alerts)} open alert{'s' if len(alerts) != 1 else ''}, " + (
        f"{len(breaches)} threshold breach{'es' if len(breaches) != 1 else ''}"
    )
    message = EmailMultiAlternatives(
        subject=subject,
        body=render_to_string("governance/email/digest.txt", context),
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=[owner.email],
    )
    message.attach_alternative(render_to_string("governance/email/digest.html", context), "text/html")
    message.send()
