"""The shared rate budget: every worker together stays under Microsoft's limits."""

from __future__ import annotations

import bisect
import multiprocessing
import random
import time

import pytest
import redis
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from portal.m365.budget import BudgetExhaustedError, BudgetLimits, RateBudget, dataverse_limits
from portal.m365.config import load_m365_config
from portal.m365.errors import TransientError

APP = "3b0c5a8e-0000-4000-8000-00000000a001"
OTHER_APP = "3b0c5a8e-0000-4000-8000-00000000a002"


def test_the_window_blocks_the_request_over_the_limit_until_the_oldest_leaves(make_budget, fake_time):
    budget = make_budget(max_requests=3, window_seconds=10)
    for _ in range(3):
        budget.acquire(APP).release()
        fake_time.now += 1  # requests at t, t+1, t+2

    lease = budget.acquire(APP)  # waits for the first request to leave the window

    assert fake_time.sleeps == [pytest.approx(7.0, abs=0.002)]
    lease.release()


def test_a_request_counts_until_a_window_after_its_answer_came_back(make_budget, fake_time):
    budget = make_budget(max_requests=1, window_seconds=10)
    lease = budget.acquire(APP)
    fake_time.now += 3  # a slow request: Microsoft may have received it at any moment of these 3 s
    lease.release()

    budget.acquire(APP).release()

    assert fake_time.sleeps == [pytest.approx(10.0, abs=0.002)]  # 10 s after the answer, not after the lease


def test_a_request_still_in_flight_never_leaves_the_window(make_budget, fake_time):
    budget = make_budget(max_requests=1, window_seconds=10, lease_seconds=60, max_wait_seconds=0)
    in_flight = budget.acquire(APP)
    fake_time.now += 15  # longer than the window, but its answer has not come back

    with pytest.raises(BudgetExhaustedError) as raised:
        budget.acquire(APP)

    assert raised.value.code == "budget_window"
    assert raised.value.retry_after == pytest.approx(10.0)  # at the earliest a window after its answer
    in_flight.release()


def _worker_sending_through_the_budget(redis_url, prefix, limits, start, seconds, seed, arrivals):
    """One worker process: take a lease, then the request reaches the service after a varying delay
    (building it, the network, the service accepting it), is answered, and the lease is released."""
    randomly = random.Random(seed)
    budget = RateBudget(redis_client=redis.Redis.from_url(redis_url), limits=limits, service="dataverse", prefix=prefix)
    seen = []
    start.wait(timeout=60)
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        try:
            lease = budget.acquire(APP)
        except BudgetExhaustedError:
            continue
        time.sleep(randomly.uniform(0, 0.04))
        seen.append(time.monotonic())  # the moment the service counts it (one clock for every process)
        time.sleep(randomly.uniform(0, 0.02))
        lease.release()
    arrivals.put(seen)


@pytest.mark.slow
def test_workers_in_several_processes_never_exceed_the_limit_in_any_window(budget_prefix):
    limits = BudgetLimits(max_concurrent=48, max_requests=20, window_seconds=1.0, lease_seconds=60.0)
    context = multiprocessing.get_context("spawn")
    arrivals = context.Queue()
    start = context.Barrier(6)  # every worker sends for the same 4 s, however long each took to start
    workers = [
        context.Process(
            target=_worker_sending_through_the_budget,
            args=(settings.REDIS_URL, budget_prefix, limits, start, 4.0, seed, arrivals),
        )
        for seed in range(6)
    ]
    for worker in workers:
        worker.start()
    received = sorted(moment for _ in workers for moment in arrivals.get(timeout=60))
    for worker in workers:
        worker.join(timeout=30)

    # As the service counts: the requests that arrived in the window ending at each arrival.
    busiest = max(index + 1 - bisect.bisect_right(received, moment - 1.0) for index, moment in enumerate(received))
    assert busiest <= 20
    assert busiest >= 16  # and the budget lets them through up to the limit, not far below it
    assert len(received) >= 40


