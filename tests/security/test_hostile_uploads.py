"""A corpus of hostile files, built in code, sent to every upload in the portal.

Each file must be refused with a clear error on the page or accepted safely: never a server
error or a stack trace, nothing half-saved, and nothing written to disk, anywhere. Files the
portal accepts are then followed where they go: the Email Router import reads the XML for
real, a wave is built from the CSV, annotations reach the export, evidence comes back as a
download that no browser will run.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.urls import reverse

from migration.models import (
    DecommissionEvidence,
    ImportStatus,
    InventoryAnnotation,
    LegacySourceKind,
    RouterImport,
    Wave,
)
from migration.router_config import MAX_FILE_BYTES
from migration.selectors.decommission import ALL_MIGRATED
from migration.services import decommission
from migration.services.annotations import COLUMNS
from migration.services.annotations import MAX_CSV_BYTES as ANNOTATIONS_MAX
from migration.services.decommission import MAX_EVIDENCE_BYTES
from migration.services.router_import import router_import_run
from migration.services.waves import MAX_CSV_BYTES as WAVE_CSV_MAX
from portal.policy.services import policy_get
from tests.migration.factories import InventoryMailboxFactory, LegacySourceFactory
from tests.security.hostile import (
    HOSTILE_NAMES,
    HostileFile,
    assert_formulas_neutralised,
    assert_no_crash,
    assert_nothing_saved,
    assert_refused,
    body_of,
    common_files,
    csv_cells,
    csv_files,
    snapshot,
    xml_files,
)

pytestmark = pytest.mark.django_db

REDIRECT = (301, 302, 303)
ROUTER_XML = (
    b'<?xml version="1.0" encoding="utf-8"?><Configuration><SystemConfiguration><MaxThreads>1</MaxThreads>'
    b"</SystemConfiguration></Configuration>"
)
WAVE_HEADER = "Email address,Priority"
ANNOTATIONS_HEADER = ",".join(COLUMNS)


def _ids(files: list[HostileFile]) -> list[str]:
    return [file.label for file in files]


ROUTER_FILES = common_files(extension="xml", limit=MAX_FILE_BYTES) + xml_files(limit=MAX_FILE_BYTES)
WAVE_FILES = common_files(extension="csv", limit=WAVE_CSV_MAX) + csv_files(limit=WAVE_CSV_MAX, header=WAVE_HEADER)
ANNOTATION_FILES = common_files(extension="csv", limit=ANNOTATIONS_MAX) + csv_files(
    limit=ANNOTATIONS_MAX, header=ANNOTATIONS_HEADER
)
EVIDENCE_FILES = [
    *common_files(extension="pdf", limit=MAX_EVIDENCE_BYTES),
    HostileFile("PNG with a script after it", "shot.png", b"\x89PNG\r\n\x1a\n" + b"<script>alert(1)</script>"),
    HostileFile("SVG", "drawing.svg", b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>', "image/svg+xml"),
    HostileFile("XML", "data.txt", b'<?xml version="1.0"?><a/>', "text/plain"),
    HostileFile("text with a formula", "note.csv", b'=HYPERLINK("https://evil.example")\n', "text/csv"),
]


@pytest.fixture
def upload_dir(settings, tmp_path):
    """Uploads large enough to spill to disk go here, so the test can see that none is left behind."""
    directory = tmp_path / "uploads"
    directory.mkdir()
    settings.FILE_UPLOAD_TEMP_DIR = str(directory)
    return directory


@pytest.fixture
def disk(upload_dir):
    """What the portal might write to: its own folders and the system's password file."""
    watched = [Path(django_settings.BASE_DIR), Path(django_settings.VAR_DIR), upload_dir]
    passwd = Path("/etc/passwd")
    before = {folder: _listing(folder) for folder in watched}
    passwd_digest = hashlib.sha256(passwd.read_bytes()).hexdigest() if passwd.exists() else ""
    yield
    for folder in watched:
        assert _listing(folder) == before[folder], f"a file was written in {folder}"
    if passwd.exists():
        assert hashlib.sha256(passwd.read_bytes()).hexdigest() == passwd_digest


