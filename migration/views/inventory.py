"""The inventory pages: the filtered list with keyset pages, its CSV export, and one mailbox's record."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import wraps
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, QueryDict, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET

from migration.forms.inventory import InventoryFilterForm
from migration.models import Classification, InventoryMailbox, OwnerType, Readiness
from migration.selectors import inventory as selectors
from migration.selectors.timeline import mailbox_timeline
from portal.accounts.roles import perm
from portal.audit.services import audit_record
from portal.csv_safe import csv_rows
from portal.fragments import form_fragment_key

# Migration leads work the inventory; platform admins read it to plan their part.
INVENTORY_PERMISSIONS = ("lead_migration", "administer_platform")

# Parameters that place a page rather than choose what is listed.
_PAGE_PARAMETERS = ("after", "before", "submit")


def inventory_access_required(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Signed-out people go to sign-in; people with none of ``INVENTORY_PERMISSIONS`` get the 403 page."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not any(request.user.has_perm(perm(codename)) for codename in INVENTORY_PERMISSIONS):
            raise PermissionDenied
        return view(request, *args, **kwargs)

    return login_required(wrapped)


@dataclass(frozen=True)
class Tag:
    label: str
    css: str


CLASSIFICATION_TAG_COLOURS = {
    Classification.COMPLIANT_SSS: "govuk-tag--green",
    Classification.OUTLOOK_CLIENT: "govuk-tag--orange",
    Classification.EMAIL_ROUTER: "govuk-tag--red",
    Classification.FORWARD_MAILBOX: "govuk-tag--yellow",
    Classification.SSS_WRONG_PROFILE: "govuk-tag--pink",
    Classification.NOT_IN_EXCHANGE_ONLINE: "govuk-tag--purple",
    Classification.NO_EMAIL: "govuk-tag--grey",
}
READINESS_TAG_COLOURS = {
    Readiness.COMPLIANT: "govuk-tag--green",
    Readiness.READY: "govuk-tag--blue",
    Readiness.BLOCKED: "govuk-tag--red",
}
_CLASSIFICATION_LABELS = dict(Classification.choices)
_READINESS_LABELS = dict(Readiness.choices)


def classification_tag(value: str) -> Tag:
    return Tag(_CLASSIFICATION_LABELS.get(value, value), CLASSIFICATION_TAG_COLOURS.get(value, "govuk-tag--grey"))


def readiness_tag(value: str) -> Tag:
    return Tag(_READINESS_LABELS.get(value, value), READINESS_TAG_COLOURS.get(value, "govuk-tag--grey"))


@dataclass(frozen=True)
class ListRow:
    """One table row as plain values, worked out here so the template does no lookups that can fail
    or cost, and so the rows can be kept as a fragment under a digest of exactly what they show."""

    mailbox_id: int
    name: str
    owner: str  # the owner's kind, and their name when it is not the mailbox's own
    email_address: str
    team_name: str
    business_unit_name: str
    classification: Tag
    readiness: Tag
    excluded: bool
    removed: bool


_OWNER_TYPE_LABELS = {value: str(label) for value, label in OwnerType.choices}


def _list_row(mailbox: dict[str, Any]) -> ListRow:
    """A row from a mailbox's ``LIST_COLUMNS`` (``inventory_page``)."""
    owner = _OWNER_TYPE_LABELS.get(mailbox["owner_type"], mailbox["owner_type"])
    if mailbox["owner_name"] and mailbox["owner_name"] != mailbox["name"]:
        owner = f"{owner}: {mailbox['owner_name']}"
    return ListRow(
        mailbox_id=mailbox["id"],
        name=mailbox["name"],
        owner=owner,
        email_address=mailbox["email_address"],
        team_name=mailbox["team_name"],
        business_unit_name=mailbox["business_unit_name"],
        classification=classification_tag(mailbox["classification"]),
        readiness=readiness_tag(mailbox["readiness"]),
        excluded=bool(mailbox["annotation__excluded"]),
        removed=mailbox["removed_at"] is not None,
    )


def _filter_form(request: HttpRequest) -> tuple[InventoryFilterForm, selectors.InventoryFilters, str]:
    form = InventoryFilterForm(
        request.GET or None,
        teams=selectors.inventory_team_names(),
        business_units=selectors.inventory_business_unit_names(),
        legacy_sources=selectors.legacy_sources_for_choice(),
    )
    if not request.GET:
        return form, selectors.InventoryFilters(), selectors.DEFAULT_SORT
    form.is_valid()
    return form, form.filters(), form.chosen_sort()


def _listing_query(request: HttpRequest, form: InventoryFilterForm) -> QueryDict:
    """The request's valid filters and sort, without page placement, for building links."""
    query = request.GET.copy()
    for name in (*_PAGE_PARAMETERS, *form.errors):
        query.pop(name, None)
    return query


def _sort_headers(path: str, query: QueryDict, sort: str) -> dict[str, dict[str, str]]:
    """For each sortable column: the link that sorts by it (flipping the direction if it is the current sort)."""
    current, descending = sort.lstrip("-"), sort.startswith("-")
    headers = {}
    for column in selectors.SORT_KEYS:
        link = query.copy()
        is_current = column == current
        link["sort"] = f"-{column}" if is_current and not descending else column
        if link["sort"] == selectors.DEFAULT_SORT:
            link.pop("sort")
        headers[column] = {
            "url": f"{path}?{link.urlencode()}" if link else path,
            "aria_sort": ("descending" if descending else "ascending") if is_current else "none",
        }
    return headers


