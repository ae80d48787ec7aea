"""The alert review queue: errors first, grouped by mailbox; one alert with assign, acknowledge and resolve."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db.models import Q
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from governance.forms.alerts import AlertAssignForm, AlertFilterForm, AlertResolveForm
from governance.models import AlertStatus, MailboxAlert
from governance.selectors.alerts import (
    alert_queue,
    last_health_sync,
    last_successful_health_sync,
    queue_rows,
    queue_summary,
    sees_everything,
    visible_alerts,
)
from governance.services import alerts as services
from governance.services.health_sync import health_sync_request
from portal.accounts.models import User
from portal.audit.models import AuditEvent
from portal.decorators import require_permission
from portal.exceptions import PortalError
from portal.fragments import form_fragment_key

PAGE_SIZE = 50


@require_GET
@login_required
def alert_list(request: HttpRequest) -> HttpResponse:
    form = AlertFilterForm(request.GET or None)
    status, level, mine = "open", None, False
    if form.is_valid():
        status = form.cleaned_data["status"] or "open"
        level = int(form.cleaned_data["level"]) if form.cleaned_data["level"] else None
        mine = form.cleaned_data["mine"]
    page = Paginator(alert_queue(request.user, status=status, level=level, mine=mine), PAGE_SIZE).get_page(
        request.GET.get("page")
    )
    query = request.GET.copy()
    query.pop("page", None)
    return render(
        request,
        "governance/alerts/list.html",
        {
            "form": form,
            "form_fragment_key": form_fragment_key(form),
            "page": page,
            "rows": queue_rows(page.object_list),
            "summary": queue_summary(request.user),
            "query": query.urlencode(),
            "sees_everything": sees_everything(request.user),
            "last_sync": last_health_sync(),
            "last_success": last_successful_health_sync(),
        },
    )


def _get_alert_for_user(request: HttpRequest, alert_id: int) -> MailboxAlert:
    alert = visible_alerts(request.user).filter(pk=alert_id).first()
    if alert is None:
        raise Http404("No such alert")
    return alert


def _people(alert: MailboxAlert) -> list[tuple[int, str]]:
    """Who may be assigned: platform admins and the mailbox's owners."""
    admins = Q(groups__permissions__codename="administer_platform") | Q(
        user_permissions__codename="administer_platform"
    )
    owners = Q(managed_mailboxes=alert.mailbox) if alert.mailbox_id else Q(pk__in=[])
    people = User.objects.filter(is_active=True).filter(admins | owners).distinct().order_by("first_name", "username")
    return [(user.pk, user.get_full_name() or user.username) for user in people[:500]]


@require_http_methods(["GET", "POST"])
@login_required
def alert_detail(request: HttpRequest, alert_id: int) -> HttpResponse:
    alert = _get_alert_for_user(request, alert_id)
    assign_form = AlertAssignForm(initial={"assignee": alert.assigned_to_id or ""}, people=_people(alert))
    resolve_form = AlertResolveForm()
    if request.method == "POST":
        action = request.POST.get("action")
        try:
            if action == "assign":
                assign_form = AlertAssignForm(request.POST, people=_people(alert))
                if assign_form.is_valid():
                    assignee_id = assign_form.cleaned_data["assignee"]
                    assignee = User.objects.get(pk=assignee_id) if assignee_id else None
                    services.alert_assign(actor=request.user, alert_id=alert.pk, assignee=assignee)
                    messages.success(request, "Alert assigned." if assignee else "Alert unassigned.")
                    return redirect("governance:alert", alert_id=alert.pk)
            elif action == "acknowledge":
                services.alert_acknowledge(actor=request.user, alert_id=alert.pk)
                messages.success(request, "Alert acknowledged: others can see someone is on it.")
                return redirect("governance:alert", alert_id=alert.pk)
            elif action == "resolve":
                resolve_form = AlertResolveForm(request.POST)
                if resolve_form.is_valid():
                    services.alert_resolve(
                        actor=request.user, alert_id=alert.pk, note=resolve_form.cleaned_data["note"]
                    )
                    messages.success(request, "Alert resolved. It reopens by itself if the problem comes back.")
                    return redirect("governance:alert", alert_id=alert.pk)
            else:
                messages.error(request, "Choose what to do with the alert.")
        except PortalError as error:
            target = resolve_form if action == "resolve" else assign_form
            target.add_error(error.field if error.field in target.fields else None, error.message)
        alert.refresh_from_db()
    history = AuditEvent.objects.filter(object_type="alert", object_id=str(alert.pk)).order_by("-id")[:50]
    return render(
        request,
        "governance/alerts/detail.html",
        {
            "alert": alert,
            "assign_form": assign_form,
            "resolve_form": resolve_form,
            "history": history,
            "can_handle": services.user_may_handle(request.user, alert),
            "is_resolved": alert.status == AlertStatus.RESOLVED,
        },
    )


@require_POST
@require_permission("administer_platform")
def health_sync_now(request: HttpRequest) -> HttpResponse:
    try:
        sync = health_sync_request(actor=request.user)
    except PortalError as error:
        messages.error(request, error.message)
    else:
        messages.success(
            request, f"Health sync {sync.pk} is {sync.get_status_display().lower()}. Refresh this page in a minute."
        )
    return redirect("governance:alerts")
