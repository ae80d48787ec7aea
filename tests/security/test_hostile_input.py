"""Every form in the portal, given generated hostile values by someone allowed to use it.

Each example posts one body (valid answers mixed with hostile ones: very long text, control and
invisible characters, markup, formulas, numbers that are not numbers, repeated or missing fields)
and checks what a person or an operator would notice: never a server error or a stack trace; a
refused form comes back with the GOV.UK error summary and the database exactly as it was; an
accepted answer is stored as typed and shown escaped. Every example is rolled back, so each one
starts from the same state.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any
from urllib.parse import urlencode

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from django.utils.html import escape
from hypothesis import given
from hypothesis import strategies as st

from governance.models import MailboxAlert, ManagedMailbox, TrackingChange
from migration.models import (
    InventoryAnnotation,
    InventoryMailbox,
    LegacySource,
    LegacySourceKind,
    Wave,
)
from migration.selectors.decommission import ALL_MIGRATED
from migration.services import decommission
from onboarding.models import ApprovalStage, MailboxRequest
from onboarding.services.mailbox_requests import mailbox_request_create_draft
from portal.accounts import throttle
from portal.accounts.roles import Role
from portal.audit.models import AuditEvent
from portal.csv_safe import FORMULA_PREFIXES
from portal.policy.models import BlackoutWindow
from portal.policy.services import blackout_window_add, policy_get
from tests.factories import PASSWORD, UserFactory
from tests.migration.factories import (
    InventoryMailboxFactory,
    LegacySourceFactory,
    PreflightRunFactory,
    WaveFactory,
    WaveMailboxFactory,
)
from tests.onboarding.approval_helpers import (
    configure_route,
    draft_for,
    make_cast,
    owner_stage,
    role_stage,
    submit,
    waiting_stage,
)
from tests.onboarding.factories import TeamFactory
from tests.onboarding.provisioning_support import provisioning_request, start
from tests.onboarding.test_provisioning_views import _needs_attention
from tests.security.hostile import (
    assert_formulas_neutralised,
    assert_no_crash,
    assert_nothing_saved,
    assert_refused,
    body_of,
    csv_cells,
    date_parts,
    form_data,
    hostile_settings,
    hostile_text,
    hostile_value,
    snapshot,
    undone,
)

pytestmark = pytest.mark.django_db

REDIRECT = (301, 302, 303)
# Every filter and paging parameter any list page reads.
FILTER_NAMES = (
    "q",
    "classification",
    "readiness",
    "team",
    "business_unit",
    "legacy_source",
    "owner_type",
    "include_removed",
    "sort",
    "after",
    "before",
    "page",
    "kind",
    "over_tracking",
    "status",
    "level",
    "mine",
    "actor",
    "action",
    "object_type",
    "object_id",
    "outcome",
    "date_from_0",
    "date_from_1",
    "date_from_2",
    "date_to_0",
    "date_to_1",
    "date_to_2",
    "verdict",
    "show",
    "source",
    "decided_page",
    "return",
    "next",
)


def post_form(client, url: str, data: dict[str, Any], *, allowed: frozenset[str] = frozenset()) -> tuple[Any, str]:
    """POST ``data``; a refusal must show the error summary and save nothing (bar ``allowed`` tables)."""
    before = snapshot()
    response = client.post(url, data)
    body = assert_no_crash(response, data)
    if response.status_code not in REDIRECT:
        if any(not hasattr(value, "read") for value in data.values()):
            assert_refused(response, body)
        # else: a POST with no fields at all; some pages then just show the empty form again.
        assert_nothing_saved(before, allowed=allowed)
    return response, body


def shown_escaped(client, url: str, value: str) -> None:
    """An accepted single-line value appears on ``url`` escaped, never as markup."""
    response = client.get(url)
    body = assert_no_crash(response, value)
    if value and "\n" not in value and "\r" not in value:
        assert escape(value) in body


def text_or(*valid: str) -> st.SearchStrategy[str]:
    return st.sampled_from(valid)


def submitted(data: dict[str, Any], name: str) -> str | None:
    """The text Django reads for ``name``: the last of a repeated field; None for a file or nothing."""
    value = data.get(name)
    if isinstance(value, list):
        value = value[-1] if value else None
    return value if isinstance(value, str) else None


def uploaded(name: str, content: bytes) -> SimpleUploadedFile:
    return SimpleUploadedFile(name, content, content_type="application/octet-stream")


# --- the requester's question pages -----------------------------------------------------------------


@pytest.fixture
def requester_client(requester, client_for):
    return client_for(requester)


@pytest.fixture
def draft(requester):
    policy_get()
    TeamFactory(name="Finance", business_unit="Finance", members=[requester])
    UserFactory(username="olu", roles=[Role.APPROVER])
    UserFactory(username="siobhan", roles=[Role.APPROVER])
    draft = mailbox_request_create_draft(actor=requester)
    MailboxRequest.objects.filter(pk=draft.pk).update(kind="queue")
    return draft


QUESTION_FIELDS = {
    "kind": {"kind": text_or("shared", "queue")},
    "name": {"display_name": text_or("Finance enquiries", "  Finance   enquiries  ")},
    "address": {"local_part": text_or("finance-enquiries", "Finance.Team"), "domain": text_or("example.gov.uk")},
    "owners": {"owner": text_or("olu@example.gov.uk"), "backup_owner": text_or("siobhan@example.gov.uk")},
    "visibility": {"queue_visibility": text_or("0", "1")},
    "tracking": {"tracking_rule": text_or("0", "1", "2", "3", "4"), "tracking_reason": text_or("Every message.")},
    "usage": {
        "expected_daily_volume": text_or("40", "1,200"),
        "typical_attachment_kb": text_or("0", "300"),
        "retention_months": text_or("24"),
        "data_classification": text_or("official", "official_sensitive"),
    },
    "justification": {
        "justification": text_or("Customers write to the finance team about invoices."),
        "ticket_reference": text_or("", "INC0012345"),
    },
}


@given(slug=st.sampled_from([*QUESTION_FIELDS, "team"]), data=st.data(), save_later=st.booleans())
@hostile_settings(300)
def test_question_pages_refuse_hostile_answers_and_store_accepted_ones_as_typed(
    draft, requester_client, slug, data, save_later
):
    team_id = str(draft.requester.teams.values_list("pk", flat=True).first())
    body = data.draw(form_data(QUESTION_FIELDS.get(slug, {"team": text_or(team_id)})))
    if save_later:
        body["save_later"] = ""
    url = reverse("onboarding:request_question", args=[draft.pk, slug])
    with undone():
        response, _ = post_form(requester_client, url, body)
        if response.status_code in REDIRECT:
            stored = MailboxRequest.objects.get(pk=draft.pk)
            for field in ("justification", "ticket_reference"):
                if submitted(body, field) is not None:
                    assert getattr(stored, field) == submitted(body, field).strip()
            if submitted(body, "display_name") is not None:
                assert stored.display_name == " ".join(submitted(body, "display_name").split())
            if stored.justification:
                # Check your answers shows the answer once the question is answered.
                shown_escaped(
                    requester_client, reverse("onboarding:request_check", args=[draft.pk]), stored.justification
                )


@given(data=form_data({"kind": text_or("shared", "queue")}))
@hostile_settings(40)
def test_starting_a_request_with_hostile_answers_makes_no_draft(draft, requester_client, data):
    with undone():
        post_form(requester_client, reverse("onboarding:request_start"), data)


MEMBER_PERMISSIONS = st.lists(st.sampled_from(["full_access", "automapping", "send_as", "send_on_behalf"]), max_size=4)


@given(data=form_data({"email": text_or("member@example.gov.uk"), "permissions": MEMBER_PERMISSIONS}))
@hostile_settings(100)
def test_adding_a_member_refuses_hostile_addresses_and_permissions(draft, requester_client, data):
    with undone():
        response, _ = post_form(requester_client, reverse("onboarding:request_members", args=[draft.pk]), data)
        if response.status_code in REDIRECT:
            member = draft.members.get()
            assert member.email == submitted(data, "email").strip().lower()
            shown_escaped(requester_client, reverse("onboarding:request_members", args=[draft.pk]), member.email)


@given(data=form_data({"reason": text_or("", "No longer needed")}))
@hostile_settings(60)
def test_withdrawing_refuses_a_hostile_reason(draft, requester_client, data):
    with undone():
        response, _ = post_form(requester_client, reverse("onboarding:request_withdraw", args=[draft.pk]), data)
        if response.status_code in REDIRECT and submitted(data, "reason") is not None:
            assert AuditEvent.objects.filter(action__startswith="mailbox_request.withdr").exists()


# --- approvers and the approval route -----------------------------------------------------------------


@pytest.fixture
def cast(db):
    policy_get()
    return make_cast()


@pytest.fixture
def owner_client(cast, client_for):
    return client_for(cast.owner)


@pytest.fixture
def waiting(cast):
    configure_route(owner_stage(), role_stage(Role.PLATFORM_ADMIN))
    return waiting_stage(submit(draft_for(cast)))


@given(data=form_data({"outcome": text_or("approve", "reject", "return"), "reason": text_or("", "Looks right.")}))
@hostile_settings(150)
def test_approval_decisions_refuse_hostile_outcomes_and_reasons(owner_client, waiting, data):
    client = owner_client
    with undone():
        response, _ = post_form(client, reverse("onboarding:approval_decision", args=[waiting.pk]), data)
        if response.status_code in REDIRECT:
            waiting.refresh_from_db()
            decision = waiting.decisions.first()
            if decision is not None and submitted(data, "reason") is not None:
                assert decision.reason == submitted(data, "reason").strip()
                shown_escaped(client, reverse("onboarding:request_detail", args=[waiting.request_id]), decision.reason)


TODAY = dt.date.today()
SOON = TODAY + dt.timedelta(days=3)


def _date(day: dt.date) -> tuple[str, str, str]:
    return (str(day.day), str(day.month), str(day.year))


@given(
    data=form_data(
        {
            "delegate_email": text_or("dev@example.gov.uk", "olu@example.gov.uk", "nobody@example.gov.uk"),
            **date_parts("starts_on", _date(TODAY)),
            **date_parts("ends_on", _date(SOON)),
        }
    )
)
@hostile_settings(120)
def test_out_of_office_refuses_hostile_people_and_dates(owner_client, data):
    with undone():
        post_form(owner_client, reverse("onboarding:out_of_office"), data)


STAGE_FIELDS = {
    "name": text_or("Finance director"),
    "approver_kind": text_or("team_owner", "role", "named"),
    "role": text_or("", "approver", "platform_admin"),
    "team_scoped": text_or("on", ""),
    "approvers": text_or("", "olu@example.gov.uk\nsiobhan@example.gov.uk", "olu@example.gov.uk, nobody@example.gov.uk"),
    "fallback_approvers": text_or("", "fiona@example.gov.uk"),
    "sla_hours": text_or("48", "1"),
    "reason_required": text_or("on", ""),
}


@given(data=form_data(STAGE_FIELDS), change=st.booleans())
@hostile_settings(150)
def test_the_approval_stage_editor_refuses_hostile_settings(cast, client_for, data, change):
    stage = ApprovalStage.objects.first() or configure_route(owner_stage())[0]
    client = client_for(cast.admin)
    url = (
        reverse("onboarding:approval_stage_change", args=[stage.pk])
        if change
        else reverse("onboarding:approval_stage_add")
    )
    with undone():
        response, _ = post_form(client, url, data)
        if response.status_code in REDIRECT:
            saved = (
                ApprovalStage.objects.order_by("-pk").first() if not change else ApprovalStage.objects.get(pk=stage.pk)
            )
            assert saved.name == submitted(data, "name").strip()
            shown_escaped(client, reverse("onboarding:approval_stages"), saved.name)


@pytest.mark.parametrize("name", ["Finance\r\nBcc: everyone@example.gov.uk", "Finance\x1b[2J", "\u202eecnaniF"])
def test_a_stage_name_that_would_break_notification_emails_is_refused(cast, client_for, name):
    data = {"name": name, "approver_kind": "team_owner", "sla_hours": "48"}
    stages = ApprovalStage.objects.count()
    response, body = post_form(client_for(cast.admin), reverse("onboarding:approval_stage_add"), data)
    assert response.status_code == 200
    assert "Stage name can only contain letters, numbers, spaces and punctuation" in body
    assert ApprovalStage.objects.count() == stages


@given(direction=hostile_value() | text_or("up", "down"))
@hostile_settings(30)
def test_moving_a_stage_ignores_hostile_directions(cast, client_for, direction):
    stage = ApprovalStage.objects.order_by("order").first() or configure_route(owner_stage(), role_stage())[0]
    client = client_for(cast.admin)
    with undone():
        before = snapshot()
        response = client.post(reverse("onboarding:approval_stage_move", args=[stage.pk]), {"direction": direction})
        assert_no_crash(response, direction)
        assert response.status_code in REDIRECT
        if direction not in ("up", "down"):
            assert_nothing_saved(before)


# --- provisioning ---------------------------------------------------------------------------------


@given(data=form_data({"note": text_or("Approved the address by hand in Dynamics 365.")}))
@hostile_settings(60)
def test_marking_a_step_done_refuses_a_hostile_note(platform_admin, client_for, data, provisioning_failed):
    run, step = provisioning_failed
    client = client_for(platform_admin)
    url = reverse("onboarding:provisioning_step_done", args=[run.pk, step.pk])
    with undone():
        response, _ = post_form(client, url, data)
        if response.status_code in REDIRECT:
            step.refresh_from_db()
            assert step.status == "done_by_hand"
            shown_escaped(
                client, reverse("onboarding:provisioning_run", args=[run.pk]), submitted(data, "note").strip()
            )


@pytest.fixture
def provisioning_failed(platform_admin):
    run = start(provisioning_request(), platform_admin)
    return run, _needs_attention(run, "approve_address")


# --- waves ----------------------------------------------------------------------------------------------


@pytest.fixture
def lead_client(migration_lead, client_for):
    policy_get()
    return client_for(migration_lead)


@pytest.fixture
def admin_client(platform_admin, client_for):
    policy_get()
    return client_for(platform_admin)


WAVE_FIELDS = {
    "name": text_or("Finance queues"),
    "description": text_or("", "Month one"),
    "source": text_or("filters", "csv"),
}


@given(data=form_data(WAVE_FIELDS))
@hostile_settings(100)
def test_the_new_wave_questions_refuse_hostile_answers_and_build_accepted_ones_as_typed(lead_client, data):
    InventoryMailboxFactory(
        classification="email_router", readiness="ready"
    ) if not InventoryMailbox.objects.exists() else None
    with undone():
        response, _ = post_form(lead_client, reverse("migration:wave_new"), data)
        if response.status_code in REDIRECT and data.get("source") == "filters":
            response = lead_client.post(reverse("migration:wave_new_check"))
            assert_no_crash(response, data)
            wave = Wave.objects.order_by("-pk").first()
            if wave is not None:
                assert wave.name == submitted(data, "name").strip()
                shown_escaped(lead_client, reverse("migration:wave", args=[wave.pk]), wave.name)


@given(query=hostile_text() | st.builds(lambda k, v: urlencode({k: v}), st.sampled_from(FILTER_NAMES), hostile_text()))
@hostile_settings(80)
def test_the_wave_filter_step_refuses_hostile_queries(lead_client, query):
    session = lead_client.session
    session["wave_new"] = {"name": "Finance", "source": "filters"}
    session.save()
    with undone():
        before = snapshot()
        response = lead_client.post(reverse("migration:wave_new_filters"), {"query": query})
        assert_no_crash(response, query)
        assert response.status_code in REDIRECT
        assert_nothing_saved(before, allowed={"django_session"})
        assert_no_crash(lead_client.get(response["Location"]), query)


@pytest.fixture
def waiting_wave(migration_lead):
    wave = WaveFactory(created_by=migration_lead, name="Finance queues", status="awaiting_approval")
    WaveMailboxFactory(wave=wave)
    preflight = PreflightRunFactory(wave=wave)
    return wave, preflight


@given(data=st.data())
@hostile_settings(100)
def test_wave_decisions_refuse_hostile_answers(admin_client, waiting_wave, data):
    wave, preflight = waiting_wave
    body = data.draw(
        form_data(
            {
                "preflight": text_or(str(preflight.pk), str(preflight.pk + 1000)),
                "decision": text_or("approve", "reject"),
                "note": text_or("", "Go ahead"),
            }
        )
    )
    with undone():
        response, _ = post_form(admin_client, reverse("migration:wave_decide", args=[wave.pk]), body)
        if response.status_code in REDIRECT:
            wave.refresh_from_db()
            if submitted(body, "note") is not None and wave.status != "awaiting_approval":
                assert wave.decision_note == submitted(body, "note").strip()
                shown_escaped(admin_client, reverse("migration:wave", args=[wave.pk]), wave.decision_note)


@given(priority=hostile_value() | st.integers(-5, 1005).map(str))
@hostile_settings(60)
def test_wave_priorities_refuse_hostile_numbers(lead_client, migration_lead, priority):
    wave = Wave.objects.filter(name="Priorities").first() or WaveFactory(created_by=migration_lead, name="Priorities")
    entry = wave.mailboxes.first() or WaveMailboxFactory(wave=wave)
    with undone():
        before = snapshot()
        url = reverse("migration:wave_mailbox_priority", args=[wave.pk, entry.pk])
        response = lead_client.post(url, {"priority": priority})
        assert_no_crash(response, priority)
        assert response.status_code in REDIRECT
        page = assert_no_crash(lead_client.get(response["Location"]))
        entry.refresh_from_db()
        if entry.priority != 100:
            assert 0 <= entry.priority <= 1000
            assert "Priority saved" in page
        else:
            # Refused (or the same number again): said on the wave's page, nothing else changed.
            assert "govuk-notification-banner" in page
            assert_nothing_saved(before, allowed={"migration_wavemailbox", "audit_auditevent", "audit_auditchainhead"})


@given(reason=hostile_value())
@hostile_settings(40)
def test_cancelling_a_wave_with_a_hostile_reason_never_fails(lead_client, migration_lead, reason):
    wave = Wave.objects.filter(name="To cancel").first() or WaveFactory(created_by=migration_lead, name="To cancel")
    with undone():
        response = lead_client.post(reverse("migration:wave_action", args=[wave.pk, "cancel"]), {"reason": reason})
        assert_no_crash(response, reason)
        wave.refresh_from_db()
        assert wave.status == "cancelled"


# --- annotations, Email Router uploads, discovery ------------------------------------------------------------


ANNOTATION_FIELDS = {
    "owner_correction": text_or("", "payroll.lead@example.gov.uk"),
    "notes": text_or("", "Moves with the payroll team."),
    "excluded": text_or("yes", "no"),
    "exclusion_reason": text_or("", "Closing in March."),
}


@given(data=form_data(ANNOTATION_FIELDS))
@hostile_settings(150)
def test_annotations_refuse_hostile_text_and_store_accepted_text_as_typed(lead_client, data):
    mailbox = InventoryMailbox.objects.first() or InventoryMailboxFactory()
    url = reverse("migration:annotation_edit", args=[mailbox.pk])
    with undone():
        response, _ = post_form(lead_client, url, data)
        if response.status_code in REDIRECT:
            annotation = InventoryAnnotation.objects.filter(mailbox=mailbox).first()
            if annotation is not None:
                for field in ("owner_correction", "notes"):
                    if submitted(data, field) is not None:
                        assert getattr(annotation, field) == submitted(data, field).strip()
                shown_escaped(lead_client, url, annotation.owner_correction)
                export = lead_client.get(reverse("migration:annotations_export"))
                assert_formulas_neutralised(csv_cells(body_of(export)))


ROUTER_XML = (
    b'<?xml version="1.0" encoding="utf-8"?><Configuration><SystemConfiguration><MaxThreads>1</MaxThreads>'
    b"</SystemConfiguration></Configuration>"
)


@given(server_name=hostile_value() | text_or("CRMROUTER01", "  crm router  02 "))
@hostile_settings(60)
def test_the_router_upload_refuses_hostile_server_names(lead_client, server_name):
    with undone():
        data = {
            "server_name": server_name,
            "configuration_file": uploaded("Microsoft.Crm.Tools.EmailAgent.xml", ROUTER_XML),
        }
        response, _ = post_form(lead_client, reverse("migration:legacy_source_router_add"), data)
        if response.status_code in REDIRECT:
            source = LegacySource.objects.order_by("-pk").first()
            assert source.name == " ".join(submitted(data, "server_name").split())
            shown_escaped(lead_client, reverse("migration:legacy_sources"), source.name)


@given(kind=hostile_value() | text_or("incremental", "full"))
@hostile_settings(30)
def test_the_discovery_sync_refuses_hostile_kinds(lead_client, kind):
    with undone():
        before = snapshot()
        response = lead_client.post(reverse("migration:discovery_sync"), {"kind": kind})
        body = assert_no_crash(response, kind)
        if kind not in ("incremental", "full"):
            assert_nothing_saved(before, allowed={"django_session"})
            assert response.status_code in (*REDIRECT, 200, 400), body[:200]


# --- decommissioning ---------------------------------------------------------------------------------


@pytest.fixture
def plan(migration_lead):
    router = LegacySourceFactory(name="CRMROUTER01", kind=LegacySourceKind.EMAIL_ROUTER, created_by=migration_lead)
    return decommission.decommission_plan_ensure(actor=migration_lead, source_id=router.pk)


@given(data=st.data())
@hostile_settings(80)
def test_decommission_details_refuse_hostile_owners_and_dates(lead_client, migration_lead, plan, data):
    body = data.draw(
        form_data(
            {
                "owner": text_or("", str(migration_lead.pk), str(migration_lead.pk + 999)),
                **date_parts("due_date", _date(SOON)),
            }
        )
    )
    with undone():
        post_form(lead_client, reverse("migration:decommission_plan_details", args=[plan.source_id]), body)


@given(data=form_data({"done": text_or("yes", "no"), "evidence_note": text_or("", "Switched off by the CAB.")}))
@hostile_settings(100)
def test_decommission_checklist_items_refuse_hostile_notes(lead_client, plan, data):
    item = plan.items.exclude(code=ALL_MIGRATED).order_by("pk").first()
    with undone():
        response, _ = post_form(lead_client, reverse("migration:decommission_item", args=[item.pk]), data)
        if response.status_code in REDIRECT:
            item.refresh_from_db()
            if submitted(data, "evidence_note") is not None:
                assert item.evidence_note == submitted(data, "evidence_note").strip()
            shown_escaped(
                lead_client, reverse("migration:decommission_plan", args=[plan.source_id]), item.evidence_note
            )


@given(note=hostile_value())
@hostile_settings(60)
def test_decommission_sign_off_refuses_a_hostile_note(lead_client, plan, note):
    with undone():
        before = snapshot()
        response = lead_client.post(reverse("migration:decommission_sign_off", args=[plan.source_id]), {"note": note})
        body = assert_no_crash(response, note)
        assert_refused(response, body)
        # The plan is not ready, so every sign-off is refused; the refusal itself is audited.
        assert_nothing_saved(before, allowed={"audit_auditevent", "audit_auditchainhead"})


# --- policy -----------------------------------------------------------------------------------------------


POLICY_FIELDS = {
    "domains": {
        "allowed_domains": text_or("example.gov.uk\nagency.gov.uk", "example.gov.uk, other.gov.uk"),
        "exchange_online_profile_name": text_or("Microsoft Exchange Online"),
        "exchange_online_profile_id": text_or("", "6f1c3a52-8d4b-4a0e-9a55-2b7de3f0c001"),
        "require_email_approval": text_or("yes", "no"),
    },
    "tracking": {
        "default_tracking_rule_queue": text_or("0", "3"),
        "default_tracking_rule_shared": text_or("4"),
        "default_tracking_rule_user": text_or("2"),
        "flag_user_over_tracking": text_or("yes", "no"),
    },
    "waves": {
        "wave_test_enable_cap": text_or("200", "1,000"),
        "wave_cap_window_hours": text_or("5"),
        "migrate_act_for_users": text_or("yes", "no"),
        "test_enable_poll_seconds": text_or("30"),
        "test_enable_timeout_minutes": text_or("90"),
    },
    "thresholds": {
        "daily_volume_threshold": text_or("400"),
        "attachment_size_threshold_kb": text_or("4096"),
        "attachment_near_limit_percent": text_or("90"),
    },
    "application-users": {"application_users": st.lists(text_or("portal-1", "portal-2"), max_size=2)},
    "digest": {"weekly_digest_enabled": text_or("yes", "no")},
}


@given(section=st.sampled_from(sorted(POLICY_FIELDS)), data=st.data())
@hostile_settings(250)
def test_policy_sections_refuse_hostile_settings_and_audit_accepted_reasons_as_typed(admin_client, section, data):
    body = data.draw(form_data({**POLICY_FIELDS[section], "reason": text_or("Quarterly review.")}))
    with undone():
        last = AuditEvent.objects.order_by("-seq").values_list("seq", flat=True).first() or 0
        response, _ = post_form(admin_client, reverse("policy:section_change", args=[section]), body)
        event = AuditEvent.objects.filter(seq__gt=last, action__startswith="policy.").first()
        if response.status_code in REDIRECT and event is not None:
            assert event.reason == submitted(body, "reason").strip()
            if event.reason.startswith(FORMULA_PREFIXES):
                export = admin_client.get(reverse("audit:export"), {"action": event.action})
                assert_formulas_neutralised(csv_cells(body_of(export)))


@given(
    data=form_data(
        {
            **date_parts("starts_on", _date(SOON)),
            "starts_time": text_or("18:00", "9.30"),
            **date_parts("ends_on", _date(SOON + dt.timedelta(days=1))),
            "ends_time": text_or("06:00"),
            "reason": text_or("Month-end close"),
        }
    )
)
@hostile_settings(120)
def test_blackout_windows_refuse_hostile_dates_times_and_reasons(admin_client, data):
    with undone():
        response, _ = post_form(admin_client, reverse("policy:blackout_add"), data)
        if response.status_code in REDIRECT:
            window = BlackoutWindow.objects.order_by("-pk").first()
            assert window.reason == submitted(data, "reason").strip()
            shown_escaped(admin_client, reverse("policy:summary"), window.reason)


@given(data=form_data({"reason": text_or("Close moved.")}))
@hostile_settings(50)
def test_removing_a_blackout_window_refuses_a_hostile_reason(admin_client, platform_admin, data):
    window = BlackoutWindow.objects.first() or blackout_window_add(
        actor=platform_admin,
        starts_at=timezone.now() + dt.timedelta(days=2),
        ends_at=timezone.now() + dt.timedelta(days=3),
        reason="Month-end close",
    )
    with undone():
        post_form(admin_client, reverse("policy:blackout_remove", args=[window.pk]), data)


# --- alerts and tracking rules ------------------------------------------------------------------------------


def _managed(**fields) -> ManagedMailbox:
    return ManagedMailbox.objects.create(
        dataverse_id=uuid.uuid4(),
        owner_dataverse_id=uuid.uuid4(),
        kind="queue",
        source="onboarding",
        name=fields.pop("name", "Finance enquiries"),
        added_at=timezone.now(),
        **fields,
    )


@pytest.fixture
def alert(platform_admin):
    now = timezone.now()
    return MailboxAlert.objects.create(
        key="tracelog-1",
        source="dataverse",
        mailbox=_managed(),
        level=3,
        code="4001",
        text="The mailbox could not connect to Exchange Online.",
        first_seen_at=now,
        last_seen_at=now,
        updated_at=now,
    )


@given(
    data=form_data(
        {
            "action": text_or("assign", "acknowledge", "resolve"),
            "assignee": st.just("") | st.just("me"),
            "note": text_or("Re-entered the credentials."),
        }
    )
)
@hostile_settings(150)
def test_alert_actions_refuse_hostile_input(admin_client, platform_admin, alert, data):
    if data.get("assignee") == "me":
        data["assignee"] = str(platform_admin.pk)
    url = reverse("governance:alert", args=[alert.pk])
    with undone():
        before = snapshot()
        response = admin_client.post(url, data)
        body = assert_no_crash(response, data)
        if response.status_code in REDIRECT:
            alert.refresh_from_db()
            if data.get("action") == "resolve":
                assert alert.resolution_note == submitted(data, "note").strip()
                shown_escaped(admin_client, url, alert.resolution_note)
        else:
            assert_nothing_saved(before)
            assert "govuk-error-summary" in body or "Choose what to do with the alert." in body


@given(back=hostile_value() | text_or("kind=queue", "over_tracking=on&page=2"))
@hostile_settings(40)
def test_tracking_change_requests_keep_no_hostile_way_back(admin_client, back):
    mailbox = ManagedMailbox.objects.first() or _managed(tracking_rule=0)
    with undone():
        response = admin_client.post(reverse("governance:tracking_request", args=[mailbox.pk]), {"back": back})
        assert_no_crash(response, back)
        if response.status_code in REDIRECT:
            assert response["Location"].startswith("/")


@given(data=form_data({"decision": text_or("approve", "reject"), "reason": text_or("", "Too broad.")}))
@hostile_settings(80)
def test_tracking_decisions_refuse_hostile_answers(admin_client, platform_admin, data):
    change = TrackingChange.objects.first()
    if change is None:
        requester = UserFactory(username="ravi", roles=[Role.PLATFORM_ADMIN])
        mailbox = _managed(tracking_rule=0)
        now = timezone.now()
        change = TrackingChange.objects.create(
            mailbox=mailbox, from_rule=0, to_rule=3, requested_by=requester, requested_at=now, updated_at=now
        )
    with undone():
        response, _ = post_form(admin_client, reverse("governance:tracking_change_decide", args=[change.pk]), data)
        if response.status_code in REDIRECT:
            change.refresh_from_db()
            if submitted(data, "reason") is not None:
                assert change.decision_reason == submitted(data, "reason").strip()
                shown_escaped(
                    admin_client, reverse("governance:tracking_change", args=[change.pk]), change.decision_reason
                )


# --- filters in the address bar ------------------------------------------------------------------------------


def hostile_query() -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(st.sampled_from(FILTER_NAMES), hostile_value(max_size=30), min_size=1, max_size=4).map(
        lambda query: {name: value for name, value in query.items() if not hasattr(value, "read")}
    )


GET_PAGES = {
    "migration:inventory": "lead",
    "migration:inventory_export": "lead",
    "migration:wave_new": "lead",
    "migration:wave_new_filters": "lead",
    "migration:waves": "lead",
    "migration:legacy_sources": "lead",
    "migration:legacy_source_router_add": "lead",
    "migration:decommission": "lead",
    "migration:annotations": "lead",
    "migration:discovery": "lead",
    "migration:dashboard": "lead",
    "audit:events": "auditor",
    "audit:export": "auditor",
    "governance:alerts": "admin",
    "governance:tracking_report": "admin",
    "governance:tracking_changes": "admin",
    "governance:mailboxes": "admin",
    "governance:retention": "admin",
    "onboarding:requests": "requester",
    "onboarding:approvals": "approver",
    "onboarding:provisioning_runs": "admin",
    "policy:summary": "admin",
    "accounts:sign_in": "anonymous",
    "home": "requester",
}


@pytest.fixture
def browsers(client_for, requester, approver, platform_admin, migration_lead, auditor):
    policy_get()
    InventoryMailboxFactory(team_name="Finance", business_unit_name="Finance")
    people = {"requester": requester, "approver": approver, "admin": platform_admin, "lead": migration_lead}
    return {
        **{role: client_for(person) for role, person in people.items()},
        "auditor": client_for(auditor),
        "anonymous": Client(),
    }


@given(page=st.sampled_from(sorted(GET_PAGES)), query=hostile_query())
@hostile_settings(500)
def test_filters_and_pages_in_the_address_bar_never_fail_or_print_markup(browsers, page, query):
    client = browsers[GET_PAGES[page]]
    with undone():
        before = snapshot()
        response = client.get(reverse(page), query)
        body = assert_no_crash(response, query)
        if page in ("audit:export", "migration:inventory_export") and response.status_code == 200:
            assert_formulas_neutralised(csv_cells(body))
        else:
            # Reading a page changes nothing (the audit export records that it was taken).
            assert_nothing_saved(before, allowed={"audit_auditevent"} if page == "audit:export" else frozenset())


# --- signing in -----------------------------------------------------------------------------------------------


@given(
    data=form_data(
        {
            "username": text_or("riya", "RIYA"),
            "password": text_or("wrong", PASSWORD),
            "next": text_or("", "/requests/", "https://evil.example/"),
        }
    )
)
@hostile_settings(100)
def test_sign_in_refuses_hostile_credentials_and_never_redirects_off_site(requester, data):
    client = Client()
    forget_failed_sign_ins()
    with undone():
        before = snapshot()
        response = client.post(reverse("accounts:sign_in"), data)
        body = assert_no_crash(response, data)
        if response.status_code in REDIRECT:
            assert response["Location"].startswith("/") and not response["Location"].startswith("//")
        else:
            assert response.status_code in (200, 400, 429)
            assert "govuk-error-summary" in body or response.status_code == 429
            # A failed sign-in is audited; nothing else changes.
            assert_nothing_saved(before, allowed={"audit_auditevent", "audit_auditchainhead"})


def forget_failed_sign_ins() -> None:
    """Each example starts with no failures counted, as each starts with the same database."""
    connection = throttle._client()
    for key in connection.scan_iter(f"{throttle.KEY_PREFIX}*"):
        connection.delete(key)
