"""Read-only questions about the counters pipeline: what is still in flight, how fast it moves,
which keys wait most (the operations page and ``counters drain``)."""

import json
import time
from datetime import timedelta

from django.db import connection
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


def _lag_samples(*, seconds: int) -> list[list[float]]:
    """Per batch ``[time, max, p50, p99, n]`` (older samples hold ``[time, max]`` only)."""
    now = time.time()
    samples = [json.loads(s) for s in cache.client().lrange(cache.LAG_SAMPLES_KEY, 0, -1)]
    padded = [s if len(s) == 5 else [s[0], s[1], s[1], s[1], 1] for s in samples]
    return sorted(s for s in padded if now - s[0] <= seconds)


def lag_series(*, seconds: int = 300) -> list[list[float]]:
    """The oldest delta's lag in each batch: ``[time, seconds]``."""
    return [[t, oldest] for t, oldest, *_ in _lag_samples(seconds=seconds)]


def _weighted_quantile(values: list[tuple[float, int]], q: float) -> float:
    ordered = sorted(values)
    total, seen = sum(n for _, n in ordered), 0
    for value, n in ordered:
        seen += n
        if seen >= q * total:
            return value
    return ordered[-1][0]


def lag_percentiles_series(*, seconds: int = 300, step: int = 10) -> list[list[float]]:
    """Apply lag p50 and p99 per ``step``-second bucket, ``[bucket, p50, p99]``, from the
    batches' own percentiles weighted by their sizes (an approximation: each batch keeps two
    percentiles, not every delta's lag)."""
    buckets: dict[int, list[list[float]]] = {}
    for sample in _lag_samples(seconds=seconds):
        buckets.setdefault(int(sample[0]) // step * step, []).append(sample)
    now = time.time()
    return [
        [
            min(bucket + step / 2, now),
            _weighted_quantile([(s[2], s[4]) for s in batch], 0.5),
            _weighted_quantile([(s[3], s[4]) for s in batch], 0.99),
        ]
        for bucket, batch in sorted(buckets.items())
    ]


APPLIED_PER_BUCKET = """
    SELECT floor(extract(epoch FROM applied_at) / %(step)s)::bigint * %(step)s, count(*)
    FROM counters_applieddelta WHERE applied_at >= %(since)s GROUP BY 1
"""


def applied_series(*, seconds: int = 300, step: int = 10) -> list[list[float]]:
    """Deltas applied per second, in ``step``-second buckets over the last ``seconds`` (counted
    in PostgreSQL: at thousands of deltas a second, loading the rows would cost more)."""
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(
            APPLIED_PER_BUCKET, {"step": step, "since": now - timedelta(seconds=seconds)}
        )
        buckets = dict(cursor.fetchall())
    # Whole buckets only: the one still filling would always read low.
    end = int(now.timestamp()) // step * step
    return [[b, buckets.get(b, 0) / step] for b in range(end - seconds, end, step)]


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
