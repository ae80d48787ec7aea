from __future__ import annotations

from django.shortcuts import render

from portal.decorators import require_permission


@require_permission("lead_migration")
def dashboard(request):
    return render(
        request,
        "portal/section.html",
        {
            "caption": "Migration lead",
            "heading": "Migration",
            "lede": "Find every mailbox still on the Email Router or the Outlook client, "
            "move them to server-side synchronisation in waves, and retire the legacy pieces.",
            "status": "The inventory fills once the portal is connected to Dynamics 365.",
        },
    )
