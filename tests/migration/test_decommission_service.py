"""Decommission plans: checklists per kind, the computed item, evidence, and sign-off refused until
every mailbox the source served is migrated and every manual item is done."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import pytest
from django.utils import timezone

from migration.models import (
    Classification,
    DecommissionItem,
    LegacySource,
    LegacySourceKind,
    Readiness,
    WaveMailboxState,
)
from migration.selectors.decommission import ALL_MIGRATED, decommission_overview, decommission_plan_detail
from migration.services import decommission as services
from portal.audit.models import AuditEvent
from portal.exceptions import InvalidStateError, PermissionDeniedError
from tests.migration.factories import (
    InventoryMailboxFactory,
    LegacySourceFactory,
    WaveMailboxFactory,
    router_serving,
)

pytestmark = pytest.mark.django_db


def router_mailbox(**fields):
    defaults = {"classification": Classification.EMAIL_ROUTER, "readiness": Readiness.READY}
    return InventoryMailboxFactory(**{**defaults, **fields})


@pytest.fixture
def router(migration_lead):
    return LegacySourceFactory(name="CRMROUTER01", kind=LegacySourceKind.EMAIL_ROUTER, created_by=migration_lead)


def tick_manual_items(plan, actor):
    for item in plan.items.exclude(code=ALL_MIGRATED):
        services.decommission_item_update(
            actor=actor, item_id=item.pk, done=True, evidence_note="Done by the server team"
        )


def test_a_router_plan_has_the_router_checklist(router, migration_lead):
    plan = services.decommission_plan_ensure(actor=migration_lead, source_id=router.pk)

    assert list(plan.items.order_by("id").values_list("label", flat=True)) == [
        "All its mailboxes migrated",
        "Router service stopped",
        "Server retired or configuration archived",
    ]
    assert services.decommission_plan_ensure(actor=migration_lead, source_id=router.pk).pk == plan.pk
    assert AuditEvent.objects.filter(action="decommission_plan.created", object_id=str(router.pk)).count() == 1


def test_sign_off_is_refused_while_a_served_mailbox_is_not_migrated_and_allowed_after(router, migration_lead):
    done_already = router_mailbox(email_address="done@example.gov.uk", readiness=Readiness.COMPLIANT)
    waiting = router_mailbox(email_address="complaints@example.gov.uk")
    router_serving(router, done_already, waiting)
    plan = services.decommission_plan_ensure(actor=migration_lead, source_id=router.pk)
    tick_manual_items(plan, migration_lead)

    with pytest.raises(services.SignOffRefused) as refused:
        services.decommission_plan_sign_off(actor=migration_lead, plan_id=plan.pk)

    assert "complaints@example.gov.uk" in refused.value.message
    assert "done@example.gov.uk" not in refused.value.message
    plan.refresh_from_db()
    assert plan.signed_off_at is None
    refusal = AuditEvent.objects.get(action="decommission_plan.sign_off_refused")
    assert refusal.outcome == "failure" and "complaints@example.gov.uk" in refusal.reason

    WaveMailboxFactory(mailbox=waiting, state=WaveMailboxState.MIGRATED, active=False)
    services.decommission_plan_sign_off(actor=migration_lead, plan_id=plan.pk, note="Router switched off")

    plan.refresh_from_db()
    assert plan.signed_off_by == migration_lead and plan.signed_off_at is not None
    event = AuditEvent.objects.get(action="decommission_plan.signed_off")
    assert event.object_type == "legacy_source" and event.object_id == str(router.pk)
    assert event.actor_id == migration_lead.pk
    assert json.loads(event.after_json)["note"] == "Router switched off"


def test_the_latest_wave_entry_decides_so_a_rolled_back_mailbox_blocks_sign_off(router, migration_lead):
    mailbox = router_mailbox(email_address="rolled@example.gov.uk")
    router_serving(router, mailbox)
    WaveMailboxFactory(mailbox=mailbox, state=WaveMailboxState.MIGRATED, active=False)
    WaveMailboxFactory(mailbox=mailbox, state=WaveMailboxState.ROLLED_BACK, active=False)
    plan = services.decommission_plan_ensure(actor=migration_lead, source_id=router.pk)
    tick_manual_items(plan, migration_lead)

    with pytest.raises(services.SignOffRefused, match=r"rolled@example\.gov\.uk"):
        services.decommission_plan_sign_off(actor=migration_lead, plan_id=plan.pk)


def test_sign_off_is_refused_while_a_manual_item_is_not_done(router, migration_lead):
    router_serving(router, router_mailbox(readiness=Readiness.COMPLIANT))
    plan = services.decommission_plan_ensure(actor=migration_lead, source_id=router.pk)
    stopped = plan.items.get(code="router_stopped")
    services.decommission_item_update(actor=migration_lead, item_id=stopped.pk, done=True, evidence_note="Stopped")

    with pytest.raises(services.SignOffRefused) as refused:
        services.decommission_plan_sign_off(actor=migration_lead, plan_id=plan.pk)

    assert "Server retired or configuration archived" in refused.value.message
    assert "Router service stopped" not in refused.value.message
    assert "not migrated" not in refused.value.message


def test_a_removed_mailbox_no_longer_blocks_sign_off(router, migration_lead):
    router_serving(router, router_mailbox(removed_at=timezone.now()))
    plan = services.decommission_plan_ensure(actor=migration_lead, source_id=router.pk)
    tick_manual_items(plan, migration_lead)

    services.decommission_plan_sign_off(actor=migration_lead, plan_id=plan.pk)


def test_the_refusal_names_ten_mailboxes_and_counts_the_rest(router, migration_lead):
    mailboxes = [router_mailbox(email_address=f"box{n:02d}@example.gov.uk") for n in range(13)]
    router_serving(router, *mailboxes)
    plan = services.decommission_plan_ensure(actor=migration_lead, source_id=router.pk)

    with pytest.raises(services.SignOffRefused) as refused:
        services.decommission_plan_sign_off(actor=migration_lead, plan_id=plan.pk)

    assert "13 mailboxes it served are not migrated:" in refused.value.message
    assert "and 3 more" in refused.value.message


def test_only_a_migration_lead_signs_off(router, platform_admin, migration_lead):
    plan = services.decommission_plan_ensure(actor=migration_lead, source_id=router.pk)

    with pytest.raises(PermissionDeniedError):
        services.decommission_plan_sign_off(actor=platform_admin, plan_id=plan.pk)


def test_the_computed_item_cannot_be_ticked_by_hand(router, migration_lead):
    router_serving(router, router_mailbox())
    plan = services.decommission_plan_ensure(actor=migration_lead, source_id=router.pk)
    computed = plan.items.get(code=ALL_MIGRATED)

    with pytest.raises(InvalidStateError, match="worked out from the mailboxes"):
        services.decommission_item_update(actor=migration_lead, item_id=computed.pk, done=True, evidence_note="")

    computed.refresh_from_db()
    assert computed.done is False


def test_the_computed_item_follows_the_mailboxes(router, migration_lead):
    mailbox = router_mailbox()
    router_serving(router, mailbox, router_mailbox(readiness=Readiness.COMPLIANT))
    services.decommission_plan_ensure(actor=migration_lead, source_id=router.pk)

    detail = decommission_plan_detail(router.pk)
    assert (detail.served, detail.remaining_count) == (2, 1)
    assert [entry.done for entry in detail.items if entry.computed] == [False]

    WaveMailboxFactory(mailbox=mailbox, state=WaveMailboxState.MIGRATED, active=False)

    detail = decommission_plan_detail(router.pk)
    assert detail.remaining_count == 0
    assert [entry.done for entry in detail.items if entry.computed] == [True]


def test_items_can_be_undone_and_changes_are_audited(router, migration_lead):
    plan = services.decommission_plan_ensure(actor=migration_lead, source_id=router.pk)
    item = plan.items.get(code="router_stopped")

    services.decommission_item_update(actor=migration_lead, item_id=item.pk, done=True, evidence_note="Service stopped")
    item.refresh_from_db()
    assert item.done and item.done_by == migration_lead and item.done_at is not None

    services.decommission_item_update(actor=migration_lead, item_id=item.pk, done=False, evidence_note="Restarted")
    item.refresh_from_db()
    assert not item.done and item.done_by is None and item.evidence_note == "Restarted"
    assert AuditEvent.objects.filter(action="decommission_item.updated").count() == 2


def test_a_signed_off_plan_cannot_change(router, migration_lead):
    plan = services.decommission_plan_ensure(actor=migration_lead, source_id=router.pk)
    tick_manual_items(plan, migration_lead)
    services.decommission_plan_sign_off(actor=migration_lead, plan_id=plan.pk)
    item = plan.items.get(code="router_stopped")

    with pytest.raises(InvalidStateError, match="signed off"):
        services.decommission_item_update(actor=migration_lead, item_id=item.pk, done=False, evidence_note="")
    with pytest.raises(InvalidStateError, match="already signed off"):
        services.decommission_plan_sign_off(actor=migration_lead, plan_id=plan.pk)
    with pytest.raises(InvalidStateError):
        services.decommission_plan_update(actor=migration_lead, plan_id=plan.pk, owner=None, due_date=None)


def test_owner_and_due_date_and_overdue_flag(router, migration_lead, platform_admin):
    plan = services.decommission_plan_ensure(actor=migration_lead, source_id=router.pk)
    yesterday = timezone.localdate() - dt.timedelta(days=1)

    services.decommission_plan_update(actor=migration_lead, plan_id=plan.pk, owner=platform_admin, due_date=yesterday)

    [row] = decommission_overview()
    assert row.plan.owner == platform_admin and row.plan.due_date == yesterday
    assert row.overdue is True
    assert decommission_plan_detail(router.pk).overdue is True
    event = AuditEvent.objects.get(action="decommission_plan.updated")
    assert json.loads(event.after_json) == {"owner": platform_admin.pk, "due_date": yesterday.isoformat()}

    services.decommission_plan_update(
        actor=migration_lead, plan_id=plan.pk, owner=platform_admin, due_date=yesterday + dt.timedelta(days=30)
    )
    assert decommission_overview()[0].overdue is False


# --- Outlook-client populations -----------------------------------------------------------------


def test_outlook_populations_are_one_source_per_business_unit(migration_lead):
    finance, housing = uuid.uuid4(), uuid.uuid4()
    outlook = {"classification": Classification.OUTLOOK_CLIENT, "readiness": Readiness.READY}
    InventoryMailboxFactory(business_unit_id=finance, business_unit_name="Finance", **outlook)
    InventoryMailboxFactory(business_unit_id=finance, business_unit_name="Finance", **outlook)
    InventoryMailboxFactory(business_unit_id=housing, business_unit_name="Housing", **outlook)
    InventoryMailboxFactory(business_unit_id=uuid.uuid4(), business_unit_name="Compliant unit")

    created = services.decommission_outlook_populations_sync(actor=migration_lead)

    assert [source.name for source in created] == ["Outlook client: Finance", "Outlook client: Housing"]
    assert {source.kind for source in created} == {LegacySourceKind.OUTLOOK_CLIENT}
    finance_source = LegacySource.objects.get(name="Outlook client: Finance")
    assert finance_source.decommission.business_unit_id == finance
    assert list(finance_source.decommission.items.order_by("id").values_list("label", flat=True)) == [
        "All its mailboxes migrated",
        "Outlook client removed or its synchronisation disabled for the organisation",
    ]
    assert services.decommission_outlook_populations_sync(actor=migration_lead) == []


def test_an_outlook_population_signs_off_once_its_mailboxes_are_migrated(migration_lead):
    unit = uuid.uuid4()
    mailbox = InventoryMailboxFactory(
        business_unit_id=unit,
        business_unit_name="Finance",
        email_address="finance.user@example.gov.uk",
        classification=Classification.OUTLOOK_CLIENT,
        readiness=Readiness.READY,
    )
    [source] = services.decommission_outlook_populations_sync(actor=migration_lead)
    plan = source.decommission
    tick_manual_items(plan, migration_lead)

    with pytest.raises(services.SignOffRefused, match=r"finance\.user@example\.gov\.uk"):
        services.decommission_plan_sign_off(actor=migration_lead, plan_id=plan.pk)
    [row] = decommission_overview()
    assert (row.served, row.remaining, row.items_done, row.items_total) == (1, 1, 1, 2)

    WaveMailboxFactory(mailbox=mailbox, state=WaveMailboxState.MIGRATED, active=False)
    [row] = decommission_overview()
    assert (row.remaining, row.items_done) == (0, 2)
    services.decommission_plan_sign_off(actor=migration_lead, plan_id=plan.pk)
    assert DecommissionItem.objects.get(plan=plan, code=ALL_MIGRATED).done is True


# --- evidence -----------------------------------------------------------------------------------

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
PDF = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n"


@pytest.mark.parametrize(
    ("name", "content", "content_type"),
    [
        ("stopped.png", PNG, "image/png"),
        ("change.pdf", PDF, "application/pdf"),
        ("photo.jpg", b"\xff\xd8\xff\xe0" + b"\x00" * 32, "image/jpeg"),
        ("notes.txt", "Service stopped at 10:00 — Tom".encode(), "text/plain"),
        ("servers.csv", b"server,state\nCRMROUTER01,retired\n", "text/csv"),
    ],
)
def test_evidence_of_a_safe_type_is_kept_with_its_hash(router, migration_lead, name, content, content_type):
    plan = services.decommission_plan_ensure(actor=migration_lead, source_id=router.pk)
    item = plan.items.get(code="router_stopped")

    services.decommission_item_update(
        actor=migration_lead, item_id=item.pk, done=True, evidence_note="", evidence_file=(name, content)
    )

    [evidence] = item.evidence.all()
    assert (evidence.file_name, evidence.content_type, bytes(evidence.content)) == (name, content_type, content)
    event = AuditEvent.objects.get(action="decommission_item.updated")
    assert json.loads(event.after_json)["evidence"]["sha256"] == evidence.sha256


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("page.html", b"<!DOCTYPE html><script>alert(1)</script>", "must be a PDF, PNG, JPEG, plain text or CSV"),
        ("image.png", b"GIF89a\x01\x00\x01\x00\x00\x00\x00", "must be a PDF, PNG, JPEG, plain text or CSV"),
        ("tool.exe", b"MZ\x90\x00\x03\x00\x00\x00", "must be a PDF, PNG, JPEG, plain text or CSV"),
        ("empty.txt", b"", "is empty"),
        ("huge.txt", b"a" * (services.MAX_EVIDENCE_BYTES + 1), "smaller than 10MB"),
    ],
)
def test_unsafe_or_oversized_evidence_is_refused_and_nothing_changes(router, migration_lead, name, content, message):
    plan = services.decommission_plan_ensure(actor=migration_lead, source_id=router.pk)
    item = plan.items.get(code="router_stopped")

    with pytest.raises(services.DecommissionError, match=message):
        services.decommission_item_update(
            actor=migration_lead, item_id=item.pk, done=True, evidence_note="", evidence_file=(name, content)
        )

    item.refresh_from_db()
    assert not item.done and not item.evidence.exists()
