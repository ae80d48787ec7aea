"""Pre-flight against the tenant simulator: live values read, planned changes and findings with fixes,
progress, duplicate jobs, failures recorded on the run, and the CSV export."""

from __future__ import annotations

import csv
import datetime as dt
import io
import uuid

import pytest
from django.utils import timezone
from rq import SimpleWorker

from migration.models import OwnerType, PreflightResult, PreflightRun, PreflightStatus, Readiness, WaveStatus
from migration.services.preflight import (
    PREFLIGHT_JOB_TIMEOUT,
    PreflightError,
    preflight_csv,
    preflight_request,
    preflight_run,
)
from portal.audit.models import AuditEvent
from portal.exceptions import InvalidStateError
from tests.migration.factories import (
    InventoryMailboxFactory,
    PreflightResultFactory,
    PreflightRunFactory,
    WaveFactory,
    WaveMailboxFactory,
)


def run_worker(queue) -> None:
    SimpleWorker([queue], connection=queue.connection).work(burst=True)


@pytest.fixture(scope="module")
def tenant_rows(sim):
    """The simulated tenant as it stands: mailboxes, owners, open error alerts and the profiles."""
    return {
        "mailboxes": sim.control("GET", "rows/mailboxes")["value"],
        "users": {row["systemuserid"]: row for row in sim.control("GET", "rows/systemusers")["value"]},
        "queues": {row["queueid"]: row for row in sim.control("GET", "rows/queues")["value"]},
        "alerted": {
            row["_regardingobjectid_value"]
            for row in sim.control("GET", "rows/tracelogs")["value"]
            if row.get("level") == 3 and row.get("_regardingobjectid_value")
        },
        "exo": next(
            row["emailserverprofileid"]
            for row in sim.control("GET", "rows/emailserverprofiles")["value"]
            if row["name"] == "Microsoft Exchange Online"
        ),
    }


def pick(tenant_rows, *, alerted=False, user_disabled=None, owner="user", **values):
    """The first simulated mailbox matching the description."""
    for row in tenant_rows["mailboxes"]:
        owner_id = row.get("_regardingobjectid_value")
        user = tenant_rows["users"].get(owner_id)
        if owner == "user" and user is None:
            continue
        if owner == "queue" and owner_id not in tenant_rows["queues"]:
            continue
        if (row["mailboxid"] in tenant_rows["alerted"]) != alerted:
            continue
        if user_disabled is not None and bool(user and user.get("isdisabled")) != user_disabled:
            continue
        if all(row.get(name) == value for name, value in values.items()):
            return row
    raise AssertionError(f"the simulator has no mailbox like {values}")


def inventory_copy(row, *, owner_type=OwnerType.USER):
    return InventoryMailboxFactory(
        dataverse_id=uuid.UUID(row["mailboxid"]),
        name=row["name"],
        email_address=row["emailaddress"],
        owner_type=owner_type,
        readiness=Readiness.READY,
    )


def wave_of(lead, *mailboxes, migrate_act_for_users=True):
    wave = WaveFactory(created_by=lead, migrate_act_for_users=migrate_act_for_users)
    for position, mailbox in enumerate(mailboxes, start=1):
        WaveMailboxFactory(wave=wave, mailbox=mailbox, position=position)
    return wave


def result_for(run, mailbox) -> PreflightResult:
    return PreflightResult.objects.get(preflight=run, mailbox=mailbox)


def codes(result) -> set[str]:
    return {finding["code"] for finding in result.findings}


def changed_fields(result) -> dict[str, tuple[str, str]]:
    return {change["field"]: (change["before"], change["after"]) for change in result.changes}


