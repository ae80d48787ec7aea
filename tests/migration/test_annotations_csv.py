"""Annotation CSVs: the export, the import's checks (every row first, nothing saved on any problem),
the round trip, formula neutralising and one audit event per changed annotation."""

from __future__ import annotations

import codecs
import csv
import io
import json

import pytest
from django.utils import timezone

from migration.models import InventoryAnnotation
from migration.services.annotations import (
    COLUMNS,
    MAX_CSV_ROWS,
    NOTES_MAX,
    OWNER_CORRECTION_MAX,
    AnnotationImportError,
    AnnotationValues,
    annotation_save,
    annotations_csv,
    annotations_import,
)
from portal.audit.models import AuditEvent
from tests.migration.factories import InventoryAnnotationFactory, InventoryMailboxFactory

pytestmark = pytest.mark.django_db

HEADER = ",".join(COLUMNS)


def export_text() -> str:
    return "".join(annotations_csv())


def rows_of(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text.lstrip("\ufeff"), newline="")))


def csv_bytes(*rows: list[str], header: list[str] | tuple[str, ...] = COLUMNS) -> bytes:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue().encode()


def problems(actor, content: bytes) -> list[str]:
    with pytest.raises(AnnotationImportError) as refused:
        annotations_import(actor=actor, content=content)
    return refused.value.problems


def snapshot() -> list[tuple]:
    return list(
        InventoryAnnotation.objects.order_by("mailbox_id").values_list(
            "mailbox_id", "owner_correction", "notes", "excluded", "exclusion_reason", "updated_at"
        )
    )


# --- export -------------------------------------------------------------------------------------


def test_the_export_has_every_annotation_with_its_mailbox(migration_lead):
    first = InventoryAnnotationFactory(
        mailbox=InventoryMailboxFactory(email_address="a@example.gov.uk"),
        owner_correction="jo.bloggs@example.gov.uk",
        notes="Shared with the finance team",
        excluded=True,
        exclusion_reason="Closing in March",
    )
    InventoryAnnotationFactory(mailbox=InventoryMailboxFactory(email_address="b@example.gov.uk"))
    InventoryMailboxFactory(email_address="not-annotated@example.gov.uk")

    text = export_text()

    assert text.startswith("\ufeff")
    rows = rows_of(text)
    assert rows[0] == list(COLUMNS)
    assert rows[1] == [
        "a@example.gov.uk",
        str(first.mailbox.dataverse_id),
        "jo.bloggs@example.gov.uk",
        "Shared with the finance team",
        "yes",
        "Closing in March",
    ]
    assert rows[2][0] == "b@example.gov.uk" and rows[2][4] == "no"
    assert len(rows) == 3


@pytest.mark.parametrize(
    "dangerous",
    ['=HYPERLINK("http://evil.example")', "+1+1", "-2+3", "@SUM(A1)", "\tTAB", "\rCR", "'=already"],
)
def test_cells_a_spreadsheet_would_run_are_neutralised(dangerous):
    InventoryAnnotationFactory(notes=dangerous, owner_correction=dangerous)
    row = rows_of(export_text())[1]
    assert row[2] == "'" + dangerous
    assert row[3] == "'" + dangerous


# --- the round trip -----------------------------------------------------------------------------


def test_export_then_import_changes_nothing(migration_lead):
    for notes in ("Plain", "=1+2", 'line one\r\nline two, with "quotes"', "'=kept quote", "-", "café ✓"):
        InventoryAnnotationFactory(notes=notes, owner_correction="@owner", excluded=True, exclusion_reason="+why")
    InventoryAnnotationFactory(notes="", excluded=False)
    before = snapshot()
    events = AuditEvent.objects.count()

    result = annotations_import(actor=migration_lead, content=export_text().encode("utf-8"))

    assert (result.rows, result.changed, result.unchanged) == (7, 0, 7)
    assert snapshot() == before
    assert AuditEvent.objects.count() == events


