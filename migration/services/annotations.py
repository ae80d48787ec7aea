"""Inventory annotations: what people know about a mailbox that Dataverse does not.

An annotation holds an owner correction, notes and an exclusion from migration. It is edited one
mailbox at a time or in bulk through a CSV file with the columns of :data:`COLUMNS`, which is what
the export writes, so export → edit in a spreadsheet → import round-trips. A CSV is validated
whole before anything is saved; then every row is applied in one transaction with one audit event
per annotation that changed.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import io
import re
import unicodedata
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, replace

from django.db import transaction
from django.db.models.functions import Upper
from django.utils import timezone

from migration.models import InventoryAnnotation, InventoryMailbox
from portal.accounts.models import User
from portal.audit.services import audit_record
from portal.csv_safe import FORMULA_PREFIXES, csv_rows
from portal.exceptions import PortalError

COLUMNS = ("Mailbox address", "Dataverse ID", "Owner correction", "Notes", "Excluded", "Exclusion reason")
OWNER_CORRECTION_MAX = InventoryAnnotation._meta.get_field("owner_correction").max_length or 320
NOTES_MAX = 5000
EXCLUSION_REASON_MAX = 2000
MAX_CSV_BYTES = 5 * 1024 * 1024
MAX_CSV_ROWS = 10_000
MAX_PROBLEMS_SHOWN = 50
YES_WORDS = frozenset({"yes", "y", "true", "1"})
NO_WORDS = frozenset({"no", "n", "false", "0", ""})
_HEADER_KEYS = {re.sub(r"[^a-z]", "", column.lower()): column for column in COLUMNS}
_JOINERS = {"\u200c", "\u200d"}
# A cell the export protected with a leading apostrophe (any run of apostrophes before a formula character).
_PROTECTED = re.compile(r"^'+[=+\-@\t\r]")


@dataclass(frozen=True)
class AnnotationValues:
    owner_correction: str = ""
    notes: str = ""
    excluded: bool = False
    exclusion_reason: str = ""

    @classmethod
    def of(cls, annotation: InventoryAnnotation | None) -> AnnotationValues:
        if annotation is None:
            return cls()
        return cls(
            owner_correction=annotation.owner_correction,
            notes=annotation.notes,
            excluded=annotation.excluded,
            exclusion_reason=annotation.exclusion_reason,
        )

    @property
    def is_blank(self) -> bool:
        return self == AnnotationValues()


def _text_problem(value: str, *, multiline: bool) -> bool:
    """True when ``value`` holds control, unpaired-surrogate or invisible direction characters."""
    allowed = {"\n", "\r", "\t"} if multiline else set()
    for character in value:
        if character in allowed:
            continue
        category = unicodedata.category(character)
        if category in ("Cc", "Cs") or (category == "Cf" and character not in _JOINERS):
            return True
    return False


def annotation_problems(values: AnnotationValues) -> list[tuple[str, str]]:
    """``(field, message)`` for every rule ``values`` breaks; shared by the form page and the CSV import."""
    problems = []
    for name, label, limit, multiline in (
        ("owner_correction", "Owner correction", OWNER_CORRECTION_MAX, False),
        ("notes", "Notes", NOTES_MAX, True),
        ("exclusion_reason", "Exclusion reason", EXCLUSION_REASON_MAX, True),
    ):
        value = getattr(values, name)
        if len(value) > limit:
            problems.append((name, f"{label} must be {limit:,} characters or fewer"))
        elif _text_problem(value, multiline=multiline):
            problems.append((name, f"{label} can only contain letters, numbers, spaces and punctuation"))
    if values.excluded and not values.exclusion_reason.strip():
        problems.append(("exclusion_reason", "Enter why the mailbox is excluded from migration"))
    if not values.excluded and values.exclusion_reason.strip():
        problems.append(("exclusion_reason", "Exclusion reason must be empty when the mailbox is not excluded"))
    return problems


# --- one mailbox --------------------------------------------------------------------------------


def annotation_save(*, actor: User, mailbox_id: int, values: AnnotationValues) -> bool:
    """Save one mailbox's annotation; returns whether anything changed. Audited with before and after."""
    problems = annotation_problems(values)
    if problems:
        field, message = problems[0]
        raise PortalError(message, field=field)
    with transaction.atomic():
        mailbox = InventoryMailbox.objects.select_for_update().filter(pk=mailbox_id).first()
        if mailbox is None:
            raise PortalError("The mailbox is no longer in the inventory")
        return _apply(actor=actor, mailbox=mailbox, values=values, how="edited")


