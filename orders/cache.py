"""Read cache for critical data: versioned write-through, and lease-guarded read-through.

Orders and accounts are cached in Redis as ``{"version": v, "data": {...}}``. Every write to
PostgreSQL bumps the row's ``version`` under its row lock; after the commit the new version is
written through with ``SET_IF_NEWER``, a Lua compare-and-set that never replaces a newer version
with an older one. That closes the classic stale-set race: a reader misses, reads the old row, a
writer commits and writes the new version, then the reader's fill arrives with the old version and
is refused (the reader is given what the cache now holds).

A miss sends one reader to PostgreSQL, not a herd: the first takes a short lease
(``SET NX PX``, the memcache-lease idea); the others wait for its fill for up to
``LEASE_WAIT_S`` and only then read PostgreSQL themselves (without filling). If Redis is down,
everybody reads PostgreSQL. Entries also expire after ``TTL_S``: if a write-through is lost (Redis
timed out after the commit), the stale entry cannot outlive that.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable

import redis.exceptions
from django_redis import get_redis_connection

logger = logging.getLogger(__name__)

TTL_S = 300
LEASE_MS = 2000
LEASE_WAIT_S = 0.5

SET_IF_NEWER = """
local current = redis.call('GET', KEYS[1])
if current then
  local stored = cjson.decode(current)
  if tonumber(stored['version']) >= tonumber(ARGV[1]) then return current end
end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
return ARGV[2]
"""

# Test hook points (tests/orders): called between the reader's PostgreSQL read and its fill.
hooks: dict[str, Callable[[], None]] = {}


def _client():
    return get_redis_connection("default")


def cache_key(kind: str, obj_id: int) -> str:
    return f"{kind}:{obj_id}"


def write_through(*, kind: str, obj_id: int, version: int, data: dict) -> dict:
    """Store ``data`` at ``version`` unless a newer version is cached; return what is cached."""
    payload = json.dumps({"version": version, "data": data})
    script = _client().register_script(SET_IF_NEWER)
    stored = script(keys=[cache_key(kind, obj_id)], args=[version, payload, TTL_S])
    return json.loads(stored)["data"]


def write_through_quietly(*, kind: str, obj_id: int, version: int, data: dict) -> None:
    """After a commit: the database already holds the truth, so a cache failure is only logged
    (the entry's TTL bounds how long an older version can be served)."""
    try:
        write_through(kind=kind, obj_id=obj_id, version=version, data=data)
    except redis.exceptions.RedisError as exc:
        logger.warning("cache write-through of %s:%s v%s failed: %r", kind, obj_id, version, exc)


def read_through(*, kind: str, obj_id: int, load: Callable[[], tuple[int, dict] | None]):
    """The cached data, else ``load()`` (version, data) from PostgreSQL, filled under a lease."""
    key = cache_key(kind, obj_id)
    try:
        client = _client()
        cached = client.get(key)
        if cached is not None:
            return json.loads(cached)["data"]
        token = uuid.uuid4().hex
        if not client.set(f"lease:{key}", token, nx=True, px=LEASE_MS):
            deadline = time.monotonic() + LEASE_WAIT_S
            while time.monotonic() < deadline:
                time.sleep(0.02)
                cached = client.get(key)
                if cached is not None:
                    return json.loads(cached)["data"]
            loaded = load()
            return None if loaded is None else loaded[1]
    except redis.exceptions.RedisError as exc:
        logger.warning("cache unavailable, reading %s from PostgreSQL: %r", key, exc)
        loaded = load()
        return None if loaded is None else loaded[1]
    loaded = load()
    if "after_read" in hooks:
        hooks["after_read"]()
    try:
        if loaded is None:
            return None
        version, data = loaded
        return write_through(kind=kind, obj_id=obj_id, version=version, data=data)
    except redis.exceptions.RedisError:
        return None if loaded is None else loaded[1]
    finally:
        try:
            if client.get(f"lease:{key}") == token.encode():
                client.delete(f"lease:{key}")
        except redis.exceptions.RedisError:
            pass
