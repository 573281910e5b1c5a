"""What the operations page shows: queues, in-flight work, the outbox, dead letters, workers, the
cache; each source asked through the app that owns it."""

from __future__ import annotations

import time

from django.conf import settings
from django.core.cache import cache as django_cache
from django.db.models import Count
from django_redis import get_redis_connection

from counters.selectors import applied_series, hottest_pending, lag_series
from tasks.app import app
from tasks.broker import broker_kind, queue_stats
from tasks.models import DeadLetter
from tasks.outbox import outbox_stats

WORKERS_CACHE_S = 5


def workers() -> list[str]:
    """Workers that answer a ping (cached a few seconds: a ping waits for its timeout)."""
    answered = django_cache.get("ops:workers")
    if answered is None:
        replies = app.control.ping(timeout=1.0) or []
        answered = sorted(name for reply in replies for name in reply)
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
    info = get_redis_connection("default").info("stats")
    hits, misses = int(info.get("keyspace_hits", 0)), int(info.get("keyspace_misses", 0))
    return {
        "hits": hits,
        "misses": misses,
        "hit_ratio": round(hits / (hits + misses), 4) if hits + misses else None,
        "evicted_keys": int(info.get("evicted_keys", 0)),
    }


def ops_status() -> dict:
    """Everything the operations page shows, as one JSON document (also /ops/status.json)."""
    errors = {}

    def attempt(name, probe, default):
        try:
            return probe()
        except Exception as exc:  # one broken source must not hide the others
            errors[name] = f"{type(exc).__name__}: {exc}"
            return default

    queues = attempt("queues", lambda: queue_stats(app=app), {})
    counters_queue = queues.get("counters", {"ready": 0, "unacked": 0})
    delayed = queues.get("delayed", {"ready": 0})["ready"]
    applied = attempt("applied", applied_series, [])
    lag = attempt("lag", lag_series, [])
    last_minute = [rate for t, rate in applied if t >= time.time() - 60]
    return {
        "time": time.time(),
        "broker": broker_kind(app),
        "queues": queues,
        "pending_deltas": counters_queue["ready"] + counters_queue["unacked"] + delayed,
        "hottest_pending": attempt("hottest_pending", hottest_pending, []),
        "applied_per_second_last_minute": round(sum(last_minute) / max(len(last_minute), 1), 2),
        "applied_series": applied,
        "lag_seconds": lag[-1][1] if lag else None,
        "lag_series": lag,
        "dead_letters": attempt("dead_letters", dead_letters_by_reason, []),
        "outbox": attempt("outbox", outbox_stats, {}),
        "workers": attempt("workers", workers, []),
        "cache": attempt("cache", cache_stats, {}),
        "flower_url": settings.FLOWER_URL,
        "errors": errors,
    }