@require_GET
@inventory_access_required
def inventory_list(request: HttpRequest) -> HttpResponse:
    form, filters, sort = _filter_form(request)
    page = selectors.inventory_page(
        selectors.inventory_mailboxes_filtered(filters),
        sort=sort,
        after=selectors.cursor_decode(request.GET.get("after"), sort),
        before=selectors.cursor_decode(request.GET.get("before"), sort),
    )
    query = _listing_query(request, form)
    return render(
        request,
        "migration/inventory/list.html",
        {
            "form": form,
            "page": page,
            "rows": [_list_row(mailbox) for mailbox in page.mailboxes],
            "listing_query": query.urlencode(),
            "filters_applied": bool(filters.as_dict()),
            "sort_headers": _sort_headers(request.path, query, sort),
            "paged": bool(request.GET.get("after") or request.GET.get("before")),
            "form_fragment_key": form_fragment_key(form),
        },
    )


EXPORT_HEADER = (
    "mailbox_id",
    "dataverse_id",
    "name",
    "email_address",
    "owner_type",
    "owner_name",
    "owner_disabled",
    "team",
    "business_unit",
    "email_server_profile",
    "incoming_email",
    "outgoing_email",
    "appointments_contacts_tasks",
    "address_approval",
    "incoming_test",
    "outgoing_test",
    "act_test",
    "forward_mailbox",
    "open_error_alerts",
    "exchange_online",
    "mailbox_type",
    "classification",
    "readiness",
    "blockers",
    "explanation",
    "legacy_sources",
    "excluded",
    "owner_correction",
    "last_seen_utc",
    "removed_utc",
)


def _utc(value: dt.datetime | None) -> str:
    return value.astimezone(dt.UTC).isoformat() if value else ""


def _yes_no(value: bool) -> str:
    return "yes" if value else "no"


def _export_rows(mailboxes: Iterator[InventoryMailbox]) -> Iterator[tuple[Any, ...]]:
    label = selectors.dataverse_label
    for mailbox in mailboxes:
        annotation = getattr(mailbox, "annotation", None)
        blockers = mailbox.blockers if isinstance(mailbox.blockers, list) else []
        sources = dict.fromkeys(link.source.name for link in mailbox.legacy_link_list)
        yield (
            mailbox.pk,
            mailbox.dataverse_id,
            mailbox.name,
            mailbox.email_address,
            mailbox.owner_type,
            mailbox.owner_name,
            _yes_no(mailbox.owner_disabled),
            mailbox.team_name,
            mailbox.business_unit_name,
            mailbox.profile_name,
            label(selectors.INCOMING_DELIVERY_LABELS, mailbox.incoming_delivery),
            label(selectors.OUTGOING_DELIVERY_LABELS, mailbox.outgoing_delivery),
            label(selectors.ACT_DELIVERY_LABELS, mailbox.act_delivery),
            label(selectors.APPROVAL_LABELS, mailbox.email_approval),
            label(selectors.TEST_STATUS_LABELS, mailbox.incoming_status),
            label(selectors.TEST_STATUS_LABELS, mailbox.outgoing_status),
            label(selectors.TEST_STATUS_LABELS, mailbox.act_status),
            _yes_no(mailbox.is_forward_mailbox),
            mailbox.open_error_alerts,
            mailbox.exchange_presence,
            mailbox.user_purpose,
            mailbox.classification,
            mailbox.readiness,
            "; ".join(str(blocker.get("code", "")) for blocker in blockers if isinstance(blocker, dict)),
            mailbox.explanation,
            "; ".join(sources),
            _yes_no(bool(annotation and annotation.excluded)),
            annotation.owner_correction if annotation else "",
            _utc(mailbox.last_seen_at),
            _utc(mailbox.removed_at),
        )


@require_GET
@inventory_access_required
def inventory_export(request: HttpRequest) -> HttpResponse:
    form, filters, sort = _filter_form(request)
    if form.errors:
        messages.error(request, "Correct the filters before exporting.")
        return redirect(f"{reverse('migration:inventory')}?{request.GET.urlencode()}")
    audit_record(
        actor=request.user,
        action="inventory.exported",
        object_type="inventory",
        after={"filters": filters.as_dict(), "sort": sort},
    )
    mailboxes = selectors.inventory_export_rows(selectors.inventory_mailboxes_filtered(filters), sort)
    stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
    response = StreamingHttpResponse(
        csv_rows(EXPORT_HEADER, _export_rows(mailboxes.iterator(chunk_size=2000))),
        content_type="text/csv; charset=utf-8",
    )
    response["Content-Disposition"] = f'attachment; filename="inventory-{stamp}.csv"'
    return response


def _annotation_url(request: HttpRequest, mailbox_id: int) -> str:
    """Where to annotate the mailbox; empty for people who may look but not annotate."""
    if not request.user.has_perm(perm("lead_migration")):
        return ""
    return reverse("migration:annotation_edit", args=[mailbox_id])


@require_GET
@inventory_access_required
def inventory_mailbox(request: HttpRequest, mailbox_id: int) -> HttpResponse:
    record = selectors.inventory_mailbox_record(mailbox_id)
    if record is None:
        raise Http404("No such inventory mailbox")
    return render(
        request,
        "migration/inventory/mailbox.html",
        {
            "record": record,
            "mailbox": record.mailbox,
            "classification": classification_tag(record.mailbox.classification),
            "readiness": readiness_tag(record.mailbox.readiness),
            "annotation_url": _annotation_url(request, record.mailbox.pk),
            "timeline": mailbox_timeline(record.mailbox),
        },
    )
