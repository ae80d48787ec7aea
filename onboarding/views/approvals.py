from __future__ import annotations

from django.shortcuts import render

from portal.decorators import require_permission


@require_permission("decide_approvals")
def approvals_dashboard(request):
    return render(
        request,
        "portal/section.html",
        {
            "caption": "Approver",
            "heading": "Approvals",
            "lede": "Requests waiting for your decision appear here, oldest first, with overdue ones marked.",
            "status": "Nothing is waiting for you.",
        },
    )
