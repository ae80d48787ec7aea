"""Whole waves under duress: workers killed at random, and a tenant that throttles, fails, hangs and loses answers."""

from __future__ import annotations

import random
import signal
import time
from collections import defaultdict

import pytest

from migration.models import WaveMailbox, WaveMailboxState
from migration.services.migration_runs import wave_dispatch
from portal.m365.config import load_m365_config
from tests.migration.migration_run_support import (
    EXCHANGE_ONLINE_PROFILE,
    SCHEDULER_LOCK,
    changes_applied_twice,
    check_agreement,
    legacy,
    prepare,
    profile_ids,
    running_wave,
    start_worker,
    stop_worker,
    wait_for,
    wave_finished,
)
from tests.simulator import run_simulator

pytestmark = [pytest.mark.slow, pytest.mark.serial, pytest.mark.django_db(transaction=True)]

WORKERS = 3
KILLS = 20
# Every 429 blocks its application user for the Retry-After second, and one request in ten is a 429:
# spread over more application users, and with workers enough to keep them busy, the wave spends its
# time on the faults rather than queueing behind a handful of blocked users.
THROTTLED_APPS = 8
THROTTLED_WORKERS = 10


def _in_flight(wave) -> bool:
    return WaveMailbox.objects.filter(
        wave=wave, state__in=[WaveMailboxState.SCHEDULED, WaveMailboxState.RUNNING, WaveMailboxState.WAITING]
    ).exists()


def test_workers_killed_at_random_leave_no_mailbox_half_done(redis_queue, migration_lead, settings, tmp_path):
    rng = random.Random(20261126)
    with run_simulator(tmp_path / "sim", seed="2000", apps=2) as sim:
        settings.M365 = load_m365_config(sim.portal_env())
        prepare(sim, test_enable_delay=0.5)
        exo = profile_ids(sim)[EXCHANGE_ONLINE_PROFILE]
        rows = legacy(sim, owner="queue", count=3) + legacy(sim, owner="systemuser", count=197)
        wave = running_wave(rows, creator=migration_lead, test_enable_cap=1000)
        # Slow enough that a kill lands in the middle of steps, not only between jobs.
        sim.control("PUT", "faults", {"slow_ms": 25, "surfaces": ["dataverse"]})
        since = sim.last_seq()
        logs = [tmp_path / f"worker-{n}.log" for n in range(WORKERS)]
        workers = []
        for log in logs:
            workers.append(start_worker(sim, log))
            if len(workers) == 1:  # the first worker runs the scheduler; the others wait their turn for it
                wait_for(lambda: redis_queue.connection.exists(SCHEDULER_LOCK), timeout=30, what="a scheduler runs")
        scheduler_holder = 0
        kills = 0
        try:
            wave_dispatch(wave_id=wave.pk)
            while kills < KILLS:
                time.sleep(rng.uniform(0.4, 2.0))
                if not _in_flight(wave):
                    break
                victim = rng.randrange(WORKERS)
                stop_worker(workers[victim], signal.SIGKILL)
                kills += 1
                if victim == scheduler_holder:
                    redis_queue.connection.delete(SCHEDULER_LOCK)  # as its expiry would, a minute later
                workers[victim] = start_worker(sim, logs[victim])
            assert kills >= KILLS, f"the wave finished after only {kills} kills"
            wait_for(wave_finished(wave), timeout=240, what="every mailbox has finished", logs=logs)
        finally:
            for worker in workers:
                stop_worker(worker, signal.SIGTERM)
        sim.control("DELETE", "faults")

        states = check_agreement(sim, wave, exchange_online_profile=exo)
        assert states[WaveMailboxState.MIGRATED] == len(rows), states
        assert changes_applied_twice(sim, since, wave) == []


def test_a_wave_comes_through_throttling_errors_timeouts_and_lost_answers(
    redis_queue, migration_lead, settings, tmp_path
):
    with run_simulator(tmp_path / "sim", seed="2000", apps=THROTTLED_APPS) as sim:
        # Client timeouts are respected: a request the tenant holds for 2 s is abandoned after 1 s.
        timeouts = {"M365_TIMEOUT_SECONDS": "1"}
        settings.M365 = load_m365_config({**sim.portal_env(), **timeouts})
        prepare(sim, test_enable_delay=0.5)
        exo = profile_ids(sim)[EXCHANGE_ONLINE_PROFILE]
        rows = legacy(sim, owner="queue", count=3) + legacy(sim, owner="systemuser", count=497)
        wave = running_wave(rows, creator=migration_lead, test_enable_cap=1000)
        sim.control(
            "PUT",
            "faults",
            {
                "rate_429": 0.10,
                "rate_5xx": 0.05,
                "rate_timeout": 0.02,
                "rate_lost_response": 0.01,
                "timeout_hold_seconds": 2,
                "retry_after": 1,
                "surfaces": ["dataverse"],
                "seed": 7,
            },
        )
        since = sim.last_seq()
        logs = [tmp_path / f"worker-{n}.log" for n in range(THROTTLED_WORKERS)]
        workers = [start_worker(sim, log, **timeouts) for log in logs]
        try:
            wave_dispatch(wave_id=wave.pk)
            wait_for(wave_finished(wave), timeout=900, what="every mailbox has finished", logs=logs)
        finally:
            for worker in workers:
                stop_worker(worker, signal.SIGTERM)
        sim.control("DELETE", "faults")
        ledger = sim.ledger(since)

        states = check_agreement(sim, wave, exchange_online_profile=exo)
        assert states[WaveMailboxState.MIGRATED] + states[WaveMailboxState.NEEDS_ATTENTION] == len(rows)
        assert states[WaveMailboxState.MIGRATED] >= len(rows) * 0.95, states
        assert changes_applied_twice(sim, since, wave) == []

        faults = defaultdict(int)
        for entry in ledger:
            faults[entry.get("fault")] += 1
        assert faults["429"] and faults["5xx"] and faults["timeout"] and faults["lost_response"], dict(faults)

        # After a 429 the application user sends nothing until its Retry-After has passed. A request already
        # on its way when the 429 was answered (its budget taken, its connection opening) is not held back,
        # so the quiet period starts half a second after the 429; the tenant records arrivals, not sends.
        by_app = defaultdict(list)
        for entry in ledger:
            if entry["surface"] == "dataverse" and entry.get("app"):
                by_app[entry["app"]].append(entry)
        early = []
        for calls in by_app.values():
            for call in calls:
                if call["status"] != 429 or not call.get("retry_after"):
                    continue
                quiet_from = call["at"] + (call.get("ms") or 0) / 1000 + 0.5
                quiet_until = call["at"] + call["retry_after"] - 0.05
                early += [
                    {"throttled": call, "sent": other, "after_seconds": round(other["at"] - call["at"], 3)}
                    for other in calls
                    if other["seq"] != call["seq"] and quiet_from <= other["at"] < quiet_until
                ]
        assert early == [], early[:5]