def test_a_full_window_beyond_the_allowed_wait_fails_at_once_with_when_to_come_back(make_budget, fake_time):
    budget = make_budget(max_requests=2, window_seconds=300, max_wait_seconds=30)
    budget.acquire(APP).release()
    budget.acquire(APP).release()

    with pytest.raises(BudgetExhaustedError) as raised:
        budget.acquire(APP)

    assert raised.value.is_transient
    assert raised.value.code == "budget_window"
    assert raised.value.retry_after == pytest.approx(300.0, abs=0.002)
    assert "request window" in raised.value.message
    assert fake_time.sleeps == []  # no pointless half-wait


def test_the_window_holds_on_the_redis_servers_own_clock(make_budget):
    budget = make_budget(max_requests=1, window_seconds=30, max_wait_seconds=0, redis_clock=True)
    budget.acquire(APP).release()

    with pytest.raises(BudgetExhaustedError) as raised:
        budget.acquire(APP)

    assert 29 < raised.value.retry_after <= 30.002


def test_a_killed_workers_lease_frees_itself_when_it_expires(make_budget, fake_time):
    budget = make_budget(max_concurrent=1, lease_seconds=2, max_wait_seconds=10)
    budget.acquire(APP)  # the worker holding it dies without releasing

    lease = budget.acquire(APP)

    assert sum(fake_time.sleeps) == pytest.approx(2.0, abs=0.06)
    lease.release()


def test_a_released_lease_frees_its_slot_at_once(make_budget, fake_time):
    budget = make_budget(max_concurrent=1)
    with budget.acquire(APP):
        pass

    budget.acquire(APP).release()

    assert fake_time.sleeps == []


def test_concurrency_slots_are_shared_between_budget_instances(make_budget, fake_time):
    first_worker = make_budget(max_concurrent=2, max_wait_seconds=0.2)
    second_worker = make_budget(
        max_concurrent=2, max_wait_seconds=0.2, connection=redis.Redis.from_url(settings.REDIS_URL)
    )
    first_worker.acquire(APP)
    first_worker.acquire(APP)

    with pytest.raises(BudgetExhaustedError) as raised:
        second_worker.acquire(APP)

    assert raised.value.code == "budget_concurrency"


MAILBOXES = [f"{APP}:room{number}@example.gov.uk" for number in range(20)]


def test_many_keys_are_taken_together_and_each_counts_against_its_own_limit(make_budget, fake_time):
    budget = make_budget(max_concurrent=1, max_requests=2, max_wait_seconds=0.2)

    leases = budget.acquire_many([*MAILBOXES, MAILBOXES[0]])  # a repeated key is taken once

    assert sorted(lease.key for lease in leases) == sorted(MAILBOXES)
    assert fake_time.sleeps == []  # every key had room: nothing waited
    with pytest.raises(BudgetExhaustedError) as raised:
        budget.acquire(MAILBOXES[7])  # its one slot is held by the batch
    assert raised.value.code == "budget_concurrency"
    budget.release_many(leases)
    budget.acquire(MAILBOXES[7]).release()  # given back; and that was its second request
    with pytest.raises(BudgetExhaustedError) as raised:
        budget.acquire(MAILBOXES[7])
    assert raised.value.code == "budget_window"


def test_when_one_key_has_no_room_none_of_the_others_stay_held(make_budget, fake_time):
    budget = make_budget(max_concurrent=1, max_wait_seconds=0.1)
    other_worker = budget.acquire(MAILBOXES[3])

    with pytest.raises(BudgetExhaustedError):
        budget.acquire_many(MAILBOXES)

    # Every other mailbox is free again at once.
    budget.release_many([budget.acquire(key) for key in MAILBOXES if key != MAILBOXES[3]])
    other_worker.release()
    budget.release_many(budget.acquire_many(MAILBOXES))


def test_a_429_blocks_every_worker_of_that_application_user(make_budget, fake_time):
    worker_that_got_429 = make_budget(max_wait_seconds=5)
    another_worker = make_budget(max_wait_seconds=5, connection=redis.Redis.from_url(settings.REDIS_URL))

    worker_that_got_429.block(APP, seconds=30)

    assert another_worker.blocked_for(APP) == pytest.approx(30.0)
    with pytest.raises(BudgetExhaustedError) as raised:
        another_worker.acquire(APP)
    assert raised.value.code == "budget_blocked"
    assert raised.value.retry_after == pytest.approx(30.0)
    another_worker.acquire(OTHER_APP).release()  # another application user is not affected


