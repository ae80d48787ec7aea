"""The legacy source pages: the list, the upload page and its GOV.UK file-upload errors, the import page
that watches the job, and one source's profiles and mailboxes."""

from __future__ import annotations

import datetime as dt

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from migration.models import ImportStatus, LegacyMailboxLink, LegacySource, RouterImport
from migration.router_config import MAX_FILE_BYTES
from migration.services.router_import import router_import_run
from tests.migration.factories import InventoryMailboxFactory, LegacyMailboxLinkFactory, RouterImportFactory
from tests.migration.router_corpus import ROUTER_FILE_NAME, corpus_file, demo_router_file

pytestmark = pytest.mark.django_db

ADD_URL = reverse("migration:legacy_source_router_add")


@pytest.fixture(scope="module")
def demo_file(tmp_path_factory) -> bytes:
    return demo_router_file(tmp_path_factory.mktemp("demo-router"))


@pytest.fixture
def lead_client(client_for, migration_lead):
    return client_for(migration_lead)


def upload(client, content: bytes, *, name: str = ROUTER_FILE_NAME, server: str = "CRMROUTER01", state=None):
    data = {"server_name": server, "configuration_file": SimpleUploadedFile(name, content, "text/xml")}
    if state is not None:
        data["state_file"] = SimpleUploadedFile("Microsoft.Crm.Tools.EmailAgent.SystemState.xml", state, "text/xml")
    return client.post(ADD_URL, data)


def error_summary(response) -> str:
    html = response.content.decode()
    start = html.index('class="govuk-error-summary"')
    return html[start : html.index("</div>\n  </div>", start)]


# --- permissions --------------------------------------------------------------------------------


def test_the_pages_are_for_migration_leads_only(client_for, migration_lead, requester, outsider, client):
    record = RouterImportFactory()
    urls = [
        reverse("migration:legacy_sources"),
        ADD_URL,
        reverse("migration:legacy_source", args=[record.source_id]),
        reverse("migration:router_import", args=[record.pk]),
    ]
    for url in urls:
        assert client_for(migration_lead).get(url).status_code == 200, url
        assert client_for(requester).get(url).status_code == 403, url
        assert client_for(outsider).get(url).status_code == 403, url
        assert client.get(url).status_code == 302, url
    assert upload(client_for(requester), b"<Configuration/>").status_code == 403
    assert not RouterImport.objects.exclude(pk=record.pk).exists()


def test_unknown_ids_are_not_found(lead_client):
    assert lead_client.get(reverse("migration:legacy_source", args=[999999])).status_code == 404
    assert lead_client.get(reverse("migration:router_import", args=[999999])).status_code == 404


# --- uploading ----------------------------------------------------------------------------------


def test_uploading_the_demo_file_queues_it_and_the_import_page_refreshes_until_it_is_done(lead_client, demo_file):
    response = upload(lead_client, demo_file)

    record = RouterImport.objects.get()
    assert response.status_code == 302
    assert response.url == reverse("migration:router_import", args=[record.pk])
    page = lead_client.get(response.url).content.decode()
    assert '<meta http-equiv="refresh" content="3">' in page
    assert "This page refreshes itself every 3 seconds" in page

    router_import_run(import_id=record.pk)

    page = lead_client.get(response.url).content.decode()
    assert 'http-equiv="refresh"' not in page
    assert "Configuration imported" in page
    assert f"{record.source.name}" in page
    assert "Addresses not in the inventory" in page  # nothing is in the inventory yet
    assert "complaints@example.gov.uk" in page


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"server_name": "CRMROUTER01"}, "Select the Email Router configuration file"),
        ({"configuration_file": "x"}, "Enter the name of the Email Router server"),
    ],
)
def test_missing_answers_get_govuk_errors(lead_client, data, message):
    if "configuration_file" in data:
        data = {"configuration_file": SimpleUploadedFile(ROUTER_FILE_NAME, corpus_file("utf16_with_bom.xml"))}
    response = lead_client.post(ADD_URL, data)
    assert response.status_code == 200
    assert message in error_summary(response)
    assert not RouterImport.objects.exists()


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        (ROUTER_FILE_NAME, b"", "The selected file is empty"),
        ("router.txt", b"<Configuration/>", "The selected file must be an XML file"),
        ("EmailAgent.zip", corpus_file("archive.zip"), "The selected file must be an XML file"),
        (ROUTER_FILE_NAME, corpus_file("archive.zip"), "The selected file is a compressed archive"),
        (ROUTER_FILE_NAME, corpus_file("binary.bin"), "The selected file is not a text file"),
        (ROUTER_FILE_NAME, corpus_file("not_xml.txt"), "The selected file is not XML"),
        (ROUTER_FILE_NAME, corpus_file("utf16_without_bom.xml"), "without a byte order mark"),
        (ROUTER_FILE_NAME, corpus_file("latin1_undeclared.xml"), "does not say what encoding it uses"),
        (ROUTER_FILE_NAME, corpus_file("latin1_declared_utf8.xml"), "contains bytes that are not utf-8"),
        (ROUTER_FILE_NAME, corpus_file("utf32.xml"), "UTF-32"),
        (ROUTER_FILE_NAME, corpus_file("pdf.xml"), "The selected file is not a text file"),
        (ROUTER_FILE_NAME, corpus_file("unsupported_encoding.xml"), "which the portal does not read"),
    ],
)
def test_wrong_files_are_refused_on_the_upload_page(lead_client, name, content, message):
    response = upload(lead_client, content, name=name)
    assert response.status_code == 200
    assert message in error_summary(response)
    assert "govuk-file-upload--error" in response.content.decode()
    assert not RouterImport.objects.exists()