def _apply(*, actor: User, mailbox: InventoryMailbox, values: AnnotationValues, how: str) -> bool:
    """Inside a transaction that holds the mailbox's row lock."""
    annotation = InventoryAnnotation.objects.select_for_update().filter(mailbox=mailbox).first()
    existed = annotation is not None
    before = AnnotationValues.of(annotation)
    if before == values:
        return False  # a blank row for a mailbox without an annotation creates nothing
    now = timezone.now()
    if annotation is None:
        annotation = InventoryAnnotation(mailbox=mailbox)
    annotation.owner_correction = values.owner_correction
    annotation.notes = values.notes
    annotation.excluded = values.excluded
    annotation.exclusion_reason = values.exclusion_reason
    annotation.updated_at = now
    annotation.updated_by = actor
    annotation.save()
    audit_record(
        actor=actor,
        action="inventory.annotation_changed",
        object_type="inventory_mailbox",
        object_id=mailbox.pk,
        before=asdict(before) if existed else None,
        after=asdict(values),
        reason=f"Annotation {how} for {mailbox.email_address or mailbox.dataverse_id}",
    )
    return True


# --- export -------------------------------------------------------------------------------------


def _protect(value: str) -> str:
    """Add one apostrophe to a cell a spreadsheet would run as a formula, or that already carries one
    (so the import, which removes exactly one, gives back what was exported)."""
    return "'" + value if _PROTECTED.match(value) or value.startswith(FORMULA_PREFIXES) else value


def _unprotect(value: str) -> str:
    return value[1:] if _PROTECTED.match(value) else value


def annotations_csv() -> Iterator[str]:
    """Every annotation as CSV lines, streamed, with formula-like cells neutralised."""
    annotations = (
        InventoryAnnotation.objects.select_related("mailbox")
        .only(
            "owner_correction",
            "notes",
            "excluded",
            "exclusion_reason",
            "mailbox__email_address",
            "mailbox__dataverse_id",
        )
        .order_by("mailbox__email_address", "mailbox__pk")
    )
    rows = (
        (
            _protect(annotation.mailbox.email_address),
            str(annotation.mailbox.dataverse_id),
            _protect(annotation.owner_correction),
            _protect(annotation.notes),
            "yes" if annotation.excluded else "no",
            _protect(annotation.exclusion_reason),
        )
        for annotation in annotations.iterator(chunk_size=2000)
    )
    return csv_rows(COLUMNS, rows)


# --- import -------------------------------------------------------------------------------------


class AnnotationImportError(PortalError):
    """The CSV cannot be applied; ``problems`` lists every reason, row by row."""

    def __init__(self, problems: list[str], *, total: int | None = None) -> None:
        super().__init__(problems[0] if problems else "The file could not be imported", field="csv_file")
        self.problems = problems[:MAX_PROBLEMS_SHOWN]
        self.total = total if total is not None else len(problems)

    @property
    def hidden(self) -> int:
        return max(0, self.total - len(self.problems))


@dataclass(frozen=True)
class AnnotationImportResult:
    rows: int
    changed: int

    @property
    def unchanged(self) -> int:
        return self.rows - self.changed


@dataclass(frozen=True)
class _Row:
    number: int  # as a spreadsheet numbers it: the heading is row 1
    mailbox_id: int
    values: AnnotationValues


def _decode(content: bytes) -> str:
    if content.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE, codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        raise AnnotationImportError(
            ["The selected file is saved as UTF-16. Save it as CSV UTF-8 (comma delimited) and upload it again"]
        )
    if b"\x00" in content[:4096]:
        raise AnnotationImportError(["The selected file must be a CSV file"])
    try:
        return content.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise AnnotationImportError(
            [
                "The selected file must be saved as UTF-8 (the first character that is not UTF-8 is at byte "
                f"{error.start + 1:,}). Save it as CSV UTF-8 (comma delimited) and upload it again"
            ]
        ) from None


