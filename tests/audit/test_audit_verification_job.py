"""The integrity check requested from the audit page runs on a real RQ worker over Redis."""

from __future__ import annotations

import pytest
from django.urls import reverse
from rq import SimpleWorker

from portal.audit.models import AuditEvent, AuditVerification, VerificationStatus
from portal.audit.services import audit_record, audit_verification_run


def run_worker(queue) -> None:
    SimpleWorker([queue], connection=queue.connection).work(burst=True)


@pytest.mark.django_db(transaction=True)
def test_requested_check_runs_on_the_worker_and_reports_on_the_page(auditor, client_for, redis_queue):
    audit_record(actor=auditor, action="test.something")
    client = client_for(auditor)

    response = client.post(reverse("audit:verify"), follow=True)
    assert "The audit chain check has started" in response.content.decode()
    verification = AuditVerification.objects.get()
    assert verification.status == VerificationStatus.QUEUED
    assert redis_queue.count == 1

    run_worker(redis_queue)

    verification.refresh_from_db()
    assert verification.status == VerificationStatus.PASSED
    assert verification.events_checked == 2  # the test event and the request itself
    html = client.get(reverse("audit:events")).content.decode()
    assert "Chain intact" in html
    assert AuditEvent.objects.filter(action="audit.verified", outcome="success").exists()


@pytest.mark.django_db(transaction=True)
def test_a_duplicate_job_does_nothing(auditor, client_for, redis_queue):
    client_for(auditor).post(reverse("audit:verify"))
    verification = AuditVerification.objects.get()
    run_worker(redis_queue)
    assert audit_verification_run(verification_id=verification.pk) is None
    assert AuditEvent.objects.filter(action="audit.verified").count() == 1


@pytest.mark.django_db(transaction=True)
def test_nothing_is_queued_when_the_request_rolls_back(auditor, redis_queue):
    from django.db import transaction

    from portal.audit.services import audit_verification_request

    with pytest.raises(RuntimeError), transaction.atomic():
        audit_verification_request(actor=auditor)
        raise RuntimeError("abandoned")
    assert redis_queue.count == 0
    assert not AuditVerification.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_queue_outage_is_recorded_not_left_waiting(auditor, settings, client_for):
    # Nothing listens on port 1: the enqueue after commit fails as it would with Redis down.
    settings.RQ_QUEUES = {"default": {"URL": "redis://127.0.0.1:1/0", "DEFAULT_TIMEOUT": 60}}
    client_for(auditor).post(reverse("audit:verify"))
    verification = AuditVerification.objects.get()
    assert verification.status == VerificationStatus.ERROR
    assert "job queue is unavailable" in verification.message
    assert AuditEvent.objects.filter(action="audit.verification_not_queued").exists()