@pytest.mark.django_db(transaction=True)
def test_a_preflight_reports_what_would_change_and_what_would_fail(
    m365_settings, tenant_rows, migration_lead, redis_queue
):
    exo = tenant_rows["exo"]
    not_in_exo = inventory_copy(pick(tenant_rows, alerted=True, incomingemaildeliverymethod=2))
    unapproved = inventory_copy(
        pick(tenant_rows, user_disabled=False, incomingemaildeliverymethod=2, emailrouteraccessapproval=2)
    )
    disabled = inventory_copy(pick(tenant_rows, user_disabled=True))
    compliant = inventory_copy(
        pick(
            tenant_rows,
            user_disabled=False,
            _emailserverprofile_value=exo,
            incomingemaildeliverymethod=2,
            outgoingemaildeliverymethod=2,
            actdeliverymethod=1,
            emailrouteraccessapproval=1,
            incomingemailstatus=1,
            outgoingemailstatus=1,
        )
    )
    outlook = inventory_copy(
        pick(tenant_rows, user_disabled=False, incomingemaildeliverymethod=1, emailrouteraccessapproval=1)
    )
    gone = InventoryMailboxFactory(readiness=Readiness.READY)  # a Dataverse id the tenant does not have
    wave = wave_of(migration_lead, not_in_exo, unapproved, disabled, compliant, outlook, gone)

    run = preflight_request(actor=migration_lead, wave_id=wave.pk)
    assert run.status == PreflightStatus.QUEUED and run.mailboxes_total == 6
    run_worker(redis_queue)
    run.refresh_from_db()

    assert run.status == PreflightStatus.FINISHED, run.error
    assert run.mailboxes_checked == 6
    assert run.summary["ready"] + run.summary["blocked"] + run.summary["already_compliant"] + run.summary["gone"] == 6
    assert run.summary["exchange_online_profile"] == "Microsoft Exchange Online"

    result = result_for(run, not_in_exo)
    assert result.verdict == "blocked"
    assert {"not_in_exchange_online", "open_error_alerts"} <= codes(result)
    assert all(finding["fix"] for finding in result.findings)

    result = result_for(run, unapproved)
    assert "address_not_approved" in codes(result)
    assert changed_fields(result)["emailrouteraccessapproval"] == ("Pending Approval (2)", "Approved (1)")
    assert result.live_state["approval_required"] is True

    result = result_for(run, disabled)
    assert result.verdict == "blocked" and "owner_disabled" in codes(result)

    result = result_for(run, compliant)
    assert result.verdict == "already_compliant" and result.changes == []
    assert codes(result) == {"already_compliant"}

    result = result_for(run, outlook)
    assert result.verdict == "ready"
    changes = changed_fields(result)
    assert changes["incomingemaildeliverymethod"] == (
        "Microsoft Dynamics 365 for Outlook (1)",
        "Server-Side Synchronization or Email Router (2)",
    )
    assert changes["actdeliverymethod"][1] == "Server-Side Synchronization (1)"
    assert result.live_state["in_exchange_online"] is True

    result = result_for(run, gone)
    assert result.verdict == "gone" and codes(result) == {"gone"}


@pytest.mark.django_db(transaction=True)
def test_appointments_stay_as_they_are_when_the_wave_leaves_them(
    m365_settings, tenant_rows, migration_lead, redis_queue
):
    outlook = inventory_copy(pick(tenant_rows, user_disabled=False, incomingemaildeliverymethod=1, actdeliverymethod=0))
    wave = wave_of(migration_lead, outlook, migrate_act_for_users=False)

    preflight_request(actor=migration_lead, wave_id=wave.pk)
    run_worker(redis_queue)

    result = PreflightResult.objects.get(mailbox=outlook)
    assert "actdeliverymethod" not in changed_fields(result)


@pytest.mark.django_db(transaction=True)
def test_without_the_exchange_online_profile_every_mailbox_would_fail(
    m365_settings, tenant_rows, migration_lead, redis_queue
):
    from portal.policy.services import policy_get

    policy = policy_get()
    policy.exchange_online_profile_name = "No such profile"
    policy.save()
    mailbox = inventory_copy(pick(tenant_rows, user_disabled=False, incomingemaildeliverymethod=1))
    wave = wave_of(migration_lead, mailbox)

    preflight_request(actor=migration_lead, wave_id=wave.pk)
    run_worker(redis_queue)

    result = PreflightResult.objects.get(mailbox=mailbox)
    assert result.verdict == "blocked"
    finding = next(f for f in result.findings if f["code"] == "no_exchange_online_profile")
    assert "policy" in finding["fix"]


@pytest.mark.django_db(transaction=True)
def test_a_dataverse_failure_is_recorded_on_the_run(m365_settings, fresh_sim, tenant_rows, migration_lead, redis_queue):
    fresh_sim.control(
        "PUT", "faults", {"rate_5xx": 1.0, "surfaces": ["dataverse"], "operations": ["GET organizations"]}
    )
    wave = wave_of(migration_lead, inventory_copy(pick(tenant_rows, incomingemaildeliverymethod=1)))

    run = preflight_request(actor=migration_lead, wave_id=wave.pk)
    run_worker(redis_queue)
    run.refresh_from_db()

    assert run.status == PreflightStatus.FAILED
    assert "Microsoft 365" in run.error
    assert AuditEvent.objects.filter(action="wave.preflight_failed", object_id=str(wave.pk)).exists()