def _header(cells: list[str]) -> list[str]:
    """The column each heading names ("" for none), or the reason the first row is not the headings."""
    if len(cells) == 1:
        for delimiter, name in ((";", "semicolons"), ("\t", "tabs"), ("|", "vertical bars")):
            if delimiter in cells[0]:
                raise AnnotationImportError(
                    [
                        f"The selected file separates its columns with {name}. Save it as "
                        "CSV UTF-8 (comma delimited) so that commas separate the columns"
                    ]
                )
    names = [_HEADER_KEYS.get(re.sub(r"[^a-z]", "", cell.lower()), "") for cell in cells]
    if not any(names):
        raise AnnotationImportError(["The first row of the file must be the column headings: " + ", ".join(COLUMNS)])
    missing = [column for column in COLUMNS if column not in names]
    if missing:
        raise AnnotationImportError(
            [f"The file is missing the column{'s' if len(missing) > 1 else ''} " + ", ".join(missing)]
        )
    unknown = [cell.strip()[:40] for cell, name in zip(cells, names, strict=True) if not name]
    if unknown:
        raise AnnotationImportError(["The file has columns the portal does not use: " + ", ".join(unknown[:5])])
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise AnnotationImportError(["The file has the column " + ", ".join(duplicated) + " more than once"])
    return names


def _excluded(text: str) -> bool | None:
    word = text.strip().lower()
    if word in YES_WORDS:
        return True
    if word in NO_WORDS:
        return False
    return None


