"""Managed mailboxes: the list, one mailbox's health with its volume and attachment charts, a team's
charts, and the retention review list."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db.models import Count, OuterRef, Q, Subquery
from django.db.models.functions import Coalesce
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from governance.models import OPEN_STATUSES, MailboxAlert, ManagedKind, ManagedMailbox
from governance.selectors.alerts import visible_mailboxes, visible_teams
from governance.selectors.volume import volume_report

PAGE_SIZE = 50
STATUS_LABELS = {0: "Not run", 1: "Success", 2: "Failure", None: "Not read yet"}


def _open_alert_count(**conditions) -> Coalesce:
    alerts = MailboxAlert.objects.filter(mailbox=OuterRef("pk"), status__in=OPEN_STATUSES, **conditions)
    return Coalesce(Subquery(alerts.order_by().values("mailbox").annotate(n=Count("pk")).values("n")), 0)


def _with_open_alerts(mailboxes):
    """Each mailbox's open alerts and errors, counted per row shown (from the alerts' mailbox index)
    rather than by grouping every managed mailbox before the page is cut."""
    return mailboxes.annotate(open_alerts=_open_alert_count(), open_errors=_open_alert_count(level=3))


@require_GET
@login_required
def mailbox_list(request: HttpRequest) -> HttpResponse:
    mailboxes = visible_mailboxes(request.user).filter(is_active=True).select_related("team")
    kind = request.GET.get("kind", "")
    if kind in ManagedKind.values:
        mailboxes = mailboxes.filter(kind=kind)
    search = (request.GET.get("q") or "").strip()[:200]
    if search:
        mailboxes = mailboxes.filter(Q(name__icontains=search) | Q(email_address__icontains=search))
    listed = _with_open_alerts(mailboxes).order_by("-disabled_by_platform", "name", "id").values(*_LIST_FIELDS)
    page = Paginator(listed, PAGE_SIZE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    return render(
        request,
        "governance/mailboxes/list.html",
        {
            "page": page,
            # Plain values: the rows and the team links are kept as fragments (see portal_fragments).
            "rows": [{**row, "kind_label": _KIND_LABELS.get(row["kind"], row["kind"])} for row in page.object_list],
            "kinds": ManagedKind.choices,
            "kind": kind,
            "search": search,
            "query": query.urlencode(),
            "teams": list(visible_teams(request.user).order_by("name").values("id", "name")),
        },
    )


# What the list shows of each mailbox.
_LIST_FIELDS = (
    "id",
    "name",
    "email_address",
    "disabled_by_platform",
    "kind",
    "team__name",
    "open_alerts",
    "open_errors",
)
_KIND_LABELS = {value: str(label) for value, label in ManagedKind.choices}


@require_GET
@login_required
def mailbox_health(request: HttpRequest, mailbox_id: int) -> HttpResponse:
    mailbox = visible_mailboxes(request.user).filter(pk=mailbox_id).select_related("team", "request").first()
    if mailbox is None:
        raise Http404("No such mailbox")
    alerts = mailbox.alerts.filter(status__in=OPEN_STATUSES).order_by("-urgent", "-level", "-last_seen_at")
    report = volume_report(mailbox_ids=[mailbox.pk])
    return render(
        request,
        "governance/mailboxes/detail.html",
        {
            "mailbox": mailbox,
            "alerts": alerts,
            "report": report,
            "charts": [report.volume, report.attachments],
            "statuses": [
                ("Incoming email", STATUS_LABELS.get(mailbox.incoming_status, "Unknown")),
                ("Outgoing email", STATUS_LABELS.get(mailbox.outgoing_status, "Unknown")),
                ("Appointments, contacts and tasks", STATUS_LABELS.get(mailbox.act_status, "Unknown")),
            ],
            "owners": mailbox.owners.order_by("first_name", "username"),
        },
    )


@require_GET
@login_required
def team_health(request: HttpRequest, team_id: int) -> HttpResponse:
    team = visible_teams(request.user).filter(pk=team_id).first()
    if team is None:
        raise Http404("No such team")
    mailboxes = _with_open_alerts(ManagedMailbox.objects.filter(team=team, is_active=True)).order_by("name", "id")
    report = volume_report(mailbox_ids=list(mailboxes.values_list("pk", flat=True)))
    return render(
        request,
        "governance/mailboxes/team.html",
        {
            "team": team,
            "mailboxes": mailboxes,
            "report": report,
            "charts": [report.volume, report.attachments],
        },
    )


@require_GET
@login_required
def retention_list(request: HttpRequest) -> HttpResponse:
    today = timezone.localdate()
    mailboxes = visible_mailboxes(request.user).filter(is_active=True).select_related("team", "request")
    overdue = mailboxes.filter(review_due_on__lte=today).order_by("review_due_on", "name")
    upcoming = mailboxes.filter(review_due_on__gt=today).order_by("review_due_on", "name")
    without = mailboxes.filter(review_due_on__isnull=True).count()
    return render(
        request,
        "governance/mailboxes/retention.html",
        {"overdue": overdue, "upcoming": upcoming[:200], "without": without, "today": today},
    )