def test_a_file_over_32mb_is_refused_on_the_upload_page(lead_client):
    response = upload(lead_client, b"<Configuration>" + b" " * MAX_FILE_BYTES + b"</Configuration>")
    assert response.status_code == 200
    assert "The selected file must be smaller than 32MB" in error_summary(response)
    assert not RouterImport.objects.exists()


def test_a_wrong_system_state_file_is_refused_on_the_upload_page(lead_client):
    response = upload(lead_client, corpus_file("utf16_with_bom.xml"), state=corpus_file("binary.bin"))
    assert "The selected file is not a text file" in error_summary(response)
    assert "Microsoft.Crm.Tools.EmailAgent.SystemState.xml" in error_summary(response)


def test_an_upload_while_one_is_in_progress_is_refused_on_the_page(lead_client):
    upload(lead_client, corpus_file("utf16_with_bom.xml"))
    response = upload(lead_client, corpus_file("utf16_with_bom.xml"), server="crmrouter01")
    assert "already being imported" in error_summary(response)
    assert RouterImport.objects.count() == 1


# --- hostile files reach the import page with their message, never a 500 ------------------------


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("billion_laughs.xml", "declares XML entities"),
        ("quadratic_blowup.xml", "declares XML entities"),
        ("external_entity_file.xml", "declares XML entities"),
        ("external_entity_http.xml", "declares XML entities"),
        ("external_dtd.xml", "document type declaration"),
        ("undefined_entity.xml", "uses an entity that is not defined"),
        ("wrong_root.xml", "its top element is &lt;html&gt;, not &lt;Configuration&gt;"),
        ("system_state_as_configuration.xml", "SystemState file"),
        ("truncated.xml", "ends before its XML is complete"),
        ("malformed.xml", "is not well-formed XML"),
        ("deeply_nested.xml", "levels deep"),
        ("no_providers.xml", "has no &lt;ProviderConfiguration&gt; entries"),
    ],
)
def test_files_refused_by_the_job_show_their_message_on_the_import_page(lead_client, name, words):
    response = upload(lead_client, corpus_file(name))
    assert response.status_code == 302, error_summary(response)
    record = RouterImport.objects.get()
    router_import_run(import_id=record.pk)

    page = lead_client.get(response.url)
    html = page.content.decode()
    assert page.status_code == 200
    assert "The file could not be imported" in html
    assert words in html
    assert 'http-equiv="refresh"' not in html


def test_an_import_lost_for_an_hour_stops_refreshing(lead_client):
    record = RouterImportFactory(status=ImportStatus.RUNNING, uploaded_at=timezone.now() - dt.timedelta(hours=2))
    html = lead_client.get(reverse("migration:router_import", args=[record.pk])).content.decode()
    assert "did not finish within an hour" in html
    assert 'http-equiv="refresh"' not in html


