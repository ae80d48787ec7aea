"""Importing an Email Router configuration: the upload is stored and queued, the job records the router's
profiles and served mailboxes, matches them to the inventory and classifies them again."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from django.utils import timezone
from rq import SimpleWorker
from rq.timeouts import JobTimeoutException

from migration.jobs import router_import_job
from migration.models import (
    Classification,
    ImportStatus,
    InventoryMailbox,
    LegacyMailboxLink,
    LegacyProfile,
    LegacySource,
    LegacySourceKind,
    RouterImport,
)
from migration.router_config import parse_router_configuration
from migration.services import router_import as services
from migration.services.router_import import (
    MESSAGE_LOST,
    MESSAGE_NOT_QUEUED,
    MESSAGE_TIMED_OUT,
    MESSAGE_UNEXPECTED,
    ROUTER_IMPORT_JOB_TIMEOUT,
    router_import_request,
    router_import_run,
)
from portal.audit.models import AuditEvent
from portal.exceptions import InvalidStateError, PortalError
from tests.migration.factories import InventoryMailboxFactory, LegacySourceFactory
from tests.migration.router_corpus import ROUTER_FILE_NAME, corpus_file, demo_router_file

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def demo_file(tmp_path_factory) -> bytes:
    return demo_router_file(tmp_path_factory.mktemp("demo-router"))


def router_file(*entries: tuple[str, str]) -> bytes:
    """A small configuration: (address, mailbox id or "") per mailbox, incoming and outgoing."""
    providers = []
    for address, mailbox_id in entries:
        for direction, profile in (("Inbound", "POP3 in"), ("Outbound", "SMTP out")):
            providers.append(
                f"<ProviderConfiguration><Direction>{direction}</Direction><ProfileName>{profile}</ProfileName>"
                f"<EmailServer>mail.example.gov.uk</EmailServer><Target>{address}</Target>"
                f"<CrmObjectType>user</CrmObjectType>"
                + (f"<MailboxId>{mailbox_id}</MailboxId>" if mailbox_id else "")
                + "</ProviderConfiguration>"
            )
    return ("<Configuration>" + "".join(providers) + "</Configuration>").encode()


HYBRID_PROFILE = uuid.uuid4()


def router_mailbox(**fields) -> InventoryMailbox:
    """An inventory mailbox set to "Server-Side Synchronization or Email Router" on an on-premises
    profile: only a router configuration that lists it makes it an Email Router mailbox."""
    defaults = {
        "profile_id": HYBRID_PROFILE,
        "profile_name": "Exchange (hybrid)",
        "incoming_delivery": 2,
        "outgoing_delivery": 2,
        "act_delivery": 2,
        "incoming_status": 0,
        "outgoing_status": 0,
        "act_status": 0,
    }
    return InventoryMailboxFactory(**{**defaults, **fields})


def request_import(actor, content: bytes, *, server: str = "CRMROUTER01", **kwargs) -> RouterImport:
    return router_import_request(actor=actor, server_name=server, file_name=ROUTER_FILE_NAME, content=content, **kwargs)


def import_now(actor, content: bytes, **kwargs) -> RouterImport:
    record = request_import(actor, content, **kwargs)
    router_import_run(import_id=record.pk)
    record.refresh_from_db()
    return record


# --- the upload ---------------------------------------------------------------------------------


def test_an_upload_is_stored_audited_and_queued_after_commit(
    migration_lead, redis_queue, django_capture_on_commit_callbacks
):
    content = router_file(("a@example.gov.uk", ""))
    with django_capture_on_commit_callbacks(execute=True):
        record = request_import(migration_lead, content, state_file_name="state.xml", state_content=b"<SystemState/>")
        assert redis_queue.count == 0  # nothing is queued before the transaction commits

    record.refresh_from_db()
    assert record.status == ImportStatus.QUEUED
    assert bytes(record.content) == content
    assert record.file_size == len(content)
    assert len(record.file_sha256) == 64
    assert bytes(record.state_content) == b"<SystemState/>"
    assert record.source.kind == LegacySourceKind.EMAIL_ROUTER
    assert record.source.name == "CRMROUTER01"
    assert list(AuditEvent.objects.order_by("seq").values_list("action", flat=True)) == [
        "legacy_source.created",
        "router_import.requested",
    ]
    [job] = redis_queue.get_jobs()
    assert job.func_name == "migration.jobs.router_import_job"
    assert job.args == (record.pk,)
    assert job.timeout == ROUTER_IMPORT_JOB_TIMEOUT


def test_a_second_upload_for_the_same_server_whatever_its_case_uses_the_same_source(migration_lead):
    first = import_now(migration_lead, router_file(("a@example.gov.uk", "")))
    second = request_import(migration_lead, router_file(("a@example.gov.uk", "")), server="crmrouter01")
    assert second.source_id == first.source_id
    assert LegacySource.objects.count() == 1


def test_an_upload_while_an_import_is_running_is_refused(migration_lead):
    request_import(migration_lead, router_file(("a@example.gov.uk", "")))
    with pytest.raises(InvalidStateError, match="already being imported"):
        request_import(migration_lead, router_file(("a@example.gov.uk", "")))


def test_an_import_lost_for_an_hour_is_stopped_by_the_next_upload(migration_lead):
    lost = request_import(migration_lead, router_file(("a@example.gov.uk", "")))
    RouterImport.objects.filter(pk=lost.pk).update(
        status=ImportStatus.RUNNING, uploaded_at=timezone.now() - dt.timedelta(hours=2)
    )
    request_import(migration_lead, router_file(("a@example.gov.uk", "")))
    lost.refresh_from_db()
    assert lost.status == ImportStatus.FAILED
    assert lost.error == MESSAGE_LOST


def test_a_name_already_used_by_another_kind_of_source_is_refused(migration_lead):
    LegacySourceFactory(name="OUTLOOK-EAST", kind=LegacySourceKind.OUTLOOK_CLIENT)
    with pytest.raises(PortalError) as refused:
        request_import(migration_lead, router_file(("a@example.gov.uk", "")), server="outlook-east")
    assert refused.value.field == "server_name"


def test_when_the_queue_is_down_the_import_says_so(migration_lead, monkeypatch, django_capture_on_commit_callbacks):
    def refuse(*args, **kwargs):
        raise ConnectionError("Redis is down")

    monkeypatch.setattr("portal.queue.django_rq.get_queue", refuse)
    with django_capture_on_commit_callbacks(execute=True):
        record = request_import(migration_lead, router_file(("a@example.gov.uk", "")))
    record.refresh_from_db()
    assert record.status == ImportStatus.FAILED
    assert record.error == MESSAGE_NOT_QUEUED


# --- the job: the demo organisation's router ----------------------------------------------------


def test_the_demo_router_file_imports_and_links_its_mailboxes(migration_lead, demo_file):
    served = parse_router_configuration(demo_file).mailboxes
    inventory = {}
    for index, mailbox in enumerate(served):
        if index % 10 == 9:
            continue  # not (yet) in the inventory
        address = mailbox.address.upper() if index % 10 == 3 else mailbox.address  # case differs
        inventory[mailbox.address] = router_mailbox(
            dataverse_id=mailbox.mailbox_id, email_address=address, name=mailbox.name
        )
    missing = [m.address for m in served if m.address not in inventory]

    record = import_now(migration_lead, demo_file)

    assert record.status == ImportStatus.SUCCEEDED, record.error
    assert record.profiles_found == 2
    assert record.mailboxes_found == len(served)
    assert record.mailboxes_matched == len(inventory)
    assert record.system_configuration["settings"]["MaxThreads"] == "50"
    assert record.system_configuration["deployments"][0]["name"] == "Example"
    assert record.warnings == []
    assert set(LegacyProfile.objects.values_list("name", "direction")) == {
        ("Legacy Exchange incoming", "incoming"),
        ("Legacy Exchange outgoing", "outgoing"),
    }
    links = {link.email_address: link for link in LegacyMailboxLink.objects.all()}
    assert len(links) == len(served)
    for address, mailbox in inventory.items():
        assert links[address].mailbox_id == mailbox.pk
    assert sorted(a for a, link in links.items() if link.mailbox_id is None) == sorted(missing)
    complaints = links["complaints@example.gov.uk"]
    assert (complaints.object_type, complaints.object_name) == ("queue", "Complaints")
    assert complaints.directions == ["incoming", "outgoing"]
    assert complaints.raw["deployment"] == "Example"
    # Listed by the router and not on the Exchange Online profile: classified as Email Router.
    classifications = set(
        InventoryMailbox.objects.filter(pk__in=[m.pk for m in inventory.values()]).values_list(
            "classification", flat=True
        )
    )
    assert classifications == {Classification.EMAIL_ROUTER}
    event = AuditEvent.objects.get(action="router_import.succeeded")
    assert event.actor_name == "System"
    assert f'"matched":{len(inventory)}' in event.after_json


def test_the_import_runs_on_a_real_worker(migration_lead, demo_file, redis_queue, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        record = request_import(migration_lead, demo_file)
    SimpleWorker([redis_queue], connection=redis_queue.connection).work(burst=True)
    record.refresh_from_db()
    assert record.status == ImportStatus.SUCCEEDED
    assert record.mailboxes_found == LegacyMailboxLink.objects.count() > 0


def test_matching_prefers_the_mailbox_id_and_ignores_removed_and_ambiguous_mailboxes(migration_lead):
    by_id = router_mailbox(email_address="renamed@example.gov.uk")
    router_mailbox(email_address="moved@example.gov.uk")  # the address the file has for by_id's mailbox
    removed = router_mailbox(email_address="removed@example.gov.uk", removed_at=timezone.now())
    router_mailbox(email_address="Shared@example.gov.uk")
    router_mailbox(email_address="shared@EXAMPLE.gov.uk")
    content = router_file(
        ("moved@example.gov.uk", f"{{{str(by_id.dataverse_id).upper()}}}"),
        ("removed@example.gov.uk", str(removed.dataverse_id)),
        ("shared@example.gov.uk", ""),
    )

    record = import_now(migration_lead, content)

    links = dict(LegacyMailboxLink.objects.values_list("email_address", "mailbox_id"))
    assert links == {"moved@example.gov.uk": by_id.pk, "removed@example.gov.uk": None, "shared@example.gov.uk": None}
    assert record.mailboxes_matched == 1
    assert record.warnings == [
        "shared@example.gov.uk is the address of 2 inventory mailboxes, so it was not linked to any of them."
    ]


def test_a_new_import_replaces_the_last_and_reclassifies_the_mailboxes_it_dropped(migration_lead, monkeypatch):
    kept = router_mailbox(email_address="kept@example.gov.uk")
    dropped = router_mailbox(email_address="dropped@example.gov.uk")
    first = import_now(migration_lead, router_file(("kept@example.gov.uk", ""), ("dropped@example.gov.uk", "")))
    assert InventoryMailbox.objects.get(pk=dropped.pk).classification == Classification.EMAIL_ROUTER

    reclassified: list[list[int]] = []
    real = services.inventory_reclassify

    def spy(*, mailbox_ids):
        ids = list(mailbox_ids)
        reclassified.append(ids)
        return real(mailbox_ids=ids)

    monkeypatch.setattr(services, "inventory_reclassify", spy)
    second = import_now(migration_lead, router_file(("kept@example.gov.uk", "")))

    assert second.status == ImportStatus.SUCCEEDED
    assert reclassified == [sorted([kept.pk, dropped.pk])]
    assert list(LegacyMailboxLink.objects.values_list("email_address", "router_import_id")) == [
        ("kept@example.gov.uk", second.pk)
    ]
    assert not LegacyProfile.objects.filter(router_import=first).exists()
    assert InventoryMailbox.objects.get(pk=dropped.pk).classification == Classification.SSS_WRONG_PROFILE
    assert InventoryMailbox.objects.get(pk=kept.pk).classification == Classification.EMAIL_ROUTER


def test_a_duplicate_job_does_nothing(migration_lead):
    record = request_import(migration_lead, router_file(("a@example.gov.uk", "")))
    router_import_job(record.pk)
    assert router_import_run(import_id=record.pk) is None
    assert AuditEvent.objects.filter(action="router_import.succeeded").count() == 1


# --- the job: files that cannot be imported -----------------------------------------------------


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("billion_laughs.xml", "entity"),
        ("external_entity_file.xml", "entity"),
        ("external_dtd.xml", "dtd"),
        ("truncated.xml", "truncated"),
        ("wrong_root.xml", "wrong_root"),
        ("utf16_without_bom.xml", "utf16_no_bom"),
        ("deeply_nested.xml", "too_deep"),
        ("no_providers.xml", "no_providers"),
    ],
)
def test_a_file_that_cannot_be_imported_fails_with_its_message_and_changes_nothing(migration_lead, name, code):
    mailbox = router_mailbox(email_address="a@example.gov.uk")
    import_now(migration_lead, router_file(("a@example.gov.uk", "")))

    record = import_now(migration_lead, corpus_file(name))

    assert record.status == ImportStatus.FAILED
    assert record.error.startswith("The configuration file ")
    assert LegacyMailboxLink.objects.get().mailbox_id == mailbox.pk  # the previous import stands
    event = AuditEvent.objects.get(action="router_import.failed")
    assert event.outcome == "failure"
    assert f'"code":"{code}"' in event.after_json
    assert event.reason == record.error


def test_a_broken_system_state_file_fails_the_import(migration_lead):
    record = import_now(
        migration_lead,
        router_file(("a@example.gov.uk", "")),
        state_file_name="state.xml",
        state_content=corpus_file("external_entity_http.xml"),
    )
    assert record.status == ImportStatus.FAILED
    assert record.error.startswith("The SystemState file declares XML entities")


def test_an_unexpected_error_fails_the_import_rolls_back_and_is_raised(migration_lead, monkeypatch):
    router_mailbox(email_address="a@example.gov.uk")

    def broken(*, mailbox_ids):
        raise RuntimeError("classification is broken")

    monkeypatch.setattr(services, "inventory_reclassify", broken)
    record = request_import(migration_lead, router_file(("a@example.gov.uk", "")))
    with pytest.raises(RuntimeError):
        router_import_run(import_id=record.pk)
    record.refresh_from_db()
    assert record.status == ImportStatus.FAILED
    assert record.error == MESSAGE_UNEXPECTED
    assert not LegacyMailboxLink.objects.exists()
    assert not LegacyProfile.objects.exists()


def test_a_job_stopped_for_taking_too_long_says_so(migration_lead, monkeypatch):
    def slow(*args, **kwargs):
        raise JobTimeoutException("Task exceeded maximum timeout value")

    monkeypatch.setattr(services, "parse_router_configuration", slow)
    record = request_import(migration_lead, router_file(("a@example.gov.uk", "")))
    with pytest.raises(JobTimeoutException):
        router_import_run(import_id=record.pk)
    record.refresh_from_db()
    assert record.status == ImportStatus.FAILED
    assert record.error == MESSAGE_TIMED_OUT


def test_passwords_in_the_file_are_not_stored_with_the_links(migration_lead):
    content = (
        b"<Configuration><ProviderConfiguration><Direction>Inbound</Direction><Target>a@example.gov.uk</Target>"
        b"<EmailPassword>correct-horse</EmailPassword></ProviderConfiguration></Configuration>"
    )
    import_now(migration_lead, content)
    link = LegacyMailboxLink.objects.get()
    assert link.raw["providers"][0]["EmailPassword"] == "[removed]"
    assert "correct-horse" not in str(link.raw)
    assert not LegacyProfile.objects.filter(settings__icontains="correct-horse").exists()


def test_mailbox_ids_in_the_file_may_be_any_guid_format(migration_lead):
    mailbox = router_mailbox(email_address="x@example.gov.uk")
    content = router_file(("other@example.gov.uk", str(uuid.UUID(str(mailbox.dataverse_id))).upper()))
    record = import_now(migration_lead, content)
    assert record.mailboxes_matched == 1
