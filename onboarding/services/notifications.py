"""Email notifications about a request: recorded with the request, sent by a job after commit."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.db import transaction
from django.template.loader import render_to_string
from django.utils import timezone

from onboarding.models import MailboxRequest, Notification, NotificationEvent, NotificationStatus
from portal.queue import enqueue_on_commit

logger = logging.getLogger(__name__)

SUBJECTS = {
    NotificationEvent.SUBMITTED: "Mailbox request {reference} submitted",
    NotificationEvent.DECISION_NEEDED: "Mailbox request {reference} needs your decision",
    NotificationEvent.APPROVED: "Mailbox request {reference}: {stage} approved",
    NotificationEvent.REJECTED: "Mailbox request {reference} was rejected",
    NotificationEvent.RETURNED: "Mailbox request {reference} needs more information",
    NotificationEvent.ESCALATED: "Mailbox request {reference}: decision overdue",
    NotificationEvent.WITHDRAWN: "Mailbox request {reference} was withdrawn",
    NotificationEvent.ACTIVE: "Your mailbox {address} is ready",
    NotificationEvent.NEEDS_ATTENTION: "Mailbox request {reference}: set-up needs attention",
}


def _address_of(recipient: Any) -> str:
    return recipient if isinstance(recipient, str) else (recipient.email or "")


def notify(
    *,
    request: MailboxRequest,
    event: str,
    recipients: Iterable[Any],
    context: dict[str, Any] | None = None,
) -> Notification | None:
    """Record a notification to ``recipients`` (users or addresses) and send it after commit.

    Call inside the transaction that made the change it announces. People without an
    email address are left out; with nobody left, nothing is recorded.
    """
    addresses = sorted({address.lower() for address in map(_address_of, recipients) if address})
    if not addresses:
        return None
    context = {key: value for key, value in (context or {}).items() if isinstance(value, str | int | float | bool)}
    subject = SUBJECTS[NotificationEvent(event)].format(
        reference=request.reference, address=request.address, stage=context.get("stage", "a stage")
    )
    notification = Notification.objects.create(
        request=request,
        event=event,
        recipients=addresses,
        subject=subject,
        created_at=timezone.now(),
        context=context,
    )
    from onboarding.jobs import notification_send_job

    def _not_queued(error: Exception) -> None:
        # The change it announces has committed; a queue outage must not turn that into an error
        # page. The notification row says it was never sent and why.
        Notification.objects.filter(pk=notification.pk, status=NotificationStatus.QUEUED).update(
            status=NotificationStatus.FAILED, error=f"Could not be queued: {type(error).__name__}: {error}"[:1000]
        )

    enqueue_on_commit(notification_send_job, notification.pk, job_timeout=120, on_enqueue_error=_not_queued)
    return notification


def notification_send(*, notification_id: int) -> Notification | None:
    """Send one recorded notification as an HTML and text email; a second run sends nothing."""
    claimed = Notification.objects.filter(pk=notification_id, status=NotificationStatus.QUEUED).update(
        status=NotificationStatus.SENT, sent_at=timezone.now()
    )
    if not claimed:
        return None
    notification = Notification.objects.select_related("request").get(pk=notification_id)
    request = notification.request
    template_context = {
        "notification": notification,
        "request": request,
        "event": notification.event,
        "context": notification.context,
        "service_name": settings.SERVICE_NAME,
        "portal_url": settings.PORTAL_BASE_URL.rstrip("/"),
    }
    try:
        text = render_to_string("onboarding/email/notification.txt", template_context)
        html = render_to_string("onboarding/email/notification.html", template_context)
        message = EmailMultiAlternatives(
            subject=notification.subject,
            body=text,
            from_email=settings.DEFAULT_FROM_EMAIL,
            to=notification.recipients,
        )
        message.attach_alternative(html, "text/html")
        message.send()
    except Exception as error:
        with transaction.atomic():
            Notification.objects.filter(pk=notification_id).update(
                status=NotificationStatus.FAILED, error=f"{type(error).__name__}: {error}"[:1000]
            )
        logger.exception("notification %s could not be sent", notification_id)
        raise
    return notification
