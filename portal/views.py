from __future__ import annotations

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import HttpResponseServerError
from django.shortcuts import render
from django.template import loader
from django.views.decorators.http import require_safe

from portal.decorators import require_permission
from portal.navigation import navigation_for

ROLE_SUMMARIES = {
    "Requests": "Ask for a new shared mailbox or a Dynamics 365 queue mailbox, and follow it to a working mailbox.",
    "Approvals": "Decide the mailbox requests that wait for you, oldest first.",
    "Platform": "Run provisioning, look after server-side synchronisation and set the portal's policy.",
    "Migration": "Find mailboxes still on the Email Router or Outlook client and move them in waves.",
    "Audit": "See who did what and when, export the trail and check that nothing was altered.",
}


@require_safe
@login_required
def home(request):
    sections = [item for item in navigation_for(request) if item.label in ROLE_SUMMARIES]
    cards = [{"label": item.label, "url": item.url, "summary": ROLE_SUMMARIES[item.label]} for item in sections]
    return render(
        request,
        "portal/home.html",
        {"cards": cards, "roles": request.user.roles()},
    )


@require_safe
@require_permission("administer_platform")
def platform(request):
    from onboarding.selectors.provisioning import provisioning_run_counts

    return render(
        request,
        "portal/platform.html",
        {"runs": provisioning_run_counts(), "m365": settings.M365, "entra": settings.ENTRA_SIGNIN},
    )


@require_safe
def accessibility(request):
    return render(request, "portal/accessibility.html")


@require_safe
def cookies(request):
    return render(request, "portal/cookies.html")


def csrf_failure(request, reason: str = ""):
    return render(request, "errors/csrf.html", status=403)


def server_error(request):
    """The 500 page, rendered without context processors (the database may be what failed)."""
    template = loader.get_template("500.html")
    reference = getattr(request, "correlation_id", "")
    return HttpResponseServerError(template.render({"reference": reference}))
