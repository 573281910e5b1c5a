"""Read-only questions about the counters pipeline: what is still in flight, how fast it moves,
which keys wait most (the operations page and ``counters drain``)."""

import json
import time
from datetime import timedelta

from django.utils import timezone

from tasks.app import app
from tasks.broker import queue_pending
from tasks.topology import COUNTERS_QUEUE

from . import cache
from .models import AppliedDelta, Article


def pending_messages_count() -> int:
    """Delta messages the broker still holds: ready, delivered but unacknowledged, or delayed."""
    return queue_pending(app=app, queue=COUNTERS_QUEUE)


def articles_list() -> list[Article]:
    return list(Article.objects.order_by("id"))


def article_get(*, slug: str) -> Article | None:
    return Article.objects.filter(slug=slug).first()


def applied_count() -> int:
    return AppliedDelta.objects.count()


def lag_series(*, seconds: int = 300) -> list[list[float]]:
    now = time.time()
    samples = [json.loads(s) for s in cache.client().lrange(cache.LAG_SAMPLES_KEY, 0, -1)]
    return sorted([t, lag] for t, lag in samples if now - t <= seconds)


def applied_series(*, seconds: int = 300, step: int = 10) -> list[list[float]]:
    """Deltas applied per second, in ``step``-second buckets over the last ``seconds``."""
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
    client = cache.client()
    keys = list(client.scan_iter(match=cache.PREFIX + "*", count=1000))[:5000]
    if not keys:
        return []
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.hget(key, "pending")
    pending = [
        (key.decode()[len(cache.PREFIX) :], int(value or 0))
        for key, value in zip(keys, pipe.execute(), strict=True)
    ]
    top = sorted((p for p in pending if p[1]), key=lambda p: -p[1])[:limit]
    return [{"key": key, "pending": value} for key, value in top]
