"""Rate budgets towards Microsoft, shared by every worker through Redis.

Dataverse enforces service protection limits per application user over a sliding 300 s window
(6,000 requests, 1,200 s of combined execution time, 52 concurrent requests) and answers 429 with
``Retry-After`` when one is exceeded, extending the wait for a client that keeps pushing. Graph
allows 4 concurrent requests per application per mailbox. Rather than bounce off those limits,
every call first takes a lease from the budget of its application user:

* a sorted set of leases with expiry times is the concurrency limit (a killed worker's lease
  expires by itself instead of holding the slot for ever);
* the sliding window counts every request from the moment its lease is taken until a whole
  window after its answer came back: the leases while in flight, then a sorted set of answered
  requests by the time of their answer. Microsoft counts a request from when it *arrives*, some
  time after the lease was taken (it still has to be built, sent and accepted) and before the
  answer; counting from the lease alone would let a request taken just as the window moved on
  arrive while the one it replaced still counts at Microsoft's end, and be refused;
* a sorted set of finished requests and their durations is the execution-time window;
* ``blocked_until`` records a 429's ``Retry-After`` so *every* worker waits it out, not only
  the one that received it;
* the total time callers waited for room is kept per key, so an operator (or a benchmark) can
  tell work held back by the budget from work held back by anything else.

Each check-and-take is one Lua script, so it is atomic across workers. Time comes from the Redis
server (one clock for every worker) unless a clock is injected. Each application registration has
its own budget, so adding registrations raises throughput.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import redis
from django.conf import settings
from redis.commands.core import Script

from portal.m365.config import M365Config
from portal.m365.errors import TransientError

logger = logging.getLogger("portal.m365")

DEFAULT_PREFIX = "portal:m365:budget"
# Graph's Outlook limit per app per mailbox: 10,000 requests in 10 minutes; kept a little below.
GRAPH_MAILBOX_REQUESTS_PER_WINDOW = 9500
GRAPH_MAILBOX_WINDOW_SECONDS = 600


class _ScriptMissing(Exception):
    """Redis no longer holds a script (it restarted, or its cache was flushed); load it again."""


class BudgetExhaustedError(TransientError):
    """The portal's own budget had no room within the wait allowed; try the step again later.

    Raised before anything is sent, so it is always safe to retry. It has already waited, so
    the client does not retry it again; ``retry_after`` says when room is expected.
    """

    retry_inside_client = False


@dataclass(frozen=True)
class BudgetLimits:
    """The limits one budget key lives under. ``0`` switches a facet off."""

    max_concurrent: int
    max_requests: int = 0
    window_seconds: float = 300.0
    max_execution_seconds: float = 0.0
    lease_seconds: float = 120.0


_PRELUDE = """
local function now_ms(arg)
  local given = tonumber(arg)
  if given >= 0 then return given end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function extend(key, ms)
  local current = redis.call('PTTL', key)
  if current < ms then redis.call('PEXPIRE', key, ms) end
end

-- Drop finished requests that left the window and take their durations off the running total.
local function prune_execution(exec_key, state_key, cutoff)
  local expired = redis.call('ZRANGEBYSCORE', exec_key, '-inf', cutoff)
  if #expired > 0 then
    local spent = 0
    for _, member in ipairs(expired) do
      spent = spent + tonumber(string.match(member, ':(%d+)$'))
    end
    redis.call('ZREMRANGEBYSCORE', exec_key, '-inf', cutoff)
    redis.call('HINCRBY', state_key, 'exec_ms', -spent)
  end
  if redis.call('ZCARD', exec_key) == 0 then
    redis.call('HSET', state_key, 'exec_ms', 0)
    return 0
  end
  return math.max(0, tonumber(redis.call('HGET', state_key, 'exec_ms') or '0'))
end

