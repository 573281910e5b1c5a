"""What the operations page shows: queues, in-flight work, the outbox, dead letters, workers, the
cache; each source asked through the app that owns it."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from datetime import timedelta

from django.conf import settings
from django.core.cache import cache as django_cache
from django.db import connection
from django.db.models import Count
from django.utils import timezone
from django_redis import get_redis_connection

from counters.selectors import (
    applied_series,
    hottest_pending,
    lag_percentiles_series,
    lag_series,
)
from tasks.app import app
from tasks.broker import broker_kind, queue_stats
from tasks.models import DeadLetter
from tasks.outbox import outbox_stats

logger = logging.getLogger(__name__)

WORKERS_CACHE_S = 5
PENDING_SAMPLES_KEY = "ops:pending"
SAMPLED_KEY, SAMPLE_EVERY_S = "ops:pending:sampled", 10  # beat sends one every 15 s


def workers() -> list[str]:
    """Workers that answer a ping (cached a few seconds: a ping waits for its timeout)."""
    try:
        answered = django_cache.get("ops:workers")
    except Exception:  # the cache being down is its own component's red, not the workers'
        answered = None
    if answered is None:
        # The replies are collected on a connection of its own, closed after (the request still
        # goes out through the app's producer pool): on the Redis broker a pooled connection
        # came back with a BRPOP unanswered when the collect timed out, and the next ping on it
        # read that stale reply (TypeError in kombu's _brpop_read).
        with app.connection_for_write() as connection:
            replies = app.control.ping(timeout=1.0, connection=connection) or []
        answered = sorted(name for reply in replies for name in reply)
        with contextlib.suppress(Exception):  # not cached this time: the next ping costs 1 s
            django_cache.set("ops:workers", answered, WORKERS_CACHE_S)
    return answered


def dead_letters_by_reason() -> list[dict]:
    rows = (
        DeadLetter.objects.filter(status=DeadLetter.Status.DEAD)
        .values("reason")
        .annotate(count=Count("pk"))
        .order_by("-count")
    )
    return [
        {
            "reason": row["reason"],
            "count": row["count"],
            "url": f"/admin/tasks/deadletter/?status__exact=dead&reason__exact={row['reason']}",
        }
        for row in rows
    ]


def cache_stats() -> dict:
    info = get_redis_connection("default").info()
    hits, misses = int(info.get("keyspace_hits", 0)), int(info.get("keyspace_misses", 0))
    return {
        "hits": hits,
        "misses": misses,
        "hit_ratio": round(hits / (hits + misses), 4) if hits + misses else None,
        "evicted_keys": int(info.get("evicted_keys", 0)),
        "used_memory": int(info.get("used_memory", 0)),
        "maxmemory": int(info.get("maxmemory", 0)),
    }


def database_state() -> dict:
    """PostgreSQL answers, and whether it takes writes (a read-only server, or a standby)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('transaction_read_only'), pg_is_in_recovery()")
        read_only, in_recovery = cursor.fetchone()
    return {"read_only": read_only == "on" or bool(in_recovery)}


def pending_of(queues: dict) -> int:
    """Deltas the broker holds: the counters queue's ready and unacknowledged, and retries
    waiting out their countdown."""
    counters_queue = queues.get("counters", {"ready": 0, "unacked": 0})
    return (
        counters_queue["ready"]
        + counters_queue["unacked"]
        + queues.get("delayed", {"ready": 0})["ready"]
    )


def pending_sample() -> int | None:
    """Beat's sample of the backlog (project.sample_pending), so the chart has a history also
    while nobody has the page open. Samples that waited in the queue (a worker was down) are
    taken once per ``SAMPLE_EVERY_S``, the rest skipped: None."""
    if not get_redis_connection("default").set(SAMPLED_KEY, 1, nx=True, ex=SAMPLE_EVERY_S):
        return None
    pending = pending_of(queue_stats(app=app))
    pending_record(pending=pending)
    return pending


def pending_record(*, pending: int) -> None:
    """Remember the backlog (beat every 15 s, and each time the page is read): the chart's
    history (Prometheus keeps a longer one: ``deltas_pending``)."""
    client = get_redis_connection("default")
    pipe = client.pipeline(transaction=False)
    pipe.lpush(PENDING_SAMPLES_KEY, json.dumps([time.time(), pending]))
    pipe.ltrim(PENDING_SAMPLES_KEY, 0, 499)
    pipe.execute()


def pending_series(*, seconds: int = 300) -> list[list[float]]:
    now = time.time()
    raw = get_redis_connection("default").lrange(PENDING_SAMPLES_KEY, 0, -1)
    return sorted(s for s in map(json.loads, raw) if now - s[0] <= seconds)


def dead_letters_series(*, seconds: int = 300, step: int = 10) -> list[list[float]]:
    """Dead letters recorded per ``step``-second bucket (by when they were dead-lettered)."""
    since = timezone.now() - timedelta(seconds=seconds)
    times = DeadLetter.objects.filter(last_failed_at__gte=since).values_list(
        "last_failed_at", flat=True
    )
    buckets: dict[int, int] = {}
    for at in times:  # a handful at most: a dead letter is an incident
        bucket = int(at.timestamp()) // step * step
        buckets[bucket] = buckets.get(bucket, 0) + 1
    start = int(time.time()) // step * step - seconds
    return [[b, buckets.get(b, 0)] for b in range(start, start + seconds + step, step)]


def ops_status() -> dict:
    """Everything the operations page shows, as one JSON document (also /ops/status.json)."""
    errors = {}

    def attempt(name, probe, default):
        try:
            return probe()
        except Exception as exc:  # one broken source must not hide the others
            errors[name] = f"{type(exc).__name__}: {exc}"
            logger.warning("operations page: %s unavailable", name, exc_info=True)
            return default

    database = attempt("database", database_state, {})
    queues = attempt("queues", lambda: queue_stats(app=app), {})
    applied = attempt("applied", applied_series, [])
    lag = attempt("lag", lag_series, [])
    last_minute = [rate for t, rate in applied if t >= time.time() - 60]
    pending = pending_of(queues)
    if "queues" not in errors:
        attempt("pending_series", lambda: pending_record(pending=pending), None)
    return {
        "time": time.time(),
        "broker": broker_kind(app),
        "queues": queues,
        "database": database,
        "pending_deltas": pending,
        "pending_series": attempt("pending_series", pending_series, []),
        "hottest_pending": attempt("hottest_pending", hottest_pending, []),
        "applied_per_second_last_minute": round(sum(last_minute) / max(len(last_minute), 1), 2),
        "applied_series": applied,
        "lag_seconds": lag[-1][1] if lag else None,
        "lag_series": lag,
        "lag_percentiles_series": attempt("lag", lag_percentiles_series, []),
        "dead_letters": attempt("dead_letters", dead_letters_by_reason, []),
        "dead_letters_series": attempt("dead_letters", dead_letters_series, []),
        "outbox": attempt("outbox", outbox_stats, {}),
        "workers": attempt("workers", workers, []),
        "cache": attempt("cache", cache_stats, {}),
        "flower_url": settings.FLOWER_URL,
        "errors": errors,
    }
