"""The requester's pages: the dashboard, the question pages, check your answers, confirmation, status, withdrawal.

Views parse input, call one service and render or redirect. Every page that
touches one request finds it through :func:`_get_request_for_user`, which looks
it up among the requests the person may see and, for changes, checks that they
made it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, RequestDataTooBig, TooManyFieldsSent
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse, QueryDict
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods

from onboarding.forms import mailbox_requests as forms
from onboarding.models import EDITABLE, WITHDRAWABLE, MailboxRequest, RequestMember, RequestStatus
from onboarding.selectors.mailbox_requests import (
    DASHBOARD_FIELDS,
    dashboard_rows,
    latest_return_reason,
    request_timeline,
    requests_on_dashboard,
    requests_visible_to,
)
from onboarding.services.mailbox_requests import (
    RequestIncompleteError,
    mailbox_request_create_draft,
    mailbox_request_missing_answers,
    mailbox_request_submit,
    mailbox_request_update,
    mailbox_request_withdraw,
)
from portal.decorators import require_permission
from portal.exceptions import InvalidStateError, PortalError

PAGE_SIZE = 20
TOO_MUCH_SENT = "What you sent was too large to read. Shorten your answers and try again."
RETURN_TO_CHECK = "check"


@dataclass(frozen=True)
class Question:
    slug: str
    summary: str  # its row on check your answers
    form_class: type[forms.QuestionForm] | None  # None: the members page, which has its own view
    queue_only: bool = False

    def applies_to(self, request: MailboxRequest) -> bool:
        return request.is_queue or not self.queue_only


QUESTIONS: tuple[Question, ...] = (
    Question("kind", "Kind of mailbox", forms.KindForm),
    Question("name", "Name", forms.DisplayNameForm),
    Question("address", "Email address", forms.AddressForm),
    Question("team", "Owning team", forms.TeamForm),
    Question("owners", "Owners", forms.OwnersForm),
    Question("members", "Members", None),
    Question("visibility", "Who can see the queue", forms.QueueVisibilityForm, queue_only=True),
    Question("tracking", "Email tracked in Dynamics 365", forms.TrackingForm, queue_only=True),
    Question("usage", "How the mailbox will be used", forms.UsageForm),
    Question("justification", "Business justification", forms.JustificationForm),
)
_BY_SLUG = {question.slug: question for question in QUESTIONS}
# Which page asks each answer, for "missing answer" links and service errors.
_QUESTION_FOR_FIELD = {
    field: question.slug for question in QUESTIONS if question.form_class for field in question.form_class.answers
} | {"email": "members", "permissions": "members"}


# --- lookup, flow and input --------------------------------------------------------------------


def _get_request_for_user(request: HttpRequest, pk: int, *, as_requester: bool = False) -> MailboxRequest:
    """The request if the person may see it (404 otherwise); with ``as_requester``, only if they made it (403)."""
    mailbox_request = get_object_or_404(
        requests_visible_to(request.user).select_related("requester", "team", "owner", "backup_owner"), pk=pk
    )
    if as_requester and mailbox_request.requester_id != request.user.pk:
        raise PermissionDenied
    return mailbox_request


def _returning(request: HttpRequest) -> bool:
    return request.GET.get("return") == RETURN_TO_CHECK


def _question_url(mailbox_request: MailboxRequest, slug: str, *, returning: bool = False) -> str:
    if slug == "members":
        url = reverse("onboarding:request_members", args=[mailbox_request.pk])
    else:
        url = reverse("onboarding:request_question", args=[mailbox_request.pk, slug])
    return f"{url}?return={RETURN_TO_CHECK}" if returning else url


def _check_url(mailbox_request: MailboxRequest) -> str:
    return reverse("onboarding:request_check", args=[mailbox_request.pk])


def _first_unanswered(mailbox_request: MailboxRequest) -> str | None:
    for field, _message in mailbox_request_missing_answers(mailbox_request):
        return _QUESTION_FOR_FIELD.get(field, "kind")
    return None


def _next_url(mailbox_request: MailboxRequest, slug: str, *, returning: bool) -> str:
    """After a page: back to check your answers (by way of any question a change opened up), or the next page."""
    if returning:
        unanswered = _first_unanswered(mailbox_request)
        if unanswered:
            return _question_url(mailbox_request, unanswered, returning=True)
        return _check_url(mailbox_request)
    slugs = [question.slug for question in QUESTIONS if question.applies_to(mailbox_request)]
    position = slugs.index(slug) if slug in slugs else len(slugs)
    if position + 1 < len(slugs):
        return _question_url(mailbox_request, slugs[position + 1])
    return _check_url(mailbox_request)


def _back_url(mailbox_request: MailboxRequest | None, slug: str, *, returning: bool) -> str:
    if mailbox_request is None:
        return reverse("onboarding:requests")
    if returning:
        return _check_url(mailbox_request)
    slugs = [question.slug for question in QUESTIONS if question.applies_to(mailbox_request)]
    position = slugs.index(slug) if slug in slugs else 0
    if position == 0:
        return reverse("onboarding:requests")
    return _question_url(mailbox_request, slugs[position - 1])


def _posted(request: HttpRequest) -> QueryDict | None:
    """The POSTed form, or ``None`` when it is too large or has too many fields to read safely."""
    try:
        return request.POST
    except (RequestDataTooBig, TooManyFieldsSent):
        return None


def _unreadable(form: Any) -> Any:
    """``form``, unbound, carrying one page-level error: what was sent could not be read at all."""
    form.cleaned_data = {}
    form.add_error(None, TOO_MUCH_SENT)
    return form


def _show_service_error(form: Any, error: PortalError) -> None:
    form.add_error(error.field if error.field in form.fields else None, error.message)


def _problem_url(mailbox_request: MailboxRequest, field: str | None) -> str:
    slug = _QUESTION_FOR_FIELD.get(field or "")
    return _question_url(mailbox_request, slug, returning=True) if slug else "#submit"


def _not_editable(request: HttpRequest, mailbox_request: MailboxRequest) -> HttpResponse:
    messages.error(
        request,
        f"Request {mailbox_request.reference} cannot be changed because it is "
        f"{mailbox_request.get_status_display().lower()}.",
    )
    return redirect("onboarding:request_detail", pk=mailbox_request.pk)


def _saved_for_later(request: HttpRequest, mailbox_request: MailboxRequest | None) -> HttpResponse:
    if mailbox_request is not None:
        messages.success(
            request,
            f"Your answers to request {mailbox_request.reference} are saved. "
            "Continue the request from this page when you are ready.",
        )
    return redirect("onboarding:requests")


# --- answers, as check your answers and the status page show them ------------------------------


def _person(user: Any) -> str:
    return f"{user.display_name} ({user.email})" if user else ""


def _member_permissions(member: RequestMember) -> str:
    granted = []
    if member.full_access:
        granted.append("full access" + (", shown in their Outlook" if member.automapping else ""))
    if member.send_as:
        granted.append("send as")
    if member.send_on_behalf:
        granted.append("send on behalf")
    return ", ".join(granted)


def _member_line(member: RequestMember) -> str:
    return f"{member.email}: {_member_permissions(member)}"


def _lines(*candidates: str) -> list[str]:
    return [line for line in candidates if line]


def _answer_rows(mailbox_request: MailboxRequest, members: list[RequestMember]) -> list[dict[str, Any]]:
    """One summary-list row per question: its lines of answer, or the message saying it is missing."""
    r = mailbox_request
    missing = dict(mailbox_request_missing_answers(r))
    values: dict[str, list[str]] = {
        "kind": _lines(r.get_kind_display() if r.kind else ""),
        "name": _lines(r.display_name),
        "address": _lines(r.address),
        "team": _lines(f"{r.team.name} ({r.team.business_unit})" if r.team else ""),
        "owners": _lines(
            f"Accountable owner: {_person(r.owner)}" if r.owner else "",
            f"Backup owner: {_person(r.backup_owner)}" if r.backup_owner else "",
        ),
        "members": [_member_line(member) for member in members] or ["No members"],
        "visibility": _lines(r.get_queue_visibility_display() if r.queue_visibility is not None else ""),
        "tracking": _lines(
            r.get_tracking_rule_display() if r.tracking_rule is not None else "",
            f"Reason: {r.tracking_reason}" if r.tracking_reason else "",
        ),
        "usage": _lines(
            f"About {r.expected_daily_volume:,} email messages a day" if r.expected_daily_volume is not None else "",
            f"Attachments typically {r.typical_attachment_kb:,} KB" if r.typical_attachment_kb is not None else "",
            f"Email kept for {r.retention_months} months" if r.retention_months is not None else "",
            r.get_data_classification_display() if r.data_classification else "",
        ),
        "justification": _lines(
            r.justification, f"Ticket reference: {r.ticket_reference}" if r.ticket_reference else ""
        ),
    }
    rows = []
    for question in QUESTIONS:
        if not question.applies_to(r):
            continue
        fields = question.form_class.answers if question.form_class else ()
        problems = [missing[field] for field in fields if field in missing]
        rows.append(
            {
                "slug": question.slug,
                "key": question.summary,
                "lines": values[question.slug],
                "missing": problems[0] if problems else "",
                "change_url": _question_url(r, question.slug, returning=True),
            }
        )
    return rows


# --- pages -------------------------------------------------------------------------------------


@require_GET
@require_permission("submit_mailbox_requests")
def requests_dashboard(request):
    page = Paginator(requests_on_dashboard(request.user).values(*DASHBOARD_FIELDS), PAGE_SIZE).get_page(
        request.GET.get("page")
    )
    rows = dashboard_rows(request.user, page.object_list)
    return render(request, "onboarding/requests/dashboard.html", {"page": page, "rows": rows})


@require_http_methods(["GET", "POST"])
@require_permission("submit_mailbox_requests")
def request_start(request):
    """The first question, asked before a draft exists: the draft is made by the first answer."""
    return _question_page(request, None, _BY_SLUG["kind"])


@require_http_methods(["GET", "POST"])
@require_permission("submit_mailbox_requests")
def request_question(request, pk: int, question: str):
    step = _BY_SLUG.get(question)
    if step is None:
        raise Http404
    mailbox_request = _get_request_for_user(request, pk, as_requester=True)
    if mailbox_request.status not in EDITABLE:
        return _not_editable(request, mailbox_request)
    if step.form_class is None:
        return redirect(_question_url(mailbox_request, step.slug, returning=_returning(request)))
    if not step.applies_to(mailbox_request):
        # A queue question for a shared mailbox: nothing to ask.
        return redirect(_check_url(mailbox_request))
    return _question_page(request, mailbox_request, step)


def _question_page(request: HttpRequest, mailbox_request: MailboxRequest | None, step: Question) -> HttpResponse:
    form_class = step.form_class
    assert form_class is not None
    returning = _returning(request) and mailbox_request is not None
    initial = form_class.initial_for(mailbox_request) if mailbox_request else {}
    if request.method == "POST":
        data = _posted(request)
        if data is None:
            form = _unreadable(form_class(actor=request.user, initial=initial))
        else:
            form = form_class(data, actor=request.user, initial=initial)
            saving_later = "save_later" in data
            valid = form.is_valid()
            if valid or (saving_later and form.only_answers_missing()):
                changes = form.changes() if valid else form.answers_given()
                try:
                    if mailbox_request is None and changes:
                        mailbox_request = mailbox_request_create_draft(actor=request.user)
                    if mailbox_request is not None:
                        mailbox_request = mailbox_request_update(
                            actor=request.user, request_id=mailbox_request.pk, changes=changes
                        )
                except InvalidStateError as error:
                    # The request moved on (submitted in another tab, say): show where it is now.
                    messages.error(request, error.message)
                    if mailbox_request is None:
                        return redirect("onboarding:requests")
                    return redirect("onboarding:request_detail", pk=mailbox_request.pk)
                except PortalError as error:
                    _show_service_error(form, error)
                else:
                    if saving_later:
                        return _saved_for_later(request, mailbox_request)
                    return redirect(_next_url(mailbox_request, step.slug, returning=returning))
    else:
        form = form_class(actor=request.user, initial=initial)
    return render(
        request,
        "onboarding/requests/question.html",
        {
            "form": form,
            "mailbox_request": mailbox_request,
            "back_url": _back_url(mailbox_request, step.slug, returning=returning),
            "question": step,
        },
    )


@require_GET
@require_permission("submit_mailbox_requests")
def request_continue(request, pk: int):
    """Where a saved draft picks up: the first unanswered question, or check your answers."""
    mailbox_request = _get_request_for_user(request, pk, as_requester=True)
    if mailbox_request.status not in EDITABLE:
        return redirect("onboarding:request_detail", pk=pk)
    unanswered = _first_unanswered(mailbox_request)
    return redirect(_question_url(mailbox_request, unanswered) if unanswered else _check_url(mailbox_request))


@require_http_methods(["GET", "POST"])
@require_permission("submit_mailbox_requests")
def request_members(request, pk: int):
    mailbox_request = _get_request_for_user(request, pk, as_requester=True)
    if mailbox_request.status not in EDITABLE:
        return _not_editable(request, mailbox_request)
    returning = _returning(request)
    members = list(mailbox_request.members.all())
    form = forms.AddMemberForm()
    if request.method == "POST":
        data = _posted(request)
        if data is None:
            form = _unreadable(form)
        else:
            form = forms.AddMemberForm(data)
            if form.is_valid():
                current = [_member_dict(member) for member in members]
                try:
                    mailbox_request_update(
                        actor=request.user,
                        request_id=mailbox_request.pk,
                        changes={},
                        members=[*current, form.member()],
                    )
                except InvalidStateError as error:
                    messages.error(request, error.message)
                    return redirect("onboarding:request_detail", pk=pk)
                except PortalError as error:
                    _show_service_error(form, error)
                else:
                    messages.success(request, f"{form.cleaned_data['email'].lower()} was added")
                    return redirect(_question_url(mailbox_request, "members", returning=returning))
    return render(
        request,
        "onboarding/requests/members.html",
        {
            "form": form,
            "mailbox_request": mailbox_request,
            "members": [(member, _member_permissions(member)) for member in members],
            "returning": returning,
            "back_url": _back_url(mailbox_request, "members", returning=returning),
            "next_url": _next_url(mailbox_request, "members", returning=returning),
        },
    )


def _member_dict(member: RequestMember) -> dict[str, Any]:
    return {
        "email": member.email,
        "full_access": member.full_access,
        "automapping": member.automapping,
        "send_as": member.send_as,
        "send_on_behalf": member.send_on_behalf,
    }


@require_http_methods(["GET", "POST"])
@require_permission("submit_mailbox_requests")
def request_member_remove(request, pk: int, member_id: int):
    mailbox_request = _get_request_for_user(request, pk, as_requester=True)
    if mailbox_request.status not in EDITABLE:
        return _not_editable(request, mailbox_request)
    member = get_object_or_404(mailbox_request.members, pk=member_id)
    returning = _returning(request)
    members_url = _question_url(mailbox_request, "members", returning=returning)
    if request.method == "POST":
        remaining = [_member_dict(other) for other in mailbox_request.members.exclude(pk=member.pk)]
        try:
            mailbox_request_update(actor=request.user, request_id=mailbox_request.pk, changes={}, members=remaining)
        except PortalError as error:
            messages.error(request, error.message)
        else:
            messages.success(request, f"{member.email} was removed")
        return redirect(members_url)
    return render(
        request,
        "onboarding/requests/member_remove.html",
        {"mailbox_request": mailbox_request, "member": member, "back_url": members_url},
    )


@require_http_methods(["GET", "POST"])
@require_permission("submit_mailbox_requests")
def request_check(request, pk: int):
    """Check your answers, then submit (or resubmit after a return)."""
    mailbox_request = _get_request_for_user(request, pk, as_requester=True)
    if mailbox_request.status not in EDITABLE:
        return _not_editable(request, mailbox_request)
    problems: list[dict[str, str]] = []
    if request.method == "POST":
        try:
            mailbox_request_submit(actor=request.user, request_id=mailbox_request.pk)
        except RequestIncompleteError as error:
            problems = [
                {"message": message, "url": _problem_url(mailbox_request, field)} for field, message in error.problems
            ]
        except InvalidStateError as error:
            messages.error(request, error.message)
            return redirect("onboarding:request_detail", pk=pk)
        except PortalError as error:
            problems = [{"message": error.message, "url": _problem_url(mailbox_request, error.field)}]
        else:
            return redirect("onboarding:request_submitted", pk=pk)
    members = list(mailbox_request.members.all())
    return render(
        request,
        "onboarding/requests/check.html",
        {
            "mailbox_request": mailbox_request,
            "rows": _answer_rows(mailbox_request, members),
            "problems": problems,
            "tenant_checked": settings.M365.enabled,
            "resubmitting": mailbox_request.status == RequestStatus.RETURNED,
            "return_reason": latest_return_reason(mailbox_request)
            if mailbox_request.status == RequestStatus.RETURNED
            else "",
            "back_url": _back_url(mailbox_request, QUESTIONS[-1].slug, returning=False),
        },
    )


@require_GET
@require_permission("submit_mailbox_requests")
def request_submitted(request, pk: int):
    mailbox_request = _get_request_for_user(request, pk, as_requester=True)
    if mailbox_request.status in EDITABLE:
        return redirect("onboarding:request_check", pk=pk)
    if mailbox_request.status != RequestStatus.SUBMITTED:
        # The confirmation belongs to the moment of submission; later on, the status page says more.
        return redirect("onboarding:request_detail", pk=pk)
    stages = list(mailbox_request.stages.order_by("order").values_list("name", flat=True))
    return render(request, "onboarding/requests/submitted.html", {"mailbox_request": mailbox_request, "stages": stages})


@require_GET
@login_required
def request_detail(request, pk: int):
    """The status page: answers and timeline, for anyone who may see the request."""
    mailbox_request = _get_request_for_user(request, pk)
    is_requester = mailbox_request.requester_id == request.user.pk
    members = list(mailbox_request.members.all())
    return render(
        request,
        "onboarding/requests/detail.html",
        {
            "mailbox_request": mailbox_request,
            "rows": _answer_rows(mailbox_request, members),
            "timeline": request_timeline(mailbox_request),
            "is_requester": is_requester,
            "can_withdraw": is_requester and mailbox_request.status in WITHDRAWABLE,
            "can_continue": is_requester and mailbox_request.status == RequestStatus.DRAFT,
            "can_resubmit": is_requester and mailbox_request.status == RequestStatus.RETURNED,
            "return_reason": latest_return_reason(mailbox_request)
            if mailbox_request.status == RequestStatus.RETURNED
            else "",
        },
    )


@require_http_methods(["GET", "POST"])
@require_permission("submit_mailbox_requests")
def request_withdraw(request, pk: int):
    mailbox_request = _get_request_for_user(request, pk, as_requester=True)
    if mailbox_request.status not in WITHDRAWABLE:
        messages.error(
            request,
            f"Request {mailbox_request.reference} cannot be withdrawn because it is "
            f"{mailbox_request.get_status_display().lower()}.",
        )
        return redirect("onboarding:request_detail", pk=pk)
    form = forms.WithdrawForm()
    if request.method == "POST":
        data = _posted(request)
        if data is None:
            form = _unreadable(form)
        else:
            form = forms.WithdrawForm(data)
            if form.is_valid():
                try:
                    mailbox_request_withdraw(actor=request.user, request_id=pk, reason=form.cleaned_data["reason"])
                except InvalidStateError as error:
                    messages.error(request, error.message)
                    return redirect("onboarding:request_detail", pk=pk)
                except PortalError as error:
                    _show_service_error(form, error)
                else:
                    messages.success(request, f"Request {mailbox_request.reference} has been withdrawn")
                    return redirect("onboarding:request_detail", pk=pk)
    return render(
        request,
        "onboarding/requests/withdraw.html",
        {
            "form": form,
            "mailbox_request": mailbox_request,
            "back_url": reverse("onboarding:request_detail", args=[pk]),
        },
    )