-- Drop expired leases; returns how many are still in flight. A lease expires when its worker died
-- or hung; by then any attempt it made has timed out, so its request counts in the window as
-- answered at the lease's expiry.
local function prune_leases(lease_key, window_key, now, max_requests)
  if max_requests > 0 then
    local expired = redis.call('ZRANGEBYSCORE', lease_key, '-inf', now, 'WITHSCORES')
    for index = 1, #expired, 2 do
      redis.call('ZADD', window_key, expired[index + 1], expired[index])
    end
  end
  redis.call('ZREMRANGEBYSCORE', lease_key, '-inf', now)
  return redis.call('ZCARD', lease_key)
end
"""

# Checking and taking one key's facets: the window, the execution time, a concurrency slot.
_TAKE = """
-- {wait_ms, reason} when the key has no room now, nil when it has.
local function refusal(window_key, lease_key, exec_key, state_key, now, window_ms, max_requests, max_concurrent,
                       max_exec_ms, poll_ms)
  local blocked_until = tonumber(redis.call('HGET', state_key, 'blocked_until') or '0')
  if blocked_until > now then
    return {blocked_until - now, 'blocked'}
  end
  local in_flight = prune_leases(lease_key, window_key, now, max_requests)
  if max_requests > 0 then
    redis.call('ZREMRANGEBYSCORE', window_key, '-inf', now - window_ms)
    local answered = redis.call('ZCARD', window_key)
    local over = answered + in_flight - max_requests
    if over >= 0 then
      -- Room returns once (over + 1) requests have left the window, the answered ones first, oldest
      -- answer first; one still in flight leaves it a whole window after its answer at the earliest.
      if over >= answered then
        return {window_ms, 'window'}
      end
      local edge = redis.call('ZRANGE', window_key, over, over, 'WITHSCORES')
      return {math.max(1, tonumber(edge[2]) + window_ms - now), 'window'}
    end
  end
  if max_exec_ms > 0 then
    local used = prune_execution(exec_key, state_key, now - window_ms)
    if used >= max_exec_ms then
      local oldest = redis.call('ZRANGE', exec_key, 0, 0, 'WITHSCORES')
      return {math.max(1, tonumber(oldest[2]) + window_ms - now), 'execution'}
    end
  end
  if in_flight >= max_concurrent then
    local first = redis.call('ZRANGE', lease_key, 0, 0, 'WITHSCORES')
    return {math.max(1, math.min(poll_ms, tonumber(first[2]) - now)), 'concurrency'}
  end
  return nil
end

local function take(keys, lease_key, now, lease_ms, lease_id, ttl_ms)
  redis.call('ZADD', lease_key, now + lease_ms, lease_id)
  for _, key in ipairs(keys) do
    if redis.call('EXISTS', key) == 1 then extend(key, ttl_ms) end
  end
end
"""

# KEYS: window, leases, execution, state
# ARGV: now_ms (-1: Redis clock), window_ms, max_requests, max_concurrent, lease_ms, max_exec_ms,
#       lease_id, poll_ms, waited_ms (how long this caller has already waited for room)
# Returns {1, now} when granted, else {0, wait_ms, reason}.
_ACQUIRE = (
    _PRELUDE
    + _TAKE
    + """
local now = now_ms(ARGV[1])
local window_ms, max_requests = tonumber(ARGV[2]), tonumber(ARGV[3])
local max_concurrent, lease_ms = tonumber(ARGV[4]), tonumber(ARGV[5])
local max_exec_ms, poll_ms = tonumber(ARGV[6]), tonumber(ARGV[8])
local refused = refusal(KEYS[1], KEYS[2], KEYS[3], KEYS[4], now, window_ms, max_requests, max_concurrent,
                        max_exec_ms, poll_ms)
if refused then
  return {0, refused[1], refused[2]}
end
local waited_ms = tonumber(ARGV[9])
if waited_ms > 0 then
  redis.call('HINCRBY', KEYS[4], 'waited_ms', waited_ms)
