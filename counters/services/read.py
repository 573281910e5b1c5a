"""The read path: ``counter_get`` / ``counter_get_many``. Redis hit: durable + pending. Miss
(evicted, flushed, restarted): the PostgreSQL value, refilled into Redis by a version-guarded
script (read repair).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import redis.exceptions

from .. import cache, metrics
from ..keys import key_validate
from ..models import Counter
from .common import EPHEMERAL

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CounterReading:
    value: int
    durable: int
    pending: int


def counter_get(*, key: str) -> CounterReading:
    return counter_get_many(keys=[key])[key]


def counter_get_many(*, keys: list[str]) -> dict[str, CounterReading]:
    """Read many counters in one Redis round trip; misses are repaired from PostgreSQL."""
    durable_keys, ephemeral_keys = [], []
    for key in keys:
        _, data_class = key_validate(key=key)
        (ephemeral_keys if data_class == EPHEMERAL else durable_keys).append(key)
    readings: dict[str, CounterReading] = {}
    if ephemeral_keys:
        for key, value in cache.ephemeral_get_many(keys=ephemeral_keys).items():
            readings[key] = CounterReading(value=value, durable=0, pending=0)
    if durable_keys:
        try:
            cached = cache.read_many(keys=durable_keys)
        except redis.exceptions.RedisError as exc:
            logger.warning("cache unavailable, reading counters from PostgreSQL: %r", exc)
            cached = dict.fromkeys(durable_keys)
        missing = [key for key, hit in cached.items() if hit is None]
        metrics.cache_reads.labels(result="hit").inc(len(durable_keys) - len(missing))
        metrics.cache_reads.labels(result="miss").inc(len(missing))
        if missing:
            cached.update(counter_fill(keys=missing))
        # Just after a fill the hash may miss a batch committing right then (cache.py): check.
        recent = time.time() - cache.FILL_GRACE_S
        fresh = [key for key, hit in cached.items() if hit.filled_at > recent]
        floors = durable_values(keys=fresh) if fresh else {}
        for key in durable_keys:
            hit = cached[key]
            floor = floors.get(key, (hit.durable, 0))[0]
            value = max(hit.value, floor)
            durable = max(hit.durable, floor)
            readings[key] = CounterReading(value=value, durable=durable, pending=value - durable)
    return {key: readings[key] for key in keys}


def durable_values(*, keys: list[str]) -> dict[str, tuple[int, int]]:
    rows = dict.fromkeys(keys, (0, 0))
    for key, value, version in Counter.objects.filter(key__in=keys).values_list(
        "key", "value", "version"
    ):
        rows[key] = (value, version)
    return rows


def counter_fill(*, keys: list[str]) -> dict[str, cache.CachedCounter]:
    """Read repair: the PostgreSQL values, written to Redis unless a newer version is there."""
    result = {}
    todo = list(keys)
    for _ in range(5):
        if not todo:
            break
        retry = []
        for key, (durable, version) in durable_values(keys=todo).items():
            now = time.time()
            try:
                value = cache.fill(key=key, durable=durable, version=version, now=now)
            except redis.exceptions.RedisError:
                value = durable
            if value is None:  # a batch committed since we read: read again
                retry.append(key)
                result[key] = cache.CachedCounter(durable=durable, pending=0, filled_at=now)
            else:
                result[key] = cache.CachedCounter(
                    durable=durable, pending=value - durable, filled_at=now
                )
        todo = retry
    return result
