"""Which requests a person may see: their own, their team's, what they may decide or decided, or all for admins."""

from __future__ import annotations

from django.db.models import Q, QuerySet

from onboarding.models import Decision, MailboxRequest
from portal.accounts.models import User
from portal.accounts.roles import perm

from .approvals import stages_awaiting


def requests_visible_to(user: User) -> QuerySet[MailboxRequest]:
    if not user.is_authenticated or not user.is_active:
        return MailboxRequest.objects.none()
    if user.has_perm(perm("administer_platform")):
        return MailboxRequest.objects.all()
    visible = Q(requester=user)
    if user.has_perm(perm("submit_mailbox_requests")):
        visible |= Q(team__members=user) | Q(team__business_owners=user)
    if user.has_perm(perm("decide_approvals")):
        decided = Decision.objects.filter(Q(decided_by=user) | Q(on_behalf_of=user)).values("request_id")
        awaiting = stages_awaiting(user).values("request_id")
        visible |= Q(pk__in=decided) | Q(pk__in=awaiting)
    return MailboxRequest.objects.filter(pk__in=MailboxRequest.objects.filter(visible).values("pk"))
