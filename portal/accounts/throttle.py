"""Counting failed sign-ins per username and per client address, in Redis.

Every web process sees the same counts. An attempt is reserved before the password is checked, in
one Lua script, so parallel guesses cannot slip past the limit between reading and counting; the
reservation stays as a failure unless the sign-in succeeds. Each counted failure restarts its
window, so a lock lifts once the window has passed without one; refused attempts do not count.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
from dataclasses import dataclass

import redis
from django.conf import settings

logger = logging.getLogger(__name__)

KEY_PREFIX = "portal:sign-in-failures"
# A hung Redis must not hold the sign-in page for long.
REDIS_TIMEOUT_SECONDS = 2.0

# KEYS: username counter, address counter. ARGV: username limit, address limit, window seconds.
# Returns 1 when the attempt was reserved, 0 when a limit is reached (nothing changes then).
_RESERVE = """
local by_username = tonumber(redis.call('GET', KEYS[1]) or '0')
local by_address = tonumber(redis.call('GET', KEYS[2]) or '0')
if by_username >= tonumber(ARGV[1]) or by_address >= tonumber(ARGV[2]) then
  return 0
end
redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return 1
"""

# A successful sign-in clears its username's count and gives back the address's reservation, so
# one's own sign-in never wipes the failures counted against an address.
_RELEASE = """
redis.call('DEL', KEYS[1])
if tonumber(redis.call('GET', KEYS[2]) or '0') > 0 then
  redis.call('DECR', KEYS[2])
end
return 1
"""


class ThrottleUnavailableError(Exception):
    """Redis did not answer, so the portal cannot tell whether an attempt is allowed."""


@dataclass(frozen=True)
class Attempt:
    username_key: str
    address_key: str


def _username_key(username: str) -> str:
    # Hashed: keys stay short and Redis holds no usernames. Case-folded, so variants of one
    # name share a count.
    digest = hashlib.sha256(username.strip().casefold().encode()).hexdigest()
    return f"{KEY_PREFIX}:username:{digest}"


def _address_key(address: str) -> str:
    return f"{KEY_PREFIX}:address:{address}"


def attempt_for(*, username: str, address: str) -> Attempt:
    return Attempt(username_key=_username_key(username), address_key=_address_key(address))


_clients: dict[str, redis.Redis] = {}
_clients_lock = threading.Lock()


def _client() -> redis.Redis:
    url = settings.REDIS_URL
    with _clients_lock:
        if url not in _clients:
            _clients[url] = redis.Redis.from_url(
                url, socket_connect_timeout=REDIS_TIMEOUT_SECONDS, socket_timeout=REDIS_TIMEOUT_SECONDS
            )
        return _clients[url]


def lockout_minutes() -> int:
    return math.ceil(settings.SIGN_IN_LOCKOUT_SECONDS / 60)


def attempt_reserve(attempt: Attempt) -> bool:
    """Count ``attempt`` as a failure in advance; False (and nothing counted) when a limit is reached."""
    try:
        reserved = _client().eval(
            _RESERVE,
            2,
            attempt.username_key,
            attempt.address_key,
            settings.SIGN_IN_MAX_FAILURES_PER_USERNAME,
            settings.SIGN_IN_MAX_FAILURES_PER_ADDRESS,
            settings.SIGN_IN_LOCKOUT_SECONDS,
        )
    except redis.RedisError as error:
        raise ThrottleUnavailableError(str(error)) from error
    return bool(reserved)


def attempt_succeeded(attempt: Attempt) -> None:
    try:
        _client().eval(_RELEASE, 2, attempt.username_key, attempt.address_key)
    except redis.RedisError:
        # The person is signed in already; a count left a little high only shortens the window
        # for further failures, so this is logged, not shown.
        logger.exception("could not clear the sign-in failure count")