end
take(KEYS, KEYS[2], now, lease_ms, ARGV[7], window_ms + lease_ms + 60000)
return {1, now}
"""
)

# Several keys at once, all or none. KEYS: window, leases, execution, state of each key in turn.
# ARGV: as _ACQUIRE, with a lease id prefix in place of the lease id (the n-th key's lease is
# prefix .. n). Returns {1, now} when every key was granted, else {0, wait_ms, reason} of the
# first refusal, having taken nothing.
_ACQUIRE_MANY = (
    _PRELUDE
    + _TAKE
    + """
local now = now_ms(ARGV[1])
local window_ms, max_requests = tonumber(ARGV[2]), tonumber(ARGV[3])
local max_concurrent, lease_ms = tonumber(ARGV[4]), tonumber(ARGV[5])
local max_exec_ms, poll_ms = tonumber(ARGV[6]), tonumber(ARGV[8])
for first = 1, #KEYS, 4 do
  local refused = refusal(KEYS[first], KEYS[first + 1], KEYS[first + 2], KEYS[first + 3], now, window_ms,
                          max_requests, max_concurrent, max_exec_ms, poll_ms)
  if refused then
    return {0, refused[1], refused[2]}
  end
end
local ttl_ms = window_ms + lease_ms + 60000
for first = 1, #KEYS, 4 do
  local keys = {KEYS[first], KEYS[first + 1], KEYS[first + 2], KEYS[first + 3]}
  take(keys, keys[2], now, lease_ms, ARGV[7] .. ((first - 1) / 4 + 1), ttl_ms)
end
return {1, now}
"""
)

# KEYS: window, leases, execution, state.
# ARGV: now_ms, lease_id, duration_ms, track_execution (0/1), ttl_ms, track_window (0/1)
_RELEASE = (
    _PRELUDE
    + """
