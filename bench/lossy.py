"""`make bench` only: the lossy baseline, the Redis write buffer users would otherwise pick.

As Sentry's ``sentry.buffer.redis`` does it: each increment is one pipeline to the cache Redis,
an ``HINCRBY`` of the delta into the counter's buffer hash and a ``ZADD`` of the counter into a
pending set, and the request is answered (``bench.views.lossy_incr``). A flusher
(``python -m bench.lossy``) takes every pending counter's buffered delta out of Redis once a
second and adds them all to PostgreSQL in one upsert, one commit per flush.

Cheap, and it loses counts: the deltas live only in Redis until the next flush, so a restart of
the cache Redis (no persistence), an eviction (``allkeys-lru``) or a flusher that dies between
taking them and its commit drops them, and nothing can tell. Never run it against data that
matters.
"""

from __future__ import annotations

import signal
import time

PENDING_KEY = "bench:lossy:pending"
BUFFER_PREFIX = "bench:lossy:buffer:"
# The flush period issue 15 gives the lossy baseline.
FLUSH_INTERVAL_S = 1.0

# Atomic, so an increment lands either in this flush or, whole, in the next: it takes the
# pending set, and each counter's buffered delta with it (HGET and DEL in the same script).
TAKE = """
local taken = {}
for _, key in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
    local buffer = ARGV[1] .. key
    local amount = redis.call('HGET', buffer, 'value')
    redis.call('DEL', buffer)
    if amount then
        taken[#taken + 1] = key
        taken[#taken + 1] = amount
    end
end
redis.call('DEL', KEYS[1])
return taken
"""


def incr(key: str, amount: int = 1) -> None:
    """One increment: one round trip, no transaction (Sentry's ``incr``). HINCRBY before ZADD, so
    a flush in between either takes the delta or leaves it for the ZADD to announce."""
    from django_redis import get_redis_connection

    pipe = get_redis_connection("default").pipeline(transaction=False)
    pipe.hincrby(BUFFER_PREFIX + key, "value", amount)
    pipe.zadd(PENDING_KEY, {key: time.time()})
    pipe.execute()


def flush() -> int:
    """Take what is buffered and add it to PostgreSQL in one upsert (autocommit: one commit);
    return the number of increments applied."""
    from django.db import connection
    from django_redis import get_redis_connection

    from counters.services import COUNTER_UPSERT

    taken = get_redis_connection("default").eval(TAKE, 1, PENDING_KEY, BUFFER_PREFIX)
    sums = sorted(
        (key.decode(), int(amount)) for key, amount in zip(taken[::2], taken[1::2], strict=True)
    )
    if not sums:
        return 0
    # From here until the commit the deltas exist only in this process: the baseline's other
    # way to lose them.
    with connection.cursor() as cursor:
        cursor.execute(COUNTER_UPSERT, [[k for k, _ in sums], [t for _, t in sums]])
    return sum(t for _, t in sums)


def main() -> None:
    import django

    django.setup()
    stopping = []
    # SIGTERM (the bench's stop): finish, flush what is left, exit.
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    print("lossy flusher ready", flush=True)
    while not stopping:
        flush()
        time.sleep(FLUSH_INTERVAL_S)
    flush()


if __name__ == "__main__":
    main()