def _read_rows(text: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        if header is None or not any(cell.strip() for cell in header):
            raise AnnotationImportError(["The selected file is empty"])
        names = _header(header)
        rows: list[tuple[int, list[str]]] = []
        # Numbered as a spreadsheet shows them: the headings are row 1.
        for number, cells in enumerate(reader, start=2):
            if not any(cell.strip() for cell in cells):
                continue  # spreadsheet programs leave blank lines at the end
            if len(rows) >= MAX_CSV_ROWS:
                raise AnnotationImportError(
                    [f"The file has more than {MAX_CSV_ROWS:,} rows. Split it into smaller files and upload each one"]
                )
            rows.append((number, cells))
    except csv.Error as error:
        raise AnnotationImportError(
            [f"The selected file is not a valid CSV file: {error} (near line {reader.line_num:,})"]
        ) from None
    return names, rows


def annotations_import(*, actor: User, content: bytes) -> AnnotationImportResult:
    """Validate every row of the CSV, then apply all of them in one transaction, or none at all."""
    if len(content) > MAX_CSV_BYTES:
        raise AnnotationImportError([f"The selected file must be smaller than {MAX_CSV_BYTES // (1024 * 1024)}MB"])
    names, raw_rows = _read_rows(_decode(content))
    if not raw_rows:
        raise AnnotationImportError(["The file has column headings but no rows"])
    index = {name: position for position, name in enumerate(names) if name}
    parsed, problems = _validate(index, raw_rows)
    if problems:
        raise AnnotationImportError(problems)

    changed = 0
    with transaction.atomic():
        mailboxes = InventoryMailbox.objects.select_for_update().in_bulk([row.mailbox_id for row in parsed])
        for row in parsed:
            mailbox = mailboxes.get(row.mailbox_id)
            if mailbox is None:  # removed between the check and the lock
                raise AnnotationImportError([f"Row {row.number}: the mailbox is no longer in the inventory"])
            if _apply(actor=actor, mailbox=mailbox, values=row.values, how="imported from a CSV file"):
                changed += 1
    return AnnotationImportResult(rows=len(parsed), changed=changed)


def _validate(index: dict[str, int], raw_rows: list[tuple[int, list[str]]]) -> tuple[list[_Row], list[str]]:
    problems: list[tuple[int, str]] = []
    wanted_ids: set[uuid.UUID] = set()
    wanted_addresses: set[str] = set()
    cells_by_row: list[tuple[int, dict[str, str]]] = []
    for number, cells in raw_rows:
        if len(cells) != len(index):
            problems.append(
                (
                    number,
                    f"Row {number} has {len(cells)} {'cell' if len(cells) == 1 else 'cells'}, but the file has "
                    f"{len(index)} columns. Check for commas that should be inside quotes",
                )
            )
            continue
        values = {name: _unprotect(cells[position]) for name, position in index.items()}
        cells_by_row.append((number, values))
        written_id = values["Dataverse ID"].strip()
        if written_id:
            with contextlib.suppress(ValueError):  # reported row by row below
                wanted_ids.add(uuid.UUID(written_id.strip("{}")))
        if values["Mailbox address"].strip():
            wanted_addresses.add(values["Mailbox address"].strip().upper())

    by_id, by_address = _inventory_lookup(wanted_ids, wanted_addresses)
    parsed: list[_Row] = []
    first_row_of: dict[int, int] = {}
    for number, values in cells_by_row:
        mailbox_id, problem = _identify(values, by_id, by_address)
        row_problems = [problem] if problem else []
        excluded = _excluded(values["Excluded"])
        if excluded is None:
            row_problems.append(f"Excluded must be yes or no, not '{values['Excluded'].strip()[:40]}'")
        candidate = AnnotationValues(
            owner_correction=values["Owner correction"].strip(),
            notes=values["Notes"].strip(),
            excluded=bool(excluded),
            exclusion_reason=values["Exclusion reason"].strip(),
        )
        # With Excluded unreadable, check everything but whether the reason fits it.
        checked = candidate if excluded is not None else replace(candidate, excluded=bool(candidate.exclusion_reason))
        row_problems += [message for _field, message in annotation_problems(checked)]
        if mailbox_id is not None:
            if mailbox_id in first_row_of:
                row_problems.append(f"The mailbox is also on row {first_row_of[mailbox_id]}")
            else:
                first_row_of[mailbox_id] = number
        if row_problems:
            problems.extend((number, f"Row {number}: {message}") for message in row_problems)
        elif mailbox_id is not None:
            parsed.append(_Row(number=number, mailbox_id=mailbox_id, values=candidate))
    return parsed, [message for _number, message in sorted(problems, key=lambda problem: problem[0])]


def _inventory_lookup(
    ids: Iterable[uuid.UUID], addresses: Iterable[str]
) -> tuple[dict[uuid.UUID, int], dict[str, list[int]]]:
    live = InventoryMailbox.objects.filter(removed_at__isnull=True)
    by_id = dict(live.filter(dataverse_id__in=list(ids)).values_list("dataverse_id", "pk"))
    by_address: dict[str, list[int]] = defaultdict(list)
    rows = (
        live.annotate(address_upper=Upper("email_address"))
        .filter(address_upper__in=list(addresses))
        .order_by("pk")
        .values_list("address_upper", "pk")
    )
    for address, pk in rows:
        by_address[address].append(pk)
    return by_id, by_address


def _identify(
    values: dict[str, str], by_id: dict[uuid.UUID, int], by_address: dict[str, list[int]]
) -> tuple[int | None, str | None]:
    written_id = values["Dataverse ID"].strip()
    address = values["Mailbox address"].strip()
    if written_id:
        try:
            dataverse_id = uuid.UUID(written_id.strip("{}"))
        except ValueError:
            return (
                None,
                f"Dataverse ID '{written_id[:60]}' is not a valid ID, like 3f2504e0-4f89-11d3-9a0c-0305e82c3301",
            )
        mailbox_id = by_id.get(dataverse_id)
        if mailbox_id is None:
            return None, f"There is no mailbox with Dataverse ID {dataverse_id} in the inventory"
        if address and mailbox_id not in by_address.get(address.upper(), []):
            return None, f"The Dataverse ID and the mailbox address '{address[:100]}' are for different mailboxes"
        return mailbox_id, None
    if not address:
        return None, "Enter the mailbox address or the Dataverse ID"
    candidates = by_address.get(address.upper(), [])
    if not candidates:
        return None, f"There is no mailbox with the address '{address[:100]}' in the inventory"
    if len(candidates) > 1:
        return None, f"More than one mailbox has the address '{address[:100]}'; add its Dataverse ID"
    return candidates[0], None


def annotations_count() -> int:
    return InventoryAnnotation.objects.count()


def annotation_for(mailbox_id: int) -> tuple[InventoryMailbox, InventoryAnnotation | None] | None:
    mailbox = InventoryMailbox.objects.filter(pk=mailbox_id).select_related("annotation__updated_by").first()
    if mailbox is None:
        return None
    return mailbox, getattr(mailbox, "annotation", None)
