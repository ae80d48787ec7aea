"""The annotation pages: download and upload of the CSV, and one mailbox's annotation form."""

from __future__ import annotations

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from migration.models import InventoryAnnotation
from migration.services.annotations import COLUMNS, MAX_CSV_BYTES
from portal.audit.models import AuditEvent
from tests.migration.factories import InventoryAnnotationFactory, InventoryMailboxFactory

pytestmark = pytest.mark.django_db

PAGE = reverse("migration:annotations")
EXPORT = reverse("migration:annotations_export")
HEADER = ",".join(COLUMNS)


@pytest.fixture
def lead_client(client_for, migration_lead):
    return client_for(migration_lead)


def post_csv(client, content: bytes, name: str = "annotations.csv"):
    return client.post(PAGE, {"csv_file": SimpleUploadedFile(name, content, "text/csv")})


def summary(response) -> str:
    html = response.content.decode()
    start = html.index('class="govuk-error-summary"')
    return html[start : html.index("</ul>", start)]


def test_the_pages_are_for_migration_leads_only(client_for, migration_lead, requester, outsider, client):
    mailbox = InventoryMailboxFactory()
    for url in (PAGE, EXPORT, reverse("migration:annotation_edit", args=[mailbox.pk])):
        assert client_for(migration_lead).get(url).status_code == 200, url
        assert client_for(requester).get(url).status_code == 403, url
        assert client_for(outsider).get(url).status_code == 403, url
        assert client.get(url).status_code == 302, url
    content = f"{HEADER}\r\n{mailbox.email_address},,,Note,no,\r\n".encode()
    assert post_csv(client_for(requester), content).status_code == 403
    assert (
        client_for(outsider)
        .post(reverse("migration:annotation_edit", args=[mailbox.pk]), {"notes": "x", "excluded": "no"})
        .status_code
        == 403
    )
    assert not InventoryAnnotation.objects.exists()


def test_the_export_downloads_a_csv_file(lead_client):
    InventoryAnnotationFactory(notes="=cmd|' /C calc'!A0")
    response = lead_client.get(EXPORT)
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].startswith('attachment; filename="inventory-annotations-')
    body = b"".join(response.streaming_content).decode()
    assert body.startswith("\ufeff" + HEADER)
    assert "'=cmd|" in body


def test_uploading_a_good_file_saves_it_and_says_what_changed(lead_client):
    mailbox = InventoryMailboxFactory()
    response = post_csv(lead_client, f"{HEADER}\r\n{mailbox.email_address},,,A note,no,\r\n".encode())
    assert response.status_code == 302
    page = lead_client.get(response.url).content.decode()
    assert "1 row checked: 1 annotation changed, 0 unchanged." in page
    assert InventoryAnnotation.objects.get().notes == "A note"


def test_row_problems_are_listed_in_the_error_summary_and_nothing_is_saved(lead_client):
    mailbox = InventoryMailboxFactory()
    content = f"{HEADER}\r\n{mailbox.email_address},,,Fine,no,\r\nnobody@example.gov.uk,,,,perhaps,\r\n".encode()
    response = post_csv(lead_client, content)
    assert response.status_code == 200
    found = summary(response)
    assert "Row 3: There is no mailbox with the address &#x27;nobody@example.gov.uk&#x27; in the inventory" in found
    assert "Row 3: Excluded must be yes or no, not &#x27;perhaps&#x27;" in found
    assert 'href="#id_csv_file"' in found
    assert "Nothing was saved. Fix the problems in the file and upload it again" in found
    assert response.content.decode().startswith("<!DOCTYPE html>")
    assert "<title>Error: Annotations" in response.content.decode()
    assert not InventoryAnnotation.objects.exists()


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("annotations.csv", b"", "The selected file is empty"),
        ("annotations.xlsx", b"PK\x03\x04", "The selected file must be a CSV file"),
        ("annotations.csv", b"\xff\xfeM\x00", "The selected file is saved as UTF-16"),
        ("annotations.csv", HEADER.replace(",", ";").encode(), "separates its columns with semicolons"),
        ("annotations.csv", b"x" * (MAX_CSV_BYTES + 1), "The selected file must be smaller than 5MB"),
    ],
)
def test_wrong_files_get_govuk_file_upload_errors(lead_client, name, content, message):
    response = post_csv(lead_client, content, name)
    assert response.status_code == 200
    assert message in summary(response)


def test_no_file_selected(lead_client):
    response = lead_client.post(PAGE, {})
    assert "Select a CSV file" in summary(response)


def test_one_mailbox_annotation_form_saves_and_audits(lead_client, migration_lead):
    mailbox = InventoryMailboxFactory(name="Finance queue")
    url = reverse("migration:annotation_edit", args=[mailbox.pk])
    page = lead_client.get(url).content.decode()
    assert "Annotate Finance queue" in page
    assert reverse("migration:inventory_mailbox", args=[mailbox.pk]) in page

    response = lead_client.post(
        url,
        {
            "owner_correction": "jo@example.gov.uk",
            "notes": "Moves with wave 2",
            "excluded": "yes",
            "exclusion_reason": "Being closed",
        },
    )
    assert response.status_code == 302
    annotation = InventoryAnnotation.objects.get()
    assert (annotation.owner_correction, annotation.excluded, annotation.exclusion_reason) == (
        "jo@example.gov.uk",
        True,
        "Being closed",
    )
    assert annotation.updated_by == migration_lead
    assert "The annotation of Finance queue is saved." in lead_client.get(url).content.decode()

    # Choosing "No" hides the reason, so a reason left in the box is not kept.
    lead_client.post(url, {"owner_correction": "", "notes": "", "excluded": "no", "exclusion_reason": "stale"})
    annotation.refresh_from_db()
    assert (annotation.excluded, annotation.exclusion_reason) == (False, "")
    events = AuditEvent.objects.filter(action="inventory.annotation_changed").order_by("seq")
    assert [json.loads(e.after_json)["excluded"] for e in events] == [True, False]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"excluded": "yes", "exclusion_reason": ""}, "Enter why the mailbox is excluded from migration"),
        ({}, "Select yes if this mailbox is left out of migration on purpose"),
        ({"excluded": "no", "notes": "n" * 5001}, "Notes must be 5,000 characters or fewer"),
        ({"excluded": "no", "owner_correction": "bad\x1bescape"}, "Owner correction can only contain letters"),
    ],
)
def test_the_annotation_form_explains_what_is_wrong(lead_client, data, message):
    mailbox = InventoryMailboxFactory()
    response = lead_client.post(reverse("migration:annotation_edit", args=[mailbox.pk]), data)
    assert response.status_code == 200
    assert message in summary(response)
    assert not InventoryAnnotation.objects.exists()


def test_an_unknown_mailbox_is_not_found(lead_client):
    assert lead_client.get(reverse("migration:annotation_edit", args=[999999])).status_code == 404