def test_a_block_within_the_allowed_wait_is_waited_out_exactly(make_budget, fake_time):
    budget = make_budget(max_wait_seconds=60)
    budget.block(APP, seconds=12)

    budget.acquire(APP).release()

    assert fake_time.sleeps == [pytest.approx(12.0)]


def test_a_shorter_retry_after_never_shortens_a_block(make_budget):
    budget = make_budget()
    budget.block(APP, seconds=60)
    budget.block(APP, seconds=5)

    assert budget.blocked_for(APP) == pytest.approx(60.0)


def test_execution_time_counts_against_the_window(make_budget):
    budget = make_budget(max_execution_seconds=0.02, max_wait_seconds=0)
    with budget.acquire(APP):
        time.sleep(0.03)  # a slow request

    with pytest.raises(BudgetExhaustedError) as raised:
        budget.acquire(APP)

    assert raised.value.code == "budget_execution"


def test_room_reports_the_tightest_facet(make_budget, fake_time):
    budget = make_budget(max_requests=10, max_concurrent=4)
    assert budget.room(APP) == 1.0

    held = [budget.acquire(APP) for _ in range(2)]

    assert budget.room(APP) == pytest.approx(0.5)  # 2 of 4 slots busy; 2 of 10 requests used
    for lease in held:
        lease.release()
    budget.block(APP, seconds=10)
    assert budget.standing(APP) == (0.0, pytest.approx(10.0))


def test_each_application_user_has_its_own_budget(make_budget):
    budget = make_budget(max_requests=1, max_wait_seconds=0)
    budget.acquire(APP).release()

    budget.acquire(OTHER_APP).release()

    with pytest.raises(BudgetExhaustedError):
        budget.acquire(APP)


def test_redis_being_down_is_a_transient_error_not_a_crash(make_budget):
    unreachable = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    budget = make_budget(connection=unreachable)

    with pytest.raises(TransientError) as raised:
        budget.acquire(APP)

    assert raised.value.code == "budget_unavailable"


def test_limits_come_from_the_environment_with_defaults_below_microsofts():
    defaults = load_m365_config({"M365_TENANT_ID": "t", "M365_CLIENT_ID": "c", "M365_CLIENT_SECRET": "s"})
    tuned = load_m365_config(
        {
            "M365_TENANT_ID": "t",
            "M365_CLIENT_ID": "c",
            "M365_CLIENT_SECRET": "s",
            "DATAVERSE_MAX_REQUESTS_PER_WINDOW": "1000",
            "DATAVERSE_WINDOW_SECONDS": "60",
            "DATAVERSE_MAX_CONCURRENT": "8",
            "DATAVERSE_MAX_EXECUTION_SECONDS": "300",
            "GRAPH_MAX_CONCURRENT_PER_MAILBOX": "2",
        }
    )

    limits = dataverse_limits(defaults)
    assert (limits.max_requests, limits.window_seconds, limits.max_concurrent) == (5800, 300, 48)
    assert limits.max_execution_seconds == 1100
    assert defaults.graph_max_concurrent_per_mailbox == 4
    assert (tuned.dataverse_max_requests_per_window, tuned.dataverse_window_seconds) == (1000, 60)
    assert (tuned.dataverse_max_concurrent, tuned.dataverse_max_execution_seconds) == (8, 300)
    assert tuned.graph_max_concurrent_per_mailbox == 2


def test_a_limit_above_microsofts_is_refused_at_start_up():
    with pytest.raises(ImproperlyConfigured, match="DATAVERSE_MAX_CONCURRENT must be at most 52"):
        load_m365_config(
            {"M365_TENANT_ID": "t", "M365_CLIENT_ID": "c", "M365_CLIENT_SECRET": "s", "DATAVERSE_MAX_CONCURRENT": "100"}
        )
