"""The write path: ``counter_incr`` validates, publishes the delta (a unique id, the key, the
amount) and waits for the broker's confirmation; only then records it in the Redis hash for fast
reads (see counters/cache.py for why this order is right). Inside a transaction the delta is an
outbox row of that transaction instead (tasks/outbox.py). The truth is never read out of Redis:
the message carries the delta.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass

import redis.exceptions
from django.db import connection

from tasks.envelopes import NOTHING
from tasks.outbox import outbox_enqueue

from .. import cache, metrics
from ..faults import fault_point
from ..keys import amount_validate, key_validate
from ..models import AppliedDelta
from .common import APPLY_TASK, COUNTERS_QUEUE, EPHEMERAL, close_connection
from .publish import CounterUnavailable, delta_publish
from .read import counter_fill, durable_values
from .sql import LEDGER_INSERT

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Increment:
    """What an increment returned: the value after it (from Redis; None inside a transaction)
    and its delta id (None for an ephemeral counter)."""

    value: int | None
    delta_id: str | None = None


def counter_incr(*, key: str, amount: int = 1) -> Increment:
    """Count ``amount`` on ``key``; return the value after it (from Redis) and the delta's id.

    Raises InvalidCounter for a bad key or amount (nothing happens) and CounterUnavailable when
    the broker does not confirm the delta (see there). Inside a database transaction the delta
    is an outbox row of that transaction (tasks/outbox.py): counted exactly once if it commits,
    never if it rolls back (G2b), published by the relay even if the broker is down at the
    commit; the value is then None (the delta is visible once applied) and the delta id is the
    row's message id, so a second publish of the row is absorbed by the ledger.
    """
    _, data_class = key_validate(key=key)
    amount = amount_validate(amount=amount)
    if data_class == EPHEMERAL:
        return Increment(value=cache.ephemeral_incr(key=key, amount=amount))
    if connection.in_atomic_block:
        delta_id = str(uuid.uuid4())
        outbox_enqueue(
            task_name=APPLY_TASK,
            queue=COUNTERS_QUEUE,
            args=[delta_id, key, amount],
            message_id=delta_id,
        )
        return Increment(value=None, delta_id=delta_id)
    return _durable_incr(key=key, amount=amount)


def _durable_incr(*, key: str, amount: int) -> Increment:
    delta_id = str(uuid.uuid4())
    # A hash filled after this (less a margin for clocks of other hosts) may hold the delta.
    since = time.time() - cache.FILL_GRACE_S
    bumped = NOTHING
    try:
        bumped = delta_publish(delta_id=delta_id, key=key, amount=amount, bump_since=since)
    except CounterUnavailable as exc:
        exc.delta_id = delta_id
        if _delta_cancel(delta_id=delta_id, key=key):
            raise
        exc.counted = True  # applied already: the confirm was lost, the delta was not
        logger.warning("delta %s was applied although its confirm failed", delta_id)
    metrics.increments.labels(namespace=key.split(":", 1)[0]).inc()
    # The delta is durable from here on; Redis only makes it visible sooner.
    try:
        if bumped is NOTHING:  # not bumped with its envelope (publish.py: _bump_confirmed)
            fault_point("kill_after_publish", keys={key})
            fault_point("before_bump", keys={key}, delta_id=delta_id)
            bumped = cache.bump(
                key=key, delta_id=delta_id, amount=amount, now=time.time(), since=since
            )
        if isinstance(bumped, redis.exceptions.RedisError):
            raise bumped  # the envelope's cache update failed: the cache-down path below
        value = bumped
        if value is None or value is cache.ASK_LEDGER:
            value = _bump_after_fill(key=key, delta_id=delta_id, amount=amount, fill=value is None)
        logger.debug("delta %s %s %+d published, value %s", delta_id, key, amount, value)
        return Increment(value=int(value), delta_id=delta_id)
    except redis.exceptions.RedisError as exc:
        logger.warning("delta %s published but the cache is unavailable: %r", delta_id, exc)
        try:
            return Increment(value=durable_values(keys=[key])[key][0] + amount, delta_id=delta_id)
        except Exception as db_exc:
            close_connection()
            logger.warning("delta %s published; no value to show: %r", delta_id, db_exc)
            return Increment(value=None, delta_id=delta_id)
    except Exception as exc:
        # A cache miss needs PostgreSQL to refill, and it is down (or anything else failed after
        # the publish). The delta is counted all the same (it is in the broker); only the value
        # after it is unknown, and the caller must never see an error for it.
        close_connection()
        logger.warning("delta %s published; no value to show: %r", delta_id, exc)
        return Increment(value=None, delta_id=delta_id)


def _bump_after_fill(*, key: str, delta_id: str, amount: int, fill: bool) -> int:
    """The hash is missing (``fill``: fill it now) or was filled after the delta's publish: the
    filled value holds the delta if the ledger has it, so record it as pending only if not. A hash
    filled again after the ledger was asked (evicted, applied, refilled meanwhile) asks again."""
    filled = counter_fill(keys=[key])[key] if fill else None
    applied = False
    for _ in range(3):
        asked_at = time.time()
        applied = AppliedDelta.objects.filter(delta_id=delta_id).exists()
        value = cache.bump(
            key=key,
            delta_id=delta_id,
            amount=amount,
            now=time.time(),
            since=asked_at,
            mode="applied" if applied else "pending",
        )
        if value is not cache.ASK_LEDGER:
            break
    if value is None or value is cache.ASK_LEDGER:  # evicted or refilled again: the database
        durable = filled.durable if filled else durable_values(keys=[key])[key][0]
        value = durable + (0 if applied else amount)
    return value


def _delta_cancel(*, delta_id: str, key: str) -> bool:
    """Make an unconfirmed delta a no-op wherever a copy of it may still be: a ledger entry of
    amount 0 under its id. (A confirm can time out after the broker took the message, e.g. a
    publisher blocked by a RabbitMQ memory alarm is let through when the alarm clears.)

    True: cancelled, it will never be counted. False: it was applied already. Raises
    CounterUnavailable with ``counted=None`` when PostgreSQL is unreachable too.
    """
    try:
        with connection.cursor() as cursor:
            cursor.execute(LEDGER_INSERT, [[delta_id], [key], [0]])
            return bool(cursor.fetchall())
    except Exception as exc:  # unreachable, read-only...: whether it is counted is unknown
        close_connection()
        logger.error("delta %s: could not cancel it either: %r", delta_id, exc)
        raise CounterUnavailable(
            "the broker did not confirm the delta and it could not be cancelled",
            delta_id=delta_id,
            counted=None,
        ) from exc
