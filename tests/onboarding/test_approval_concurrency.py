"""Two approvers deciding the same stage at the same moment, each on their own database connection.

Both threads are released together at the point where ``approval_decide`` takes its row lock,
and whoever gets the lock holds it a little longer than needed: without the lock and the
re-check inside it, both would find the stage waiting and both decisions would be recorded.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connections

from onboarding.models import Decision, Notification, NotificationEvent, ProvisioningRun, RequestStatus, StageStatus
from onboarding.services import approvals as approval_services
from onboarding.services import provisioning
from onboarding.services.approvals import approval_decide
from portal.exceptions import InvalidStateError
from tests.onboarding.approval_helpers import (
    configure_route,
    draft_for,
    make_cast,
    owner_stage,
    role_stage,
    statuses,
    submit,
    waiting_stage,
)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def cast(redis_queue):
    # Transactional tests commit, so notifications and provisioning really queue their jobs.
    return make_cast()


@pytest.fixture
def route(cast):
    return configure_route(owner_stage(), role_stage())


@pytest.fixture
def together(monkeypatch):
    """From the call on, hold both callers of the request lock at a barrier, then keep the lock a moment."""

    def install() -> None:
        barrier = threading.Barrier(2, timeout=20)
        real_lock = approval_services._lock_request

        def lock_together(request_id: int):
            barrier.wait()
            locked = real_lock(request_id)
            time.sleep(0.3)
            return locked

        monkeypatch.setattr(approval_services, "_lock_request", lock_together)

    return install


@pytest.fixture
def provisioning_attempts(monkeypatch):
    attempts: list[int] = []
    real = provisioning.provisioning_start

    def counting(*, request, actor):
        attempts.append(request.pk)
        return real(request=request, actor=actor)

    monkeypatch.setattr(provisioning, "provisioning_start", counting)
    return attempts


def race(*deciders: Callable[[], Any]) -> tuple[list[Any], list[BaseException]]:
    """Run each decider in its own thread (so on its own connection); collect results and errors."""
    results: list[Any] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run(decide: Callable[[], Any]) -> None:
        try:
            outcome = decide()
            with lock:
                results.append(outcome)
        except BaseException as error:
            with lock:
                errors.append(error)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(decide,)) for decide in deciders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a decision never finished"
    return results, errors


def test_two_approvers_approving_the_same_stage_make_one_decision(cast, route, together):
    request = submit(draft_for(cast))
    stage = waiting_stage(request)
    together()

    results, errors = race(
        lambda: approval_decide(actor=cast.owner, stage_id=stage.pk, outcome="approve"),
        lambda: approval_decide(actor=cast.second_owner, stage_id=stage.pk, outcome="approve"),
    )

    assert len(results) == 1 and len(errors) == 1
    (loser,) = errors
    assert isinstance(loser, InvalidStateError)
    winner = results[0].decided_by
    assert loser.message == f"This stage was decided by {winner.display_name} a moment ago (approved)."
    assert Decision.objects.filter(stage=stage).count() == 1
    assert statuses(request) == [StageStatus.APPROVED, StageStatus.WAITING]
    # The second stage opened once, so its approvers were asked once.
    assert Notification.objects.filter(request=request, event=NotificationEvent.DECISION_NEEDED).count() == 2


def test_an_approval_and_a_rejection_at_the_same_moment_leave_one_consistent_outcome(cast, route, together):
    request = submit(draft_for(cast))
    stage = waiting_stage(request)
    together()

    results, errors = race(
        lambda: approval_decide(actor=cast.owner, stage_id=stage.pk, outcome="approve"),
        lambda: approval_decide(actor=cast.second_owner, stage_id=stage.pk, outcome="reject", reason="Duplicate"),
    )

    assert len(results) == 1 and len(errors) == 1 and isinstance(errors[0], InvalidStateError)
    request.refresh_from_db()
    if results[0].outcome == "approve":
        assert request.status == RequestStatus.SUBMITTED and statuses(request) == ["approved", "waiting"]
    else:
        assert request.status == RequestStatus.REJECTED and statuses(request) == ["rejected", "cancelled"]
    assert Decision.objects.filter(request=request).count() == 1


def test_two_final_approvals_at_the_same_moment_start_provisioning_once(cast, route, together, provisioning_attempts):
    request = submit(draft_for(cast))
    approval_decide(actor=cast.owner, stage_id=waiting_stage(request).pk, outcome="approve")
    final = waiting_stage(request)
    together()

    results, errors = race(
        lambda: approval_decide(actor=cast.admin, stage_id=final.pk, outcome="approve"),
        lambda: approval_decide(actor=cast.other_admin, stage_id=final.pk, outcome="approve"),
    )

    assert len(results) == 1 and len(errors) == 1 and isinstance(errors[0], InvalidStateError)
    assert Decision.objects.filter(stage=final).count() == 1
    assert provisioning_attempts == [request.pk]
    assert ProvisioningRun.objects.filter(request=request).count() == 1
    request.refresh_from_db()
    assert request.status == RequestStatus.PROVISIONING