@pytest.mark.django_db
def test_a_duplicate_job_for_a_claimed_run_does_nothing(m365_settings, migration_lead):
    run = PreflightRunFactory(wave=WaveFactory(created_by=migration_lead), status=PreflightStatus.RUNNING)
    assert preflight_run(preflight_id=run.pk) is None
    run.refresh_from_db()
    assert run.status == PreflightStatus.RUNNING


@pytest.mark.django_db
def test_a_request_while_one_is_waiting_returns_that_one(m365_settings, migration_lead, redis_queue):
    wave = wave_of(migration_lead, InventoryMailboxFactory(readiness=Readiness.READY))
    first = preflight_request(actor=migration_lead, wave_id=wave.pk)
    assert preflight_request(actor=migration_lead, wave_id=wave.pk).pk == first.pk
    assert PreflightRun.objects.count() == 1
    assert AuditEvent.objects.filter(action="wave.preflight_requested").count() == 1


@pytest.mark.django_db
def test_a_run_its_worker_lost_does_not_block_a_new_one(m365_settings, migration_lead, redis_queue):
    wave = wave_of(migration_lead, InventoryMailboxFactory(readiness=Readiness.READY))
    long_ago = timezone.now() - dt.timedelta(seconds=PREFLIGHT_JOB_TIMEOUT + 60)
    stuck = PreflightRunFactory(wave=wave, status=PreflightStatus.RUNNING, started_at=long_ago, finished_at=None)

    fresh = preflight_request(actor=migration_lead, wave_id=wave.pk)

    assert fresh.pk != stuck.pk
    stuck.refresh_from_db()
    assert stuck.status == PreflightStatus.FAILED and "Run it again" in stuck.error


@pytest.mark.django_db
def test_a_preflight_is_refused_once_the_wave_is_approved_or_when_it_is_empty(m365_settings, migration_lead):
    approved = WaveFactory(created_by=migration_lead, status=WaveStatus.APPROVED)
    WaveMailboxFactory(wave=approved)
    with pytest.raises(InvalidStateError):
        preflight_request(actor=migration_lead, wave_id=approved.pk)
    with pytest.raises(PreflightError, match="no mailboxes"):
        preflight_request(actor=migration_lead, wave_id=WaveFactory(created_by=migration_lead).pk)


@pytest.mark.django_db
def test_a_preflight_needs_the_microsoft_365_connection(settings, migration_lead):
    from portal.m365.config import load_m365_config

    settings.M365 = load_m365_config({})
    wave = wave_of(migration_lead, InventoryMailboxFactory(readiness=Readiness.READY))
    with pytest.raises(PreflightError, match="not connected"):
        preflight_request(actor=migration_lead, wave_id=wave.pk)


# --- the CSV export -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_csv_export_lists_every_result_and_neutralises_formulas(migration_lead):
    run = PreflightRunFactory(wave=WaveFactory(created_by=migration_lead))
    mailbox = InventoryMailboxFactory(name='=HYPERLINK("http://evil")', email_address="+1@example.gov.uk")
    PreflightResultFactory(
        preflight=run,
        mailbox=mailbox,
        verdict="blocked",
        changes=[{"field": "incomingemaildeliverymethod", "label": "Incoming email", "before": "a", "after": "b"}],
        findings=[{"code": "owner_disabled", "message": "@SUM(1)", "fix": "Enable the owner", "blocking": True}],
    )
    PreflightResultFactory(preflight=run)

    rows = list(csv.reader(io.StringIO("".join(preflight_csv(run.pk)).lstrip("\ufeff"))))

    assert rows[0][:4] == ["mailbox", "email_address", "owner_type", "verdict"]
    assert len(rows) == 3
    first = rows[1]
    assert first[0] == '\'=HYPERLINK("http://evil")'
    assert first[1] == "'+1@example.gov.uk"
    assert first[3] == "Would fail"
    assert first[4] == "Incoming email: a → b"
    assert first[5] == "'@SUM(1)" and first[6] == "Enable the owner" and first[7] == "yes"
