from __future__ import annotations

from django.shortcuts import render

from portal.decorators import require_permission


@require_permission("submit_mailbox_requests")
def requests_dashboard(request):
    return render(
        request,
        "portal/section.html",
        {
            "caption": "Requester",
            "heading": "Mailbox requests",
            "lede": "Ask for a new shared mailbox or a Dynamics 365 queue mailbox and follow it until it works.",
            "status": "New requests open here once mailbox onboarding is switched on. "
            "Until then, ask your Dynamics 365 platform team for new team mailboxes.",
        },
    )
