"""Abuse limits on the public increment beacon (``POST /api/counters/<key>/incr``), counted in
the cache Redis so that a refused request costs no PostgreSQL work and no queue message.

One token bucket per (namespace, client): ``N/S`` allows bursts of N and N per S seconds after
that. Settings (project/settings/counters.py): ``COUNTER_RATE_LIMIT`` for every namespace,
``COUNTER_RATE_LIMITS`` per namespace, ``COUNTER_CLIENT_IP_HEADER`` behind a proxy. Trusted
server-side calls (the Python API, ``counter_incr``) are never limited. A cache that does not
answer lets the request through: the limit protects the counters, it must not take them down.
"""

from __future__ import annotations

import logging
import time

import redis.exceptions
from django.conf import settings

from . import cache

logger = logging.getLogger(__name__)

# KEYS[1] the bucket; ARGV: tokens per second, burst, now. Returns 0 (allowed) or the seconds
# until the next token, as a string (Lua numbers become integers on the way out).
BUCKET_SCRIPT = """
local rate, burst, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 't', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 't', tostring(tokens), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
return tostring(wait)
"""


def limit_of(*, namespace: str) -> tuple[int, float] | None:
    """(burst, seconds) of the namespace's limit, or None when it has none."""
    return settings.COUNTER_RATE_LIMITS.get(namespace, settings.COUNTER_RATE_LIMIT)


def client_of(request) -> str:
    header = settings.COUNTER_CLIENT_IP_HEADER
    if header:  # set by the proxy in front; its last hop is the one the proxy saw
        value = request.headers.get(header, "").split(",")[-1].strip()
        if value:
            return value
    return request.META.get("REMOTE_ADDR", "") or "unknown"


def beacon_wait(*, namespace: str, client: str) -> float:
    """0 if this increment may go ahead, else the seconds the client should wait."""
    limit = limit_of(namespace=namespace)
    if limit is None:
        return 0.0
    burst, seconds = limit
    try:
        wait = cache.client().register_script(BUCKET_SCRIPT)(
            keys=[f"rl:{namespace}:{client}"], args=[burst / seconds, burst, time.time()]
        )
    except redis.exceptions.RedisError as exc:
        logger.warning("rate limit not checked (cache unavailable): %r", exc)
        return 0.0
    return float(wait)
