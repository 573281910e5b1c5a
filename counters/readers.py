"""Ephemeral data: "active readers now" per article, a HyperLogLog per minute bucket.

Lossy by design: Redis only, approximate (HyperLogLog, ~0.8% error), and gone if the cache is
flushed or evicts it. Nothing else depends on it.
"""

import time

from . import cache

WINDOW_MINUTES = 5


def _bucket_key(slug: str, minute: int) -> str:
    return f"hll:readers:{slug}:{minute}"


def readers_touch(*, article_slug: str, visitor_id: str) -> None:
    minute = int(time.time() // 60)
    key = _bucket_key(article_slug, minute)
    pipe = cache.client().pipeline(transaction=False)
    pipe.pfadd(key, visitor_id)
    pipe.expire(key, (WINDOW_MINUTES + 1) * 60)
    pipe.execute()


def readers_count(*, article_slug: str) -> int:
    """Distinct visitors over the last five minute buckets (PFCOUNT of their union)."""
    minute = int(time.time() // 60)
    keys = [_bucket_key(article_slug, minute - i) for i in range(WINDOW_MINUTES)]
    return int(cache.client().pfcount(*keys))