def test_warnings_are_listed_on_the_import_page(lead_client):
    content = (
        b"<Configuration><Licensing/><ProviderConfiguration><Direction>Inbound</Direction>"
        b"<Target>a@example.gov.uk</Target><PollingJitter>3</PollingJitter></ProviderConfiguration></Configuration>"
    )
    response = upload(lead_client, content)
    router_import_run(import_id=RouterImport.objects.get().pk)
    html = lead_client.get(response.url).content.decode()
    assert "Warnings" in html
    assert "Unknown element &lt;PollingJitter&gt; inside &lt;ProviderConfiguration&gt;" in html
    assert "Unknown element &lt;Licensing&gt; inside &lt;Configuration&gt;" in html


# --- the list and one source --------------------------------------------------------------------


def test_the_list_shows_each_source_with_its_counts_and_last_import(lead_client, django_assert_max_num_queries):
    matched = LegacyMailboxLinkFactory()
    LegacyMailboxLinkFactory(router_import=matched.router_import, mailbox=None, email_address="gone@example.gov.uk")
    with django_assert_max_num_queries(8):
        html = lead_client.get(reverse("migration:legacy_sources")).content.decode()
    source = matched.source
    assert source.name in html
    assert reverse("migration:legacy_source", args=[source.pk]) in html
    assert reverse("migration:router_import", args=[matched.router_import_id]) in html
    assert "Add an Email Router" in html


def test_the_list_makes_the_same_queries_for_many_sources(lead_client):
    LegacyMailboxLinkFactory()
    with CaptureQueriesContext(connection) as few:
        lead_client.get(reverse("migration:legacy_sources"))
    for _ in range(20):
        LegacyMailboxLinkFactory()
    with CaptureQueriesContext(connection) as many:
        lead_client.get(reverse("migration:legacy_sources"))
    assert len(many) == len(few)


def test_a_source_page_lists_profiles_and_served_mailboxes_linked_to_the_inventory(lead_client, demo_file):
    mailbox = InventoryMailboxFactory(email_address="complaints@example.gov.uk", name="Complaints queue")
    upload(lead_client, demo_file)
    record = RouterImport.objects.get()
    router_import_run(import_id=record.pk)
    url = reverse("migration:legacy_source", args=[record.source_id])

    html = lead_client.get(url).content.decode()
    assert "Legacy Exchange incoming" in html
    assert "smtp.example.gov.uk" in html
    assert reverse("migration:inventory_mailbox", args=[mailbox.pk]) in html
    assert "Complaints queue" in html
    assert 'aria-label="Mailboxes served pages"' in html  # more than one page

    unmatched = lead_client.get(url, {"show": "unmatched"}).content.decode()
    assert "Complaints queue" not in unmatched
    assert "Not matched" in unmatched
    second = lead_client.get(url, {"show": "unmatched", "page": 2})
    assert second.status_code == 200
    assert "show=unmatched" in second.content.decode()


def test_a_source_page_offers_a_new_upload_with_the_server_name_filled_in(lead_client):
    source = RouterImportFactory().source
    html = lead_client.get(reverse("migration:legacy_source", args=[source.pk])).content.decode()
    assert f"{ADD_URL}?source={source.pk}" in html
    form = lead_client.get(ADD_URL, {"source": source.pk}).content.decode()
    assert f'value="{source.name}"' in form


def test_the_upload_page_uses_the_govuk_file_upload_component(lead_client):
    html = lead_client.get(ADD_URL).content.decode()
    assert 'enctype="multipart/form-data"' in html
    assert html.count('class="govuk-file-upload"') == 2
    assert 'accept=".xml,text/xml,application/xml"' in html
    assert "<script>" not in html.split("<main", 1)[1]


def test_nothing_is_linked_twice_when_the_same_address_appears_in_many_providers(lead_client):
    providers = "".join(
        f"<ProviderConfiguration><Direction>{d}</Direction><Target>Same@Example.gov.uk</Target>"
        f"<ProfileName>{d}</ProfileName></ProviderConfiguration>"
        for d in ("Inbound", "Outbound", "Inbound")
    )
    upload(lead_client, f"<Configuration>{providers}</Configuration>".encode())
    router_import_run(import_id=RouterImport.objects.get().pk)
    assert LegacyMailboxLink.objects.count() == 1
    assert LegacySource.objects.count() == 1