def _listing(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


@pytest.fixture
def lead_client(migration_lead, client_for):
    policy_get()
    return client_for(migration_lead)


def post_upload(client, url: str, data: dict) -> bool:
    """POST an upload; whether it was refused. A refusal shows the error summary and saves nothing."""
    before = snapshot()
    response = client.post(url, data)
    body = assert_no_crash(response, [value.name for value in data.values() if hasattr(value, "name")])
    if response.status_code in REDIRECT:
        return False
    assert_refused(response, body)
    assert_nothing_saved(before)
    return True


# --- Email Router configuration ------------------------------------------------------------------------


def _import_router_file(client, *, name: str, content: bytes, state: HostileFile | None = None):
    data = {"server_name": "CRMROUTER01", "configuration_file": HostileFile("", name, content, "text/xml").upload()}
    if state is not None:
        data["state_file"] = state.upload()
    return post_upload(client, reverse("migration:legacy_source_router_add"), data)


def _read_in_background(record: RouterImport) -> RouterImport:
    """What the import job does, run here: it must finish quickly, as imported or with a message."""
    started = time.monotonic()
    router_import_run(import_id=record.pk)
    record.refresh_from_db()
    assert time.monotonic() - started < 30
    assert record.status in (ImportStatus.SUCCEEDED, ImportStatus.FAILED)
    if record.status == ImportStatus.FAILED:
        assert record.error and "Traceback" not in record.error
    return record


@pytest.mark.parametrize("file", ROUTER_FILES, ids=_ids(ROUTER_FILES))
def test_router_configuration_uploads_refuse_hostile_files_or_read_them_safely(lead_client, disk, file):
    refused = _import_router_file(lead_client, name=file.name, content=file.content)
    if refused:
        return
    record = _read_in_background(RouterImport.objects.get())
    stored = " ".join(str(value) for value in RouterImport.objects.values().get().values())
    # No entity was expanded: neither the system's password file nor a billion laughs.
    assert "root:" not in stored and "lollollol" not in stored
    assert_no_crash(lead_client.get(reverse("migration:router_import", args=[record.pk])))


@pytest.mark.parametrize("file", xml_files(limit=MAX_FILE_BYTES)[:6], ids=_ids(xml_files(limit=MAX_FILE_BYTES)[:6]))
def test_a_hostile_state_file_is_refused_or_read_safely(lead_client, disk, file):
    refused = _import_router_file(
        lead_client, name="Microsoft.Crm.Tools.EmailAgent.xml", content=ROUTER_XML, state=file
    )
    if not refused:
        _read_in_background(RouterImport.objects.get())


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_router_file_names_are_kept_as_plain_names(lead_client, disk, name):
    refused = _import_router_file(lead_client, name=name + ".xml", content=ROUTER_XML)
    if not refused:
        record = RouterImport.objects.get()
        assert "/" not in record.file_name and "\\" not in record.file_name and "\x00" not in record.file_name
        assert len(record.file_name) <= 255
        assert_no_crash(lead_client.get(reverse("migration:router_import", args=[record.pk])), name)


# --- the wave CSV -----------------------------------------------------------------------------------------


@pytest.fixture
def wave_started(lead_client):
    InventoryMailboxFactory(email_address="payroll@example.gov.uk", classification="email_router", readiness="ready")
    lead_client.post(reverse("migration:wave_new"), {"name": "From a file", "source": "csv"})
    return lead_client


@pytest.mark.parametrize("file", WAVE_FILES, ids=_ids(WAVE_FILES))
def test_wave_csv_uploads_refuse_hostile_files_or_build_the_wave_safely(wave_started, disk, file):
    refused = post_upload(wave_started, reverse("migration:wave_new_upload"), {"csv_file": file.upload()})
    if refused:
        return
    # Only the session holds the file so far; creating the wave reads it again.
    response = wave_started.post(reverse("migration:wave_new_check"))
    assert_no_crash(response)
    wave = Wave.objects.first()
    if wave is not None:
        assert_no_crash(wave_started.get(reverse("migration:wave", args=[wave.pk])))


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_wave_csv_file_names_are_never_used_as_paths(wave_started, disk, name):
    upload = HostileFile("", name, b"Email address\npayroll@example.gov.uk\n", "text/csv").upload()
    refused = post_upload(wave_started, reverse("migration:wave_new_upload"), {"csv_file": upload})
    if not refused:
        assert_no_crash(wave_started.post(reverse("migration:wave_new_check")), name)


# --- annotations ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("file", ANNOTATION_FILES, ids=_ids(ANNOTATION_FILES))
def test_annotation_uploads_refuse_hostile_files_and_the_export_stays_formula_free(lead_client, disk, file):
    mailbox = InventoryMailboxFactory(email_address="payroll@example.gov.uk")
    content = file.content.replace(b"name@example.gov.uk", mailbox.email_address.encode())
    upload = HostileFile(file.label, file.name, content, file.content_type).upload()
    refused = post_upload(lead_client, reverse("migration:annotations"), {"csv_file": upload})
    if not refused:
        assert InventoryAnnotation.objects.count() <= 1
    export = lead_client.get(reverse("migration:annotations_export"))
    assert_formulas_neutralised(csv_cells(body_of(export)))


def test_annotations_with_formulas_come_back_neutralised(lead_client, disk):
    mailbox = InventoryMailboxFactory(email_address="payroll@example.gov.uk")
    row = f'{mailbox.email_address},,"=HYPERLINK(""https://evil.example"")","@SUM(1+1)",yes,"+cmd"\n'
    upload = HostileFile("", "a.csv", (ANNOTATIONS_HEADER + "\n" + row).encode(), "text/csv").upload()
    post_upload(lead_client, reverse("migration:annotations"), {"csv_file": upload})
    export = lead_client.get(reverse("migration:annotations_export"))
    assert_formulas_neutralised(csv_cells(body_of(export)))


# --- decommissioning evidence ---------------------------------------------------------------------------------


@pytest.fixture
def checklist_item(migration_lead):
    router = LegacySourceFactory(name="CRMROUTER01", kind=LegacySourceKind.EMAIL_ROUTER, created_by=migration_lead)
    plan = decommission.decommission_plan_ensure(actor=migration_lead, source_id=router.pk)
    return plan.items.exclude(code=ALL_MIGRATED).order_by("pk").first()


def _send_evidence(client, item, upload) -> bool:
    data = {"done": "yes", "evidence_note": "Switched off.", "evidence_file": upload}
    return post_upload(client, reverse("migration:decommission_item", args=[item.pk]), data)


def _download_is_inert(client, evidence: DecommissionEvidence) -> None:
    response = client.get(reverse("migration:decommission_evidence", args=[evidence.pk]))
    assert response.status_code == 200
    assert response["Content-Disposition"].startswith("attachment")
    assert "\n" not in response["Content-Disposition"] and "\r" not in response["Content-Disposition"]
    assert response["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in response["Content-Security-Policy"]
    assert response["Content-Type"].split(";")[0] in (
        "application/pdf",
        "image/png",
        "image/jpeg",
        "text/plain",
        "text/csv",
    )


@pytest.mark.parametrize("file", EVIDENCE_FILES, ids=_ids(EVIDENCE_FILES))
def test_evidence_uploads_refuse_hostile_files_and_serve_accepted_ones_inertly(lead_client, checklist_item, disk, file):
    refused = _send_evidence(lead_client, checklist_item, file.upload())
    if not refused:
        evidence = DecommissionEvidence.objects.get()
        assert bytes(evidence.content) == file.content
        _download_is_inert(lead_client, evidence)


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_evidence_file_names_are_kept_as_plain_names(lead_client, checklist_item, disk, name):
    refused = _send_evidence(
        lead_client, checklist_item, HostileFile("", name, b"Change CHG0012345 closed.\n", "text/plain").upload()
    )
    if not refused:
        evidence = DecommissionEvidence.objects.get()
        assert "/" not in evidence.file_name and "\\" not in evidence.file_name
        assert all(character.isprintable() for character in evidence.file_name)
        _download_is_inert(lead_client, evidence)
        assert_no_crash(
            lead_client.get(reverse("migration:decommission_plan", args=[checklist_item.plan.source_id])), name
        )


def test_a_body_larger_than_the_portal_reads_is_refused_without_saving(lead_client, checklist_item, disk):
    # Past DATA_UPLOAD_MAX_MEMORY_SIZE for the text fields: Django refuses it before the form sees it.
    before = snapshot()
    response = lead_client.post(
        reverse("migration:decommission_item", args=[checklist_item.pk]),
        {"done": "yes", "evidence_note": "x" * (django_settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1)},
    )
    assert_no_crash(response)
    assert response.status_code == 400
    assert_nothing_saved(before)


def test_more_fields_than_the_portal_reads_are_refused_without_saving(lead_client, checklist_item, disk):
    before = snapshot()
    fields = {f"field{n}": "x" for n in range(django_settings.DATA_UPLOAD_MAX_NUMBER_FIELDS + 1)}
    response = lead_client.post(
        reverse("migration:decommission_item", args=[checklist_item.pk]), {"done": "yes", **fields}
    )
    assert_no_crash(response)
    assert response.status_code == 400
    assert_nothing_saved(before)
