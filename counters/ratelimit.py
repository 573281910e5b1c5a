"""Abuse limits on the public increment beacon (``POST /api/counters/<key>/incr``), counted in
the cache Redis so that a refused request costs no PostgreSQL work and no queue message.

One token bucket per (namespace, client): ``N/S`` allows bursts of N and N per S seconds after
that. Settings (project/settings/counters.py): ``COUNTER_RATE_LIMIT`` for every namespace,
``COUNTER_RATE_LIMITS`` per namespace, ``COUNTER_LIKE_RATE_LIMIT`` for the like view, and
``COUNTER_CLIENT_IP_HEADER`` with ``COUNTER_TRUSTED_PROXIES`` behind a proxy. Trusted
server-side calls (the Python API, ``counter_incr``; a service token) are never limited. A cache
that does not answer lets the request through: the limit protects the counters, it must not take
them down.
"""

from __future__ import annotations

import functools
import ipaddress
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


@functools.lru_cache(maxsize=8)
def _networks(cidrs: tuple[str, ...]) -> tuple:
    return tuple(ipaddress.ip_network(cidr.strip(), strict=False) for cidr in cidrs)


def _trusted(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in _networks(tuple(settings.COUNTER_TRUSTED_PROXIES)))


def client_of(request) -> str:
    """The client's address: the connection's, or behind a trusted proxy the header's. Each
    proxy appends the address it saw, so the header is read from the right, past the trusted
    proxies; what a client wrote to the left of that is not believed. From a peer that is not a
    trusted proxy the header is ignored: anyone can send one, a new one with every request."""
    peer = request.META.get("REMOTE_ADDR", "") or "unknown"
    header = settings.COUNTER_CLIENT_IP_HEADER
    if not header or not _trusted(peer):
        return peer
    hops = [hop.strip() for hop in request.headers.get(header, "").split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _trusted(hop):
            return hop
    return hops[0] if hops else peer


def bucket_wait(*, bucket: str, limit: tuple[int, float] | None, client: str) -> float:
    """0 if ``client`` may go ahead under ``limit`` (burst, seconds) in ``bucket``, else the
    seconds it should wait."""
    if limit is None:
        return 0.0
    burst, seconds = limit
    try:
        wait = cache.client().register_script(BUCKET_SCRIPT)(
            keys=[f"rl:{bucket}:{client}"], args=[burst / seconds, burst, time.time()]
        )
    except redis.exceptions.RedisError as exc:
        logger.warning("rate limit not checked (cache unavailable): %r", exc)
        return 0.0
    return float(wait)


def beacon_wait(*, namespace: str, client: str) -> float:
    """0 if this increment may go ahead, else the seconds the client should wait."""
    return bucket_wait(bucket=namespace, limit=limit_of(namespace=namespace), client=client)


def like_wait(*, client: str) -> float:
    """0 if this client may like or unlike now, else the seconds it should wait."""
    return bucket_wait(bucket="like", limit=settings.COUNTER_LIKE_RATE_LIMIT, client=client)