def test_an_edited_export_changes_only_the_edited_rows_with_one_audit_event_each(migration_lead):
    kept = InventoryAnnotationFactory(notes="Keep me")
    edited = InventoryAnnotationFactory(notes="Old note")
    new_mailbox = InventoryMailboxFactory(email_address="New.Box@Example.gov.uk")
    rows = rows_of(export_text())
    for row in rows[1:]:
        if row[1] == str(edited.mailbox.dataverse_id):
            row[3] = "New note"
    rows.append(["new.box@example.gov.uk", "", "=owner", "", "Yes", "Being closed"])

    result = annotations_import(actor=migration_lead, content=csv_bytes(*rows[1:]))

    assert (result.rows, result.changed) == (3, 2)
    edited.refresh_from_db()
    assert edited.notes == "New note"
    assert edited.updated_by == migration_lead
    created = InventoryAnnotation.objects.get(mailbox=new_mailbox)
    assert (created.owner_correction, created.excluded, created.exclusion_reason) == ("=owner", True, "Being closed")
    assert InventoryAnnotation.objects.get(pk=kept.pk).notes == "Keep me"
    events = list(AuditEvent.objects.filter(action="inventory.annotation_changed").order_by("seq"))
    assert [e.object_id for e in events] == [str(edited.mailbox_id), str(new_mailbox.pk)]
    assert json.loads(events[0].before_json)["notes"] == "Old note"
    assert json.loads(events[0].after_json)["notes"] == "New note"
    assert events[1].before_json == "null"
    assert all(e.actor_id == migration_lead.pk for e in events)


def test_a_blank_row_for_a_mailbox_without_an_annotation_creates_nothing(migration_lead):
    mailbox = InventoryMailboxFactory()
    result = annotations_import(actor=migration_lead, content=csv_bytes([mailbox.email_address, "", "", "", "no", ""]))
    assert result.changed == 0
    assert not InventoryAnnotation.objects.exists()


def test_a_bom_and_blank_trailing_lines_are_fine(migration_lead):
    mailbox = InventoryMailboxFactory()
    content = codecs.BOM_UTF8 + csv_bytes([mailbox.email_address, "", "", "Note", "no", ""]) + b"\r\n,,,,,\r\n\r\n"
    assert annotations_import(actor=migration_lead, content=content).changed == 1


# --- every row is checked; nothing is saved when any is wrong -----------------------------------


def test_row_problems_are_all_reported_by_row_number_and_nothing_is_saved(migration_lead):
    good = InventoryMailboxFactory(email_address="good@example.gov.uk")
    twice = InventoryMailboxFactory(email_address="twice@example.gov.uk")
    other = InventoryMailboxFactory()
    InventoryMailboxFactory(email_address="dup@example.gov.uk")
    InventoryMailboxFactory(email_address="DUP@example.gov.uk")
    before = snapshot()
    content = csv_bytes(
        ["good@example.gov.uk", "", "", "Would be saved", "no", ""],
        ["nobody@example.gov.uk", "", "", "", "no", ""],
        ["twice@example.gov.uk", "", "", "", "maybe", ""],
        ["twice@example.gov.uk", "", "x" * (OWNER_CORRECTION_MAX + 1), "", "no", ""],
        ["", "not-a-guid", "", "", "no", ""],
        ["good@example.gov.uk", str(other.dataverse_id), "", "", "no", ""],
        ["", "", "", "", "no", ""],
        ["dup@example.gov.uk", "", "", "", "no", ""],
        [good.email_address, "", "", "n" * (NOTES_MAX + 1), "yes", ""],
        [twice.email_address, "", "", "bad\x07bell", "no", "a reason"],
        ["short", "row"],
    )

    found = problems(migration_lead, content)

    assert found == [
        "Row 3: There is no mailbox with the address 'nobody@example.gov.uk' in the inventory",
        "Row 4: Excluded must be yes or no, not 'maybe'",
        f"Row 5: Owner correction must be {OWNER_CORRECTION_MAX} characters or fewer",
        "Row 5: The mailbox is also on row 4",
        "Row 6: Dataverse ID 'not-a-guid' is not a valid ID, like 3f2504e0-4f89-11d3-9a0c-0305e82c3301",
        "Row 7: The Dataverse ID and the mailbox address 'good@example.gov.uk' are for different mailboxes",
        "Row 8: Enter the mailbox address or the Dataverse ID",
        "Row 9: More than one mailbox has the address 'dup@example.gov.uk'; add its Dataverse ID",
        f"Row 10: Notes must be {NOTES_MAX:,} characters or fewer",
        "Row 10: Enter why the mailbox is excluded from migration",
        "Row 10: The mailbox is also on row 2",
        "Row 11: Notes can only contain letters, numbers, spaces and punctuation",
        "Row 11: Exclusion reason must be empty when the mailbox is not excluded",
        "Row 11: The mailbox is also on row 4",
        "Row 12 has 2 cells, but the file has 6 columns. Check for commas that should be inside quotes",
    ]
    assert snapshot() == before
    assert not AuditEvent.objects.filter(action="inventory.annotation_changed").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "The selected file is empty"),
        (HEADER.encode() + b"\r\n", "The file has column headings but no rows"),
        (
            b"a@example.gov.uk,,,,no,\r\n",
            "The first row of the file must be the column headings: " + ", ".join(COLUMNS),
        ),
        (
            b"Mailbox address,Dataverse ID,Notes,Excluded\r\nx,,,no\r\n",
            "The file is missing the columns Owner correction, Exclusion reason",
        ),
        ((HEADER + ",Colour\r\n").encode(), "The file has columns the portal does not use: Colour"),
        ((HEADER + ",Notes\r\n").encode(), "The file has the column Notes more than once"),
        (
            HEADER.replace(",", ";").encode() + b"\r\na;;;;no;\r\n",
            "The selected file separates its columns with semicolons",
        ),
        (HEADER.replace(",", "\t").encode() + b"\r\n", "The selected file separates its columns with tabs"),
        (codecs.BOM_UTF16_LE + HEADER.encode("utf-16-le"), "The selected file is saved as UTF-16"),
        (HEADER.encode() + b"\r\ncaf\xe9@example.gov.uk,,,,no,\r\n", "The selected file must be saved as UTF-8"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "The selected file must be a CSV file"),
        (HEADER.encode() + b'\r\n"unclosed,,,,no,\r\n', "The selected file is not a valid CSV file"),
    ],
)
def test_files_that_are_not_the_right_csv_are_refused(migration_lead, content, message):
    found = problems(migration_lead, content)
    assert len(found) == 1
    assert found[0].startswith(message)


