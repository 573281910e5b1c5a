"""What the operations page shows: queues, in-flight work, dead letters, workers, the cache."""

from __future__ import annotations

import base64
import json
import time
import urllib.parse
import urllib.request
from datetime import timedelta

from django.conf import settings
from django.core.cache import cache as django_cache
from django.db.models import Count
from django.utils import timezone
from django_redis import get_redis_connection
from kombu import Connection

from project.celery import app

from .models import DeadLetter
from .outbox import outbox_stats
from .topology import DEAD_LETTER_QUEUE_NAME, WORK_QUEUES

QUEUE_NAMES = (*WORK_QUEUES, DEAD_LETTER_QUEUE_NAME)
LAG_SAMPLES_KEY = "ops:apply-lag"
WORKERS_CACHE_S = 5


def rabbitmq_api(path: str, *, method: str = "GET", body: dict | None = None):
    """Call RabbitMQ's management HTTP API; the decoded JSON answer (None if it has no body)."""
    base = urllib.parse.urlsplit(settings.RABBITMQ_MANAGEMENT_URL)
    if base.scheme not in ("http", "https"):
        raise ValueError("RABBITMQ_MANAGEMENT_URL must be an http(s) URL")
    request = urllib.request.Request(  # noqa: S310 (scheme checked above)
        f"{base.scheme}://{base.hostname}:{base.port or 15672}/api/{path}",
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"content-type": "application/json"},
    )
    if base.username:
        token = base64.b64encode(f"{base.username}:{base.password or ''}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        content = response.read()
    return json.loads(content) if content else None


def queue_stats() -> dict[str, dict[str, int]]:
    """Ready and unacknowledged messages per queue, on either broker."""
    url = app.conf.broker_url
    stats = {name: {"ready": 0, "unacked": 0} for name in QUEUE_NAMES}
    if url.startswith("redis"):
        with Connection(url) as conn:
            channel = conn.default_channel
            for name in QUEUE_NAMES:
                stats[name]["ready"] = channel._size(name)
            for raw in channel.client.hvals(channel.unacked_key):
                routing_key = json.loads(raw)[2]
                if routing_key in stats:
                    stats[routing_key]["unacked"] += 1
        return stats
    vhost = urllib.parse.unquote(Connection(url).virtual_host or "/")
    columns = "name,messages_ready,messages_unacknowledged,messages"
    for queue in rabbitmq_api(f"queues/{urllib.parse.quote(vhost, safe='')}?columns={columns}"):
        name = queue["name"]
        if name in stats:
            stats[name] = {
                "ready": int(queue.get("messages_ready") or 0),
                "unacked": int(queue.get("messages_unacknowledged") or 0),
            }
        elif name.startswith("celery_delayed_"):  # retries waiting out their countdown
            stats.setdefault("delayed", {"ready": 0, "unacked": 0})
            stats["delayed"]["ready"] += int(queue.get("messages") or 0)
    return stats


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


def lag_record(*, lags: list[float]) -> None:
    """Remember the oldest publish-to-commit lag of a batch (a short rolling window)."""
    if not lags:
        return
    client = get_redis_connection("default")
    pipe = client.pipeline(transaction=False)
    pipe.lpush(LAG_SAMPLES_KEY, json.dumps([time.time(), max(lags)]))
    pipe.ltrim(LAG_SAMPLES_KEY, 0, 999)
    pipe.execute()


def lag_series(*, seconds: int = 300) -> list[list[float]]:
    now = time.time()
    samples = [
        json.loads(s) for s in get_redis_connection("default").lrange(LAG_SAMPLES_KEY, 0, -1)
    ]
    return sorted([t, lag] for t, lag in samples if now - t <= seconds)


def applied_series(*, seconds: int = 300, step: int = 10) -> list[list[float]]:
    """Deltas applied per second, in ``step``-second buckets over the last ``seconds``."""
    from counters.models import AppliedDelta

    now = timezone.now()
    times = AppliedDelta.objects.filter(
        applied_at__gte=now - timedelta(seconds=seconds)
    ).values_list("applied_at", flat=True)
    buckets: dict[int, int] = {}
    for applied_at in times:
        bucket = int(applied_at.timestamp()) // step * step
        buckets[bucket] = buckets.get(bucket, 0) + 1
    start = int(now.timestamp()) // step * step - seconds
    return [[b, buckets.get(b, 0) / step] for b in range(start, start + seconds + step, step)]


def hottest_pending(*, limit: int = 10) -> list[dict]:
    from counters import cache as counter_cache

    client = get_redis_connection("default")
    keys = list(client.scan_iter(match=counter_cache.PREFIX + "*", count=1000))[:5000]
    if not keys:
        return []
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.hget(key, "pending")
    pending = [
        (key.decode()[len(counter_cache.PREFIX) :], int(value or 0))
        for key, value in zip(keys, pipe.execute(), strict=True)
    ]
    top = sorted((p for p in pending if p[1]), key=lambda p: -p[1])[:limit]
    return [{"key": key, "pending": value} for key, value in top]


def ops_status() -> dict:
    """Everything the operations page shows, as one JSON document (also /ops/status.json)."""
    errors = {}

    def attempt(name, probe, default):
        try:
            return probe()
        except Exception as exc:  # one broken source must not hide the others
            errors[name] = f"{type(exc).__name__}: {exc}"
            return default

    queues = attempt("queues", queue_stats, {})
    counters_queue = queues.get("counters", {"ready": 0, "unacked": 0})
    delayed = queues.get("delayed", {"ready": 0})["ready"]
    applied = attempt("applied", applied_series, [])
    lag = attempt("lag", lag_series, [])
    last_minute = [rate for t, rate in applied if t >= time.time() - 60]
    return {
        "time": time.time(),
        "broker": "redis" if app.conf.broker_url.startswith("redis") else "amqp",
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