local now = now_ms(ARGV[1])
local removed = redis.call('ZREM', KEYS[2], ARGV[2])
if tonumber(ARGV[6]) == 1 then
  -- The answer is back, so Microsoft received the request before now: it counts until a window from
  -- now (one millisecond more covers the clock's rounding down).
  redis.call('ZADD', KEYS[1], now + 1, ARGV[2])
  extend(KEYS[1], tonumber(ARGV[5]))
end
if tonumber(ARGV[4]) == 1 then
  redis.call('ZADD', KEYS[3], now, ARGV[2] .. ':' .. ARGV[3])
  redis.call('HINCRBY', KEYS[4], 'exec_ms', tonumber(ARGV[3]))
  extend(KEYS[3], tonumber(ARGV[5]))
  extend(KEYS[4], tonumber(ARGV[5]))
end
return removed
"""
)

# KEYS: state.  ARGV: now_ms, block_ms, ttl_ms.  Returns the milliseconds still blocked.
_BLOCK = (
    _PRELUDE
    + """
local now = now_ms(ARGV[1])
local block_ms = tonumber(ARGV[2])
local current = tonumber(redis.call('HGET', KEYS[1], 'blocked_until') or '0')
local wanted = now + block_ms
if wanted > current then
  redis.call('HSET', KEYS[1], 'blocked_until', wanted)
  current = wanted
end
extend(KEYS[1], block_ms + tonumber(ARGV[3]))
return current - now
"""
)

# KEYS: window, leases, execution, state.  ARGV: now_ms, window_ms, max_requests, max_concurrent, max_exec_ms
# Returns room in thousandths (0 = none, 1000 = idle) and the milliseconds still blocked.
_ROOM = (
    _PRELUDE
    + """
local window_key, lease_key, exec_key, state_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now = now_ms(ARGV[1])
local window_ms = tonumber(ARGV[2])
local max_requests = tonumber(ARGV[3])
local max_concurrent = tonumber(ARGV[4])
local max_exec_ms = tonumber(ARGV[5])
local blocked_until = tonumber(redis.call('HGET', state_key, 'blocked_until') or '0')
if blocked_until > now then
  return {0, blocked_until - now}
end
local room = 1000
local active = prune_leases(lease_key, window_key, now, max_requests)
if max_requests > 0 then
  redis.call('ZREMRANGEBYSCORE', window_key, '-inf', now - window_ms)
  local count = redis.call('ZCARD', window_key) + active
  room = math.min(room, math.floor(1000 * (max_requests - count) / max_requests))
end
if max_exec_ms > 0 then
  local used = prune_execution(exec_key, state_key, now - window_ms)
  room = math.min(room, math.floor(1000 * (max_exec_ms - used) / max_exec_ms))
end
room = math.min(room, math.floor(1000 * (max_concurrent - active) / max_concurrent))
return {math.max(0, room), 0}
"""
)


class Lease:
    """One request's place in a budget; release it when the call is over (or use ``with``)."""

    def __init__(self, *, budget: RateBudget, key: str, lease_id: str) -> None:
        self._budget = budget
        self.key = key
        self.lease_id = lease_id
        self._started = time.monotonic()
        self._released = False

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        self._budget._release(self, duration_seconds=time.monotonic() - self._started)

    def __enter__(self) -> Lease:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


class RateBudget:
    """A budget per key (an application user, or an app and a mailbox), shared through Redis."""

    def __init__(
        self,
        *,
        redis_client: redis.Redis,
        limits: BudgetLimits,
        service: str,
        prefix: str = DEFAULT_PREFIX,
        max_wait_seconds: float = 30.0,
        poll_seconds: float = 0.05,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """``clock`` (epoch seconds) replaces the Redis server's clock, e.g. for tests; ``sleep`` likewise."""
        if limits.max_concurrent < 1:
            raise ValueError("A budget needs room for at least one concurrent request.")
        self.limits = limits
        self.service = service
        self._redis = redis_client
        self._prefix = prefix
        self._max_wait = max_wait_seconds
        self._poll_ms = max(1, round(poll_seconds * 1000))
        self._clock = clock
        self._sleep = sleep
        self._acquire_script = redis_client.register_script(_ACQUIRE)
        self._release_script = redis_client.register_script(_RELEASE)
        self._block_script = redis_client.register_script(_BLOCK)
        self._room_script = redis_client.register_script(_ROOM)
        self._acquire_many_script = redis_client.register_script(_ACQUIRE_MANY)
        self._loaded: dict[str, bool] = {}
        self._lease_prefix = f"{uuid.uuid4().hex[:16]}:"
        self._lease_numbers = itertools.count(1)

    # --- public ------------------------------------------------------------------------

    def acquire(self, key: str) -> Lease:
        """Wait until ``key`` has room in the window and a free concurrency slot, then take one.

        Waits at most ``max_wait_seconds``; when the wait needed is longer (a long
        ``Retry-After``, a full window) it raises :class:`BudgetExhaustedError` at once with
        ``retry_after`` set, so the job can reschedule instead of holding a worker.
        """
        lease_id = self._new_lease_id()
        began = self._monotonic()
        deadline = began + self._max_wait
        waited_ms = 0
        while True:
            result = self._run(
                self._acquire_script,
                keys=self._keys(key),
                args=self._acquire_args(self._now_ms(), lease_id, waited_ms=waited_ms),
            )
            if int(result[0]) == 1:
                return Lease(budget=self, key=key, lease_id=lease_id)
            wait = int(result[1]) / 1000
            reason = result[2].decode() if isinstance(result[2], bytes) else str(result[2])
            remaining = deadline - self._monotonic()
            if reason != "concurrency" and wait > remaining:
                raise self._exhausted(key, reason=reason, wait=wait)
            if remaining <= 0:
                raise self._exhausted(key, reason=reason, wait=wait)
            self._sleep(min(wait, remaining))
            waited_ms = self._ms(self._monotonic() - began)

    def acquire_many(self, keys: Sequence[str]) -> list[Lease]:
        """Leases for several keys (e.g. every mailbox in one Graph ``$batch``), all or none.

        One script call checks every key and takes them all when each has room. When any is
        refused, nothing is held, and the keys are taken one by one in sorted order with
        :meth:`acquire` (which waits, or raises), so two callers wanting overlapping sets cannot
        each hold half and wait for the other. The keys must live on one Redis server (not a
        cluster), as every budget of the portal does.
        """
        unique = sorted(set(keys))
        if not unique:
            return []
        prefix = f"{self._new_lease_id()}:"
        all_keys = [name for key in unique for name in self._keys(key)]
        args = self._acquire_args(self._now_ms(), prefix)
        result = self._script(self._acquire_many_script, all_keys, args)
        if int(result[0]) == 1:
            return [
                Lease(budget=self, key=key, lease_id=f"{prefix}{number}") for number, key in enumerate(unique, start=1)
            ]
        taken: list[Lease] = []
        try:
            for key in unique:
                taken.append(self.acquire(key))
        except BaseException:
            self.release_many(taken)
            raise
        return taken

    def release_many(self, leases: Sequence[Lease]) -> None:
        """Give back several leases in one round trip (see :meth:`Lease.release`)."""
        due = [lease for lease in leases if not lease._released]
        if not due:
            return
        for lease in due:
            lease._released = True
        now = time.monotonic()
        try:
            if self._release_tracks():
                calls = [
                    (self._keys(lease.key), self._release_args(lease, duration_seconds=now - lease._started))
                    for lease in due
                ]
                self._pipelined(self._release_script, calls)
            else:
                pipe = self._redis.pipeline(transaction=False)
                for lease in due:
                    pipe.zrem(self._keys(lease.key)[1], lease.lease_id)
                self._run_pipeline(pipe)
        except TransientError:
            # As in _release: the leases expire by themselves after lease_seconds.
            logger.warning(
                "service=%s could not release %d leases; they expire in %.0fs",
                self.service,
                len(due),
                self.limits.lease_seconds,
                exc_info=True,
            )

    def block(self, key: str, *, seconds: float) -> float:
        """Make every worker wait ``seconds`` before the next request for ``key`` (after a 429).

        Never shortens a block already recorded. Returns the seconds now blocked.
        """
        state_key = self._keys(key)[3]
        ttl_ms = self._ms(self.limits.window_seconds + self.limits.lease_seconds) + 60000
        blocked_ms = self._run(self._block_script, keys=[state_key], args=[self._now_ms(), self._ms(seconds), ttl_ms])
        logger.warning("service=%s budget=%s blocked_for=%.1fs after a 429", self.service, key, seconds)
        return int(blocked_ms) / 1000

    def blocked_for(self, key: str) -> float:
        """Seconds until ``key`` may send again after a 429 (0 when not blocked)."""
        return self.standing(key)[1]

    def room(self, key: str) -> float:
        """How much of ``key``'s tightest facet is free right now: 0 (none, or blocked) to 1 (idle)."""
        return self.standing(key)[0]

    def waited(self, key: str) -> float:
        """Seconds callers have spent waiting for room in ``key``'s budget, all together.

        Kept while the key is in use (it expires with the key's other records once idle), so a
        run that waited a large share of its time was held back by the budget, not by its own speed.
        """
        try:
            waited_ms = self._redis.hget(self._keys(key)[3], "waited_ms")
        except redis.RedisError as exc:
            raise self._unavailable(exc) from exc
        return int(waited_ms or 0) / 1000

    def standing(self, key: str) -> tuple[float, float]:
        """``(room, blocked_for)`` in one round trip, for choosing between application users."""
        result = self._run(
            self._room_script,
            keys=self._keys(key),
            args=[
                self._now_ms(),
                self._ms(self.limits.window_seconds),
                self.limits.max_requests,
                self.limits.max_concurrent,
                self._ms(self.limits.max_execution_seconds),
            ],
        )
        return int(result[0]) / 1000, int(result[1]) / 1000

    # --- internals -----------------------------------------------------------------------

    def _release(self, lease: Lease, *, duration_seconds: float) -> None:
        try:
            self._run(
                self._release_script,
                keys=self._keys(lease.key),
                args=self._release_args(lease, duration_seconds=duration_seconds),
            )
        except TransientError:
            # The call itself is over and its outcome must reach the caller; the lease
            # expires by itself after lease_seconds, so the slot is not lost for ever.
            logger.warning(
                "service=%s budget=%s could not release lease %s; it expires in %.0fs",
                self.service,
                lease.key,
                lease.lease_id,
                self.limits.lease_seconds,
                exc_info=True,
            )

    def _script(self, script: Script, keys: list[str], args: list[object]) -> Any:
        """One call of ``script`` by its SHA (see :meth:`_pipelined`)."""
        return self._pipelined(script, [(keys, args)])[0]

    def _pipelined(self, script: Script, calls: Sequence[tuple[list[str], list[object]]]) -> list[Any]:
        """Run ``script`` once per ``(keys, args)`` in one round trip, by its SHA.

        The script is loaded once per budget (and again if Redis lost it, e.g. after a restart),
        rather than checked before every pipeline as redis-py's ``Script`` would.
        """
        for attempt in (1, 2):
            if not self._loaded.get(script.sha):
                try:
                    self._redis.script_load(script.script)
                except redis.RedisError as exc:
                    raise self._unavailable(exc) from exc
                self._loaded[script.sha] = True
            pipe = self._redis.pipeline(transaction=False)
            for keys, args in calls:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            try:
                return self._run_pipeline(pipe)
            except _ScriptMissing:
                self._loaded.pop(script.sha, None)
                if attempt == 2:
                    raise self._unavailable(redis.exceptions.NoScriptError()) from None
        raise AssertionError("unreachable")

    def _run_pipeline(self, pipe: redis.client.Pipeline) -> list[Any]:
        try:
            return pipe.execute()
        except redis.exceptions.NoScriptError as exc:
            raise _ScriptMissing from exc
        except redis.RedisError as exc:
            raise self._unavailable(exc) from exc

    def _new_lease_id(self) -> str:
        # Unique across processes (the instance's random prefix) without a system call per lease.
        return f"{self._lease_prefix}{next(self._lease_numbers)}"

    def _acquire_args(self, now_ms: int, lease_id: str, *, waited_ms: int = 0) -> list[object]:
        return [
            now_ms,
            self._ms(self.limits.window_seconds),
            self.limits.max_requests,
            self.limits.max_concurrent,
            self._ms(self.limits.lease_seconds),
            self._ms(self.limits.max_execution_seconds),
            lease_id,
            self._poll_ms,
            waited_ms,
        ]

    def _release_tracks(self) -> bool:
        """Whether a release records anything (the answer's time in the window, the execution time)."""
        return self.limits.max_requests > 0 or self.limits.max_execution_seconds > 0

    def _release_args(self, lease: Lease, *, duration_seconds: float) -> list[object]:
        ttl_ms = self._ms(self.limits.window_seconds + self.limits.lease_seconds) + 60000
        return [
            self._now_ms(),
            lease.lease_id,
            max(1, self._ms(duration_seconds)),
            1 if self.limits.max_execution_seconds > 0 else 0,
            ttl_ms,
            1 if self.limits.max_requests > 0 else 0,
        ]

    def _keys(self, key: str) -> list[str]:
        # The hash tag keeps one key's structures in one slot, so the scripts also run on a cluster.
        base = f"{self._prefix}:{self.service}:{{{key}}}"
        return [f"{base}:window", f"{base}:leases", f"{base}:exec", f"{base}:state"]

    def _run(self, script, *, keys: list[str], args: list[object]):  # type: ignore[no-untyped-def]
        try:
            return script(keys=keys, args=args)
        except redis.RedisError as exc:
            raise self._unavailable(exc) from exc

    def _unavailable(self, exc: redis.RedisError) -> TransientError:
        return TransientError(
            message=f"Redis, which holds the shared rate budget, did not answer ({exc.__class__.__name__}).",
            code="budget_unavailable",
            service=self.service,
        )

    def _exhausted(self, key: str, *, reason: str, wait: float) -> BudgetExhaustedError:
        explanations = {
            "blocked": "Microsoft asked this application user to wait (429 Retry-After)",
            "window": "the request window of this application user is full",
            "execution": "the execution-time window of this application user is full",
            "concurrency": "every concurrent slot stayed busy",
        }
        return BudgetExhaustedError(
            message=f"No room in the {self.service} budget for {key}: {explanations.get(reason, reason)}; "
            f"room expected in {wait:.1f}s.",
            code=f"budget_{reason}",
            retry_after=wait,
            service=self.service,
        )

    def _now_ms(self) -> int:
        return -1 if self._clock is None else round(self._clock() * 1000)

    def _monotonic(self) -> float:
        return time.monotonic() if self._clock is None else self._clock()

    @staticmethod
    def _ms(seconds: float) -> int:
        return round(seconds * 1000)


class MailboxLimiter:
    """Graph's per-application, per-mailbox limits (4 concurrent, 10,000 per 10 minutes)."""

    def __init__(self, *, budget: RateBudget) -> None:
        self.budget = budget

    def acquire(self, *, app_key: str, mailbox: str) -> Lease:
        return self.budget.acquire(self._key(app_key, mailbox))

    def acquire_many(self, *, app_key: str, mailboxes: Sequence[str]) -> list[Lease]:
        return self.budget.acquire_many([self._key(app_key, mailbox) for mailbox in mailboxes])

    def release_many(self, leases: Sequence[Lease]) -> None:
        self.budget.release_many(leases)

    def block(self, *, app_key: str, mailbox: str, seconds: float) -> float:
        return self.budget.block(self._key(app_key, mailbox), seconds=seconds)

    @staticmethod
    def _key(app_key: str, mailbox: str) -> str:
        return f"{app_key}:{mailbox.strip().lower()}"


_connections: dict[tuple[int, str], redis.Redis] = {}
_budgets: dict[tuple[int, str, str, BudgetLimits], RateBudget] = {}
_shared_lock = threading.Lock()


def redis_connection() -> redis.Redis:
    """The process's Redis connection for budgets (``settings.REDIS_URL``), with explicit timeouts."""
    url = settings.REDIS_URL
    key = (os.getpid(), url)
    with _shared_lock:
        connection = _connections.get(key)
        if connection is None:
            connection = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5, health_check_interval=30)
            _connections[key] = connection
    return connection


def dataverse_limits(config: M365Config) -> BudgetLimits:
    return BudgetLimits(
        max_concurrent=config.dataverse_max_concurrent,
        max_requests=config.dataverse_max_requests_per_window,
        window_seconds=float(config.dataverse_window_seconds),
        max_execution_seconds=float(config.dataverse_max_execution_seconds),
        lease_seconds=_lease_seconds(config),
    )


def graph_mailbox_limits(config: M365Config) -> BudgetLimits:
    return BudgetLimits(
        max_concurrent=config.graph_max_concurrent_per_mailbox,
        max_requests=GRAPH_MAILBOX_REQUESTS_PER_WINDOW,
        window_seconds=float(GRAPH_MAILBOX_WINDOW_SECONDS),
        lease_seconds=_lease_seconds(config),
    )


def dataverse_budget(config: M365Config) -> RateBudget:
    """The process's shared Dataverse budget (keys: application user client ids)."""
    return _shared_budget(service="dataverse", limits=dataverse_limits(config))


def graph_mailbox_limiter(config: M365Config) -> MailboxLimiter:
    return MailboxLimiter(budget=_shared_budget(service="graph", limits=graph_mailbox_limits(config)))


def _shared_budget(*, service: str, limits: BudgetLimits) -> RateBudget:
    connection = redis_connection()
    key = (os.getpid(), settings.REDIS_URL, service, limits)
    with _shared_lock:
        budget = _budgets.get(key)
        if budget is None:
            budget = RateBudget(redis_client=connection, limits=limits, service=service)
            _budgets[key] = budget
    return budget


def _lease_seconds(config: M365Config) -> float:
    # Long enough for the slowest attempt (connect + read timeouts) with margin; a lease
    # outliving its worker frees itself after this.
    return max(60.0, 3 * config.timeout_seconds)