def test_too_many_rows_are_refused(migration_lead):
    rows = "".join(f"m{n}@example.gov.uk,,,,no,\r\n" for n in range(MAX_CSV_ROWS + 1))
    found = problems(migration_lead, (HEADER + "\r\n" + rows).encode())
    assert found == [f"The file has more than {MAX_CSV_ROWS:,} rows. Split it into smaller files and upload each one"]


def test_only_the_first_fifty_problems_are_listed(migration_lead):
    rows = [[f"nobody{n}@example.gov.uk", "", "", "", "no", ""] for n in range(80)]
    with pytest.raises(AnnotationImportError) as refused:
        annotations_import(actor=migration_lead, content=csv_bytes(*rows))
    assert len(refused.value.problems) == 50
    assert refused.value.hidden == 30


def test_a_failure_while_applying_rolls_every_row_back(migration_lead, monkeypatch):
    first = InventoryMailboxFactory()
    second = InventoryMailboxFactory()
    from migration.services import annotations as services

    real = services.audit_record
    calls = []

    def audit_then_fail(**kwargs):
        calls.append(kwargs)
        if len(calls) == 2:
            raise RuntimeError("database went away")
        return real(**kwargs)

    monkeypatch.setattr(services, "audit_record", audit_then_fail)
    content = csv_bytes(
        [first.email_address, "", "", "One", "no", ""],
        [second.email_address, "", "", "Two", "no", ""],
    )
    with pytest.raises(RuntimeError):
        annotations_import(actor=migration_lead, content=content)
    assert not InventoryAnnotation.objects.exists()
    assert not AuditEvent.objects.filter(action="inventory.annotation_changed").exists()


def test_removed_mailboxes_cannot_be_annotated_by_csv(migration_lead):
    removed = InventoryMailboxFactory(removed_at=timezone.now())
    found = problems(migration_lead, csv_bytes(["", str(removed.dataverse_id), "", "Note", "no", ""]))
    assert found == [f"Row 2: There is no mailbox with Dataverse ID {removed.dataverse_id} in the inventory"]


# --- one mailbox ----------------------------------------------------------------------------------


def test_saving_one_annotation_audits_before_and_after(migration_lead):
    mailbox = InventoryMailboxFactory()
    assert annotation_save(actor=migration_lead, mailbox_id=mailbox.pk, values=AnnotationValues(notes="First"))
    assert not annotation_save(actor=migration_lead, mailbox_id=mailbox.pk, values=AnnotationValues(notes="First"))
    assert annotation_save(
        actor=migration_lead,
        mailbox_id=mailbox.pk,
        values=AnnotationValues(notes="First", excluded=True, exclusion_reason="Test mailbox"),
    )
    events = list(AuditEvent.objects.filter(action="inventory.annotation_changed").order_by("seq"))
    assert len(events) == 2
    assert events[0].before_json == "null"
    assert json.loads(events[1].before_json)["excluded"] is False
    assert json.loads(events[1].after_json)["exclusion_reason"] == "Test mailbox"
