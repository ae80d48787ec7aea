"""Tracking-rule pages: the estate report, change requests, and one change with its decision.

Platform admins see every managed mailbox and change; owners of managed mailboxes see theirs;
everyone else gets the 403 page. Views parse input, call one service, and render or redirect.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse, QueryDict
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import urlencode
from django.views.decorators.http import require_GET, require_POST

from governance.forms.tracking import TrackingDecisionForm, TrackingFilterForm, TrackingRequestForm
from governance.models import TrackingChange, TrackingChangeStatus
from governance.selectors import tracking as selectors
from governance.selectors.alerts import visible_mailboxes
from governance.services import tracking as services
from portal.exceptions import PortalError
from portal.policy.services import policy_get

PAGE_SIZE = 50

STATUS_TAGS = {
    TrackingChangeStatus.PENDING: "govuk-tag--yellow",
    TrackingChangeStatus.APPROVED: "govuk-tag--turquoise",
    TrackingChangeStatus.APPLYING: "govuk-tag--blue",
    TrackingChangeStatus.APPLIED: "govuk-tag--green",
    TrackingChangeStatus.REJECTED: "govuk-tag--grey",
    TrackingChangeStatus.FAILED: "govuk-tag--red",
}


def tracking_access_required(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Signed-out people go to sign-in; people who are neither platform admins nor mailbox owners get 403."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not selectors.tracking_access_allowed(request.user):
            raise PermissionDenied
        return view(request, *args, **kwargs)

    return login_required(wrapped)


def _get_change_for_user(request: HttpRequest, change_id: int) -> TrackingChange:
    change = selectors.tracking_change_for_user(request.user, change_id)
    if change is None:
        raise Http404("No such tracking change")
    return change


# --- the report ------------------------------------------------------------------------------------


def _report_page(
    request: HttpRequest, *, query: Any, errors: list[str] | None = None, status: int = 200
) -> HttpResponse:
    policy = policy_get()
    form = TrackingFilterForm(query or None)
    filters = form.filters()
    mailboxes = selectors.tracking_report_mailboxes(request.user, policy, filters)
    page = Paginator(mailboxes, PAGE_SIZE).get_page(query.get("page"))
    # Whoever sees a row may request for it: admins see every mailbox, owners only theirs.
    rows = selectors.tracking_rows(list(page.object_list), policy, user_may_request=True)
    keep = urlencode(filters.as_query())
    back = urlencode({**filters.as_query(), **({"page": page.number} if page.number > 1 else {})})
    return render(
        request,
        "governance/tracking/report.html",
        {
            "form": form,
            "counts": selectors.tracking_rule_counts(request.user, policy),
            "page": page,
            "rows": rows,
            "keep": keep,
            "back": back,
            "errors": errors or [],
            "filtered": bool(keep),
            "flag_users": policy.flag_user_over_tracking,
            "is_admin": selectors.is_platform_admin(request.user),
        },
        status=status,
    )


@require_GET
@tracking_access_required
def tracking_report(request: HttpRequest) -> HttpResponse:
    return _report_page(request, query=request.GET)


@require_POST
@tracking_access_required
def tracking_request(request: HttpRequest, mailbox_id: int) -> HttpResponse:
    if not visible_mailboxes(request.user).filter(pk=mailbox_id).exists():
        # The same answer for a mailbox that is not there and one that is not theirs to see.
        raise Http404("No such mailbox")
    form = TrackingRequestForm(request.POST)
    back = form.back_query()
    try:
        change = services.tracking_change_request(actor=request.user, mailbox_id=mailbox_id)
    except PortalError as error:
        return _report_page(request, query=QueryDict(back), errors=[error.message], status=400)
    messages.success(
        request,
        f"Change {change.pk} requested: {change.mailbox.name or change.mailbox.email_address} to "
        f"“{change.get_to_rule_display()}”. Another platform admin must approve it.",
    )
    return redirect(reverse("governance:tracking_change", args=[change.pk]))


# --- change requests -------------------------------------------------------------------------------


@require_GET
@tracking_access_required
def tracking_changes(request: HttpRequest) -> HttpResponse:
    changes = selectors.tracking_changes_visible_to(request.user).order_by("-requested_at", "-id")
    page = Paginator(changes, PAGE_SIZE).get_page(request.GET.get("page"))
    rows = [{"change": change, "tag": STATUS_TAGS.get(change.status, "govuk-tag--grey")} for change in page]
    return render(request, "governance/tracking/changes.html", {"page": page, "rows": rows})


def _change_page(
    request: HttpRequest,
    change: TrackingChange,
    *,
    decision_form: TrackingDecisionForm | None = None,
    errors: list[str] | None = None,
    status: int = 200,
) -> HttpResponse:
    is_admin = selectors.is_platform_admin(request.user)
    own = change.requested_by_id == request.user.pk
    can_decide = is_admin and not own and change.status == TrackingChangeStatus.PENDING
    if can_decide and decision_form is None:
        decision_form = TrackingDecisionForm()
    if decision_form is not None:
        decision_form.helper.form_action = reverse("governance:tracking_change_decide", args=[change.pk])
    return render(
        request,
        "governance/tracking/change.html",
        {
            "change": change,
            "mailbox": change.mailbox,
            "tag": STATUS_TAGS.get(change.status, "govuk-tag--grey"),
            "decision_form": decision_form if can_decide else None,
            "own_pending": is_admin and own and change.status == TrackingChangeStatus.PENDING,
            "can_retry": is_admin and change.status == TrackingChangeStatus.FAILED,
            "errors": errors or [],
        },
        status=status,
    )


@require_GET
@tracking_access_required
def tracking_change(request: HttpRequest, change_id: int) -> HttpResponse:
    return _change_page(request, _get_change_for_user(request, change_id))


@require_POST
@tracking_access_required
def tracking_change_decide(request: HttpRequest, change_id: int) -> HttpResponse:
    change = _get_change_for_user(request, change_id)
    form = TrackingDecisionForm(request.POST)
    if not form.is_valid():
        return _change_page(request, change, decision_form=form, status=400)
    try:
        services.tracking_change_decide(
            actor=request.user, change_id=change.pk, approve=form.approve, reason=form.cleaned_data["reason"]
        )
    except PortalError as error:
        if error.field in form.fields:
            form.add_error(error.field, error.message)
            return _change_page(request, change, decision_form=form, status=400)
        return _change_page(request, _get_change_for_user(request, change_id), errors=[error.message], status=400)
    if form.approve:
        messages.success(request, f"Change {change.pk} is approved. A background job is applying it in Dynamics 365.")
    else:
        messages.success(request, f"Change {change.pk} is rejected.")
    return redirect(reverse("governance:tracking_change", args=[change.pk]))


@require_POST
@tracking_access_required
def tracking_change_retry(request: HttpRequest, change_id: int) -> HttpResponse:
    change = _get_change_for_user(request, change_id)
    try:
        services.tracking_change_retry(actor=request.user, change_id=change.pk)
    except PortalError as error:
        return _change_page(request, change, errors=[error.message], status=400)
    messages.success(request, f"Change {change.pk} will be applied again.")
    return redirect(reverse("governance:tracking_change", args=[change.pk]))
