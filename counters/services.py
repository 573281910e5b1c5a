"""Durable hot counters: the write path, the apply path and the read path (with read repair).

Write (``counter_incr``): validate; publish the delta (a unique id, the key, the amount) to the
broker and wait for its confirmation; only then record it in the Redis hash for fast reads (see
counters/cache.py for why this order is right and what ``counter_reconcile`` repairs). The
truth is never read out of Redis: the message carries the delta.

Apply (``delta_batch_apply``, run by the ``counters.apply_deltas`` batch task): in ONE PostgreSQL
transaction insert the batch's delta ids into the ledger (``ON CONFLICT DO NOTHING``) and add the
sums of the newly inserted ones to the counter rows (one upsert, rows in key order); the messages
are acknowledged after the commit.

Read (``counter_get``, ``counter_get_many``): Redis hit: durable + pending. Miss (evicted,
flushed, restarted): the PostgreSQL value, refilled into Redis by a version-guarded script.
"""

from __future__ import annotations

import logging
import time
import traceback
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta

import redis.exceptions
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from project import metrics
from project.celery import app
from tasks.base import broker_kind, retry_countdown
from tasks.inflight import inflight_forget, inflight_older_than, inflight_record
from tasks.models import DeadLetter
from tasks.outbox import OutboxItem, outbox_enqueue
from tasks.policy import is_transient
from tasks.publisher import publisher_for
from tasks.services import (
    FailedMessage,
    dead_letter_publish_task,
    dead_letter_record,
    redis_delivery_counts,
)

from . import cache
from .faults import fault_point
from .keys import InvalidCounter, amount_validate, key_validate
from .models import AppliedDelta, Counter

logger = logging.getLogger(__name__)

DURABLE = "durable"
EPHEMERAL = "ephemeral"
APPLY_TASK = "counters.apply_deltas"
COUNTERS_QUEUE = "counters"
PUBLISH_RETRY_POLICY = {
    "max_retries": 1,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.2,
}


class CounterUnavailable(RuntimeError):
    """The broker did not confirm the delta (HTTP 503).

    ``counted`` is False when the delta was cancelled (a ledger entry of amount 0 makes any late
    copy of it a no-op: it will never be counted), None when even that could not be written
    (PostgreSQL unreachable too): then the delta may still be counted, once.
    """

    def __init__(self, message: str, *, delta_id: str = "", counted: bool | None = False):
        super().__init__(message)
        self.delta_id = delta_id
        self.counted = counted


@dataclass(frozen=True)
class Increment:
    """What an increment returned: the value after it (from Redis; None inside a transaction)
    and its delta id (None for an ephemeral counter)."""

    value: int | None
    delta_id: str | None = None


@dataclass(frozen=True)
class CounterReading:
    value: int
    durable: int
    pending: int


# --- write path -------------------------------------------------------------------------------


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


def delta_publish_from_outbox(item: OutboxItem) -> None:
    """The relay's publisher for outbox deltas: the same publish as a request's (in-flight
    record on the Redis broker, group confirms on RabbitMQ)."""
    delta_id, key, amount = item.args
    delta_publish(delta_id=delta_id, key=key, amount=amount)


def _durable_incr(*, key: str, amount: int) -> Increment:
    delta_id = str(uuid.uuid4())
    # A hash filled after this (less a margin for clocks of other hosts) may hold the delta.
    since = time.time() - settings.COUNTER_FILL_GRACE_S
    try:
        delta_publish(delta_id=delta_id, key=key, amount=amount)
    except CounterUnavailable as exc:
        exc.delta_id = delta_id
        if _delta_cancel(delta_id=delta_id, key=key):
            raise
        exc.counted = True  # applied already: the confirm was lost, the delta was not
        logger.warning("delta %s was applied although its confirm failed", delta_id)
    fault_point("kill_after_publish", keys={key})
    metrics.increments.labels(namespace=key.split(":", 1)[0]).inc()
    # The delta is durable from here on; Redis only makes it visible sooner.
    try:
        fault_point("before_bump", keys={key}, delta_id=delta_id)
        value = cache.bump(key=key, delta_id=delta_id, amount=amount, now=time.time(), since=since)
        if value is None or value is cache.ASK_LEDGER:
            value = _bump_after_fill(key=key, delta_id=delta_id, amount=amount, fill=value is None)
        logger.debug("delta %s %s %+d published, value %s", delta_id, key, amount, value)
        return Increment(value=int(value), delta_id=delta_id)
    except redis.exceptions.RedisError as exc:
        logger.warning("delta %s published but the cache is unavailable: %r", delta_id, exc)
        try:
            return Increment(value=_durable_values(keys=[key])[key][0] + amount, delta_id=delta_id)
        except Exception as db_exc:
            _close_connection()
            logger.warning("delta %s published; no value to show: %r", delta_id, db_exc)
            return Increment(value=None, delta_id=delta_id)
    except Exception as exc:
        # A cache miss needs PostgreSQL to refill, and it is down (or anything else failed after
        # the publish). The delta is counted all the same (it is in the broker); only the value
        # after it is unknown, and the caller must never see an error for it.
        _close_connection()
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
        durable = filled.durable if filled else _durable_values(keys=[key])[key][0]
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
        _close_connection()
        logger.error("delta %s: could not cancel it either: %r", delta_id, exc)
        raise CounterUnavailable(
            "the broker did not confirm the delta and it could not be cancelled",
            delta_id=delta_id,
            counted=None,
        ) from exc


def delta_publish(
    *,
    delta_id: str,
    key: str,
    amount: int,
    countdown: float | None = None,
    retries: int = 0,
    published_at: float | None = None,
) -> None:
    """Publish one delta and wait for the broker's confirmation; CounterUnavailable if none."""

    try:
        # The copy comes a second later, so it reaches the ledger in a later transaction.
        fault_point(
            "publish_twice",
            keys={key},
            publish=lambda: app.send_task(
                APPLY_TASK, args=[delta_id, key, amount], task_id=delta_id, countdown=1
            ),
        )
        kwargs = {"published_at": published_at or time.time()}
        if retries == 0 and broker_kind(app) == "redis":
            # Before the push, so no pushed delta lacks its record (tasks/inflight.py).
            inflight_record(
                app=app,
                queue=COUNTERS_QUEUE,
                message_id=delta_id,
                payload={"key": key, "amount": amount, **kwargs},
                now=time.time(),
            )
        if countdown is None and settings.COUNTER_GROUP_COMMIT and broker_kind(app) == "amqp":
            # Shares confirms with the process's other requests (tasks/publisher.py).
            publisher_for(
                app=app, queue_name="counters", timeout_s=settings.COUNTER_PUBLISH_TIMEOUT_S
            ).publish(
                name=APPLY_TASK,
                task_id=delta_id,
                args=[delta_id, key, amount],
                kwargs=kwargs,
                retries=retries,
            )
            return
        app.send_task(
            APPLY_TASK,
            args=[delta_id, key, amount],
            task_id=delta_id,
            kwargs=kwargs,
            countdown=countdown,
            retries=retries,
            # A blocked publisher (RabbitMQ memory alarm) gets an error, not a hung request.
            timeout=settings.COUNTER_PUBLISH_TIMEOUT_S,
            confirm_timeout=settings.COUNTER_PUBLISH_TIMEOUT_S,
            # One retry (a pooled connection the broker closed is replaced), so a request waits
            # at most about twice the timeout before its answer.
            retry_policy=PUBLISH_RETRY_POLICY,
        )
    except Exception as exc:  # any publish failure means "not counted"
        logger.error("delta %s %s %+d NOT published: %r", delta_id, key, amount, exc)
        metrics.publish_failures.inc()
        raise CounterUnavailable(f"the broker did not accept the delta: {exc}") from exc


# --- read path --------------------------------------------------------------------------------


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
        recent = time.time() - settings.COUNTER_FILL_GRACE_S
        fresh = [key for key, hit in cached.items() if hit.filled_at > recent]
        floors = _durable_values(keys=fresh) if fresh else {}
        for key in durable_keys:
            hit = cached[key]
            floor = floors.get(key, (hit.durable, 0))[0]
            value = max(hit.value, floor)
            durable = max(hit.durable, floor)
            readings[key] = CounterReading(value=value, durable=durable, pending=value - durable)
    return {key: readings[key] for key in keys}


def _durable_values(*, keys: list[str]) -> dict[str, tuple[int, int]]:
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
        for key, (durable, version) in _durable_values(keys=todo).items():
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


# --- apply path -------------------------------------------------------------------------------


@dataclass
class IncomingDelta:
    """One delta message as the batch task received it."""

    message_id: str
    args: list
    retries: int = 0
    deliveries: int = 1
    published_at: float | None = None


@dataclass
class BatchOutcome:
    """What to do with each message after the batch: ids not listed are acknowledged."""

    reject: list[str] = field(default_factory=list)  # dead-lettered
    requeue: list[str] = field(default_factory=list)  # give back to the broker
    # Every message whose fate is decided (applied, dead-lettered, re-published or given back).
    settled: set[str] = field(default_factory=set)
    # Applied (now or before) or recorded as a dead letter: no longer in flight.
    done: list[str] = field(default_factory=list)


def _parse(delta: IncomingDelta) -> tuple[str, str, int]:
    try:
        delta_id, key, amount = delta.args
        uuid.UUID(str(delta_id))
    except (TypeError, ValueError) as exc:
        raise InvalidCounter(f"malformed delta {delta.args!r}") from exc
    _, data_class = key_validate(key=key)
    if data_class != DURABLE:
        raise InvalidCounter(f"{key} is not a durable counter")
    return str(delta_id), key, amount_validate(amount=amount)


LEDGER_INSERT = """
INSERT INTO counters_applieddelta (delta_id, key, amount, applied_at)
SELECT delta_id, key, amount, now() FROM unnest(%s::uuid[], %s::text[], %s::bigint[])
    AS batch(delta_id, key, amount)
ON CONFLICT (delta_id) DO NOTHING
RETURNING delta_id::text, key, amount
"""
# One upsert for the batch; rows in key order so concurrent batches lock them in the same order
# and cannot deadlock.
COUNTER_UPSERT = """
INSERT INTO counters_counter (key, value, version, updated_at)
SELECT key, total, 1, now() FROM unnest(%s::text[], %s::bigint[]) AS sums(key, total)
ORDER BY key
ON CONFLICT (key) DO UPDATE SET value = counters_counter.value + EXCLUDED.value,
    version = counters_counter.version + 1, updated_at = now()
RETURNING key, value, version
"""


def counters_add(*, cursor, deltas) -> list[tuple[str, int, int]]:
    """Add the deltas' (id, key, amount) sums per key to the counter rows in one upsert, rows in
    key order; return the (key, value, version) of each row changed."""
    sums: dict[str, int] = defaultdict(int)
    for _, key, amount in deltas:
        sums[key] += amount
    if not sums:
        return []
    ordered = sorted(sums.items())
    cursor.execute(COUNTER_UPSERT, [[k for k, _ in ordered], [t for _, t in ordered]])
    return cursor.fetchall()


def delta_group_apply(*, deltas: list[tuple[str, str, int]]) -> int:
    """Apply deltas (id, key, amount) in ONE transaction; return how many were new."""
    keys = {key for _, key, _ in deltas}
    unique = {delta_id: (key, amount) for delta_id, key, amount in deltas}
    with transaction.atomic(), connection.cursor() as cursor:
        fault_point("raise", keys=keys)
        fault_point("transient", keys=keys)
        # Arrays, not a VALUES list built as text: one statement text for every batch size.
        cursor.execute(
            LEDGER_INSERT,
            [list(unique), [k for k, _ in unique.values()], [a for _, a in unique.values()]],
        )
        inserted = cursor.fetchall()
        counter_rows = counters_add(cursor=cursor, deltas=inserted)
        fault_point("kill_before_commit", keys=keys)
    fault_point("kill_after_commit", keys=keys)
    if counter_rows:
        by_key: dict[str, list[tuple[str, int]]] = defaultdict(list)
        for delta_id, key, amount in inserted:
            by_key[key].append((delta_id, amount))
        try:
            cache.apply(rows=counter_rows, deltas=by_key, now=time.time())
        except redis.exceptions.RedisError as exc:
            # The cache is only a copy: its pending entries still count these deltas, so reads
            # stay right; the next batch for these keys (or a read miss) heals the versions.
            logger.warning("applied, but the cache was not updated: %r", exc)
    # One line per delta only at DEBUG: the ledger is the record of each (per-delta INFO lines in
    # the web and the worker cost ~10% of the increments per second in `make bench`).
    if logger.isEnabledFor(logging.DEBUG):
        for delta_id, key, amount in inserted:
            logger.debug("delta %s %s %+d applied", delta_id, key, amount)
    # "already applied": ids the ledger held from an earlier transaction (a redelivery, a
    # duplicate publish, a replay); the fault suite reads it to prove a duplicate was absorbed.
    logger.info(
        "batch committed: %d deltas, %d new, %d already applied, %d counters",
        len(deltas),
        len(inserted),
        len(unique) - len(inserted),
        len(counter_rows),
    )
    return len(inserted)


def delta_batch_apply(*, deltas: list[IncomingDelta]) -> BatchOutcome:
    """Apply a batch of delta messages; say which to dead-letter or give back, the rest are acked.

    * A message delivered more than ``TASK_MAX_DELIVERIES`` times (its worker died each time: a
      poison delta that kills the process) is dead-lettered without being run.
    * A malformed delta is dead-lettered (permanent error).
    * First deliveries are applied together in one transaction. A message seen before was in a
      batch whose worker died, so it is applied on its own: a poison delta can then only take
      itself down, and the innocent deltas of its batch get through.
    * A group that raises a permanent error is split until the culprit is alone, then the culprit
      is dead-lettered and the rest applied ("others unaffected").
    * A transient error (PostgreSQL down, read-only during a failover) re-publishes the group's
      deltas with a backoff countdown and acknowledges the originals. Counter deltas have no retry
      budget: the database being down for minutes must delay them, never dead-letter them (G1).

    It never raises: an error nobody foresaw re-publishes every delta not yet settled, with a
    backoff. Raising would give the whole batch back at once, and each such cycle spends a
    delivery until the broker's delivery limit dead-letters healthy deltas with no record (G3).
    """
    outcome = BatchOutcome()
    try:
        _batch_apply(deltas, outcome)
    except Exception as exc:
        logger.exception("batch of %d deltas failed unexpectedly; re-publishing", len(deltas))
        _close_connection()
        for delta in deltas:
            if delta.message_id not in outcome.settled:
                _retry_later(delta, exc, outcome)
    if outcome.done and broker_kind(app) == "redis":
        try:
            inflight_forget(app=app, queue=COUNTERS_QUEUE, message_ids=outcome.done)
        except Exception as exc:  # reconcile forgets them later, finding them in the ledger
            logger.warning("could not forget %d done deltas: %r", len(outcome.done), exc)
    return outcome


def _batch_apply(deltas: list[IncomingDelta], outcome: BatchOutcome) -> None:
    if broker_kind(app) == "redis":
        try:
            # Once per distinct message: copies of one delta in the same job (a restore after a
            # broker restart, a duplicate publish) are one delivery, not several.
            distinct = list(dict.fromkeys((d.message_id, d.retries) for d in deltas))
            counts = dict(
                zip(distinct, redis_delivery_counts(app=app, messages=distinct), strict=True)
            )
            for delta in deltas:
                delta.deliveries = counts[(delta.message_id, delta.retries)]
        except Exception:  # counting must never stop deltas from being applied
            logger.exception("could not count deliveries")

    groups: list[list[tuple[IncomingDelta, tuple[str, str, int]]]] = []
    fresh = []
    over_limit = [d for d in deltas if d.deliveries > settings.TASK_MAX_DELIVERIES]
    done = set()
    if over_limit:
        # Applied before its worker died (after the commit, before the ack): nothing to do.
        ids = [str(d.args[0]) for d in over_limit if d.args]
        done = {
            str(i)
            for i in AppliedDelta.objects.filter(delta_id__in=_uuids(ids)).values_list(
                "delta_id", flat=True
            )
        }
    for delta in deltas:
        if delta.args and str(delta.args[0]) in done:
            outcome.settled.add(delta.message_id)
            outcome.done.append(delta.message_id)
            continue
        if delta.deliveries > settings.TASK_MAX_DELIVERIES:
            reason = f"worker lost while applying this delta {delta.deliveries - 1} times"
            _dead_letter(delta, DeadLetter.Reason.DELIVERY_LIMIT, reason, "", outcome)
            continue
        try:
            parsed = _parse(delta)
        except InvalidCounter as exc:
            _dead_letter(
                delta, DeadLetter.Reason.PERMANENT_ERROR, f"InvalidCounter: {exc}", "", outcome
            )
            continue
        if delta.deliveries == 1:
            fresh.append((delta, parsed))
        else:
            groups.append([(delta, parsed)])
    if fresh:
        groups.insert(0, fresh)

    while groups:
        group = groups.pop(0)
        try:
            started = time.monotonic()
            new = delta_group_apply(deltas=[parsed for _, parsed in group])
        except Exception as exc:
            if is_transient(exc):
                _close_connection()  # a broken connection must not be reused by the next batch
                for delta, _ in group:
                    _retry_later(delta, exc, outcome)
            elif len(group) > 1:
                groups[:0] = [[member] for member in group]
            else:
                error = f"{type(exc).__name__}: {exc}"
                _dead_letter(
                    group[0][0],
                    DeadLetter.Reason.PERMANENT_ERROR,
                    error,
                    traceback.format_exc(),
                    outcome,
                )
            continue
        outcome.settled.update(delta.message_id for delta, _ in group)
        outcome.done.extend(delta.message_id for delta, _ in group)
        metrics.apply_seconds.observe(time.monotonic() - started)
        metrics.batch_size.observe(len(group))
        metrics.deltas_applied.inc(new)
        _record_lag([delta for delta, _ in group])


def _close_connection() -> None:
    try:
        connection.close()
    except Exception:  # closing a broken connection can itself fail; it is gone either way
        logger.debug("closing the database connection failed", exc_info=True)


def _record_lag(deltas: list[IncomingDelta]) -> None:
    from tasks.selectors import lag_record

    now = time.time()
    lags = [now - d.published_at for d in deltas if d.published_at]
    for lag in lags:
        metrics.apply_lag_seconds.observe(lag)
    try:
        lag_record(lags=lags)
    except redis.exceptions.RedisError:
        pass  # the operations page loses a sample; nothing else depends on it


def _uuids(values: list[str]) -> list[uuid.UUID]:
    result = []
    for value in values:
        try:
            result.append(uuid.UUID(value))
        except ValueError:
            continue
    return result


def _retry_later(delta: IncomingDelta, exc: BaseException, outcome: BatchOutcome) -> None:
    """Re-publish the delta with a backoff countdown and acknowledge this copy; give it back to
    the broker only when even the re-publish fails (the broker is what failed)."""
    outcome.settled.add(delta.message_id)
    countdown = retry_countdown(app=app, attempt=min(delta.retries, 16))
    try:
        delta_id, key, amount = delta.args
        delta_publish(
            delta_id=str(delta_id),
            key=key,
            amount=amount,
            countdown=countdown,
            retries=delta.retries + 1,
            published_at=delta.published_at,
        )
        logger.warning(
            "delta %s retry %d in %.1fs: %r", delta.message_id, delta.retries + 1, countdown, exc
        )
    except Exception:
        outcome.requeue.append(delta.message_id)


def _dead_letter(
    delta: IncomingDelta, reason: str, exception: str, trace: str, outcome: BatchOutcome
) -> None:
    kind = broker_kind(app)
    kwargs = {"published_at": delta.published_at} if delta.published_at else {}
    message = FailedMessage(
        task_id=delta.message_id,
        task_name=APPLY_TASK,
        queue="counters",
        args=list(delta.args),
        kwargs=kwargs,
        attempts=delta.retries + 1,
        deliveries=delta.deliveries,
        broker=kind,
    )
    try:
        if kind == "redis":
            # The queue's copy first: a row recorded and then a failed publish would leave the
            # delta both dead-lettered and retried.
            dead_letter_publish_task(
                app=app,
                task_id=delta.message_id,
                task_name=APPLY_TASK,
                args=list(delta.args),
                kwargs=kwargs,
                retries=delta.retries,
                queue="counters",
                reason=reason,
                exception=exception,
            )
        dead_letter_record(message=message, reason=reason, exception=exception, traceback=trace)
    except Exception as exc:
        # The dead-letter table or queue is unreachable (or the database is read-only): a
        # transient condition. Keep the delta alive with a backoff instead of giving it back at
        # once, which would spend a delivery per cycle until the broker dead-letters it unseen.
        _close_connection()
        logger.error("could not dead-letter delta %s yet: %r", delta.message_id, exc)
        if delta.message_id not in outcome.settled:
            _retry_later(delta, exc, outcome)
        return
    logger.error("delta %s dead-lettered (%s): %s", delta.message_id, reason, exception)
    if len(delta.args) == 3 and isinstance(delta.args[1], str):
        try:  # out of the queue: reads stop counting it as pending (reconcile, if this fails)
            cache.forget(key=delta.args[1], delta_ids=[str(delta.args[0])])
        except redis.exceptions.RedisError as exc:
            logger.warning("dead letter %s still pending in the cache: %r", delta.message_id, exc)
    metrics.dead_letters.labels(reason=reason).inc()
    # Its in-flight record stays (until a replay is applied, or it is discarded): a replayed copy
    # lost by the broker is re-published from it like any other delta.
    outcome.settled.add(delta.message_id)
    outcome.reject.append(delta.message_id)


def ledger_prune(*, older_than_s: int) -> int:
    """Delete ledger rows older than the longest redelivery window; return how many."""
    cutoff = timezone.now() - timedelta(seconds=older_than_s)
    deleted, _ = AppliedDelta.objects.filter(applied_at__lt=cutoff).delete()
    return deleted


@dataclass(frozen=True)
class Repair:
    key: str
    before: int
    after: int
    detail: str


def counter_reconcile(
    *, tombstone_age_s: float = 600.0, republish_after_s: float | None = None
) -> list[Repair]:
    """Compare each cached counter with PostgreSQL + its pending deltas and repair the drift, then
    re-publish stranded deltas (``delta_republish_stranded``).

    Repairs: a ``durable``/``version`` older than the database (an ``apply`` that never reached
    Redis); pending entries whose delta the ledger shows as applied (counted twice); tombstones
    older than ``tombstone_age_s`` (left by a web process killed between its publish and its
    Redis update: the delta was counted by the worker, the bump never came). Optimistic: a hash
    that changes while it is being checked is checked again.
    """
    client = cache.client()
    repairs = []
    now = time.time()
    for raw_key in client.scan_iter(match=cache.PREFIX + "*", count=500):
        hash_key = raw_key.decode()
        key = hash_key[len(cache.PREFIX) :]
        for _ in range(10):
            with client.pipeline() as pipe:
                try:
                    pipe.watch(hash_key)
                    repair = _reconcile_one(pipe, hash_key, key, now, tombstone_age_s)
                except redis.exceptions.WatchError:
                    continue
            if repair:
                repairs.append(repair)
            break
    return repairs + delta_republish_stranded(republish_after_s=republish_after_s)


def delta_republish_stranded(*, republish_after_s: float | None = None) -> list[Repair]:
    """Publish again, under their own ids, the deltas the Redis broker recorded as published
    (tasks/inflight.py) more than ``republish_after_s`` ago (default ``COUNTER_REPUBLISH_AFTER_S``)
    that are neither in the ledger nor dead-lettered (a replayed dead letter is live again);
    forget those applied, cancelled or discarded.

    Such a delta was acknowledged, so its message must exist; on the Redis broker it can be gone
    (lost between kombu's BRPOP and its unacknowledged record when a worker or the broker dies).
    A copy of a delta that still exists is absorbed by the ledger. RabbitMQ keeps no record: a
    message it confirmed stays in its queue until it is acknowledged or dead-lettered.
    """
    if broker_kind(app) != "redis":
        return []
    if republish_after_s is None:
        republish_after_s = settings.COUNTER_REPUBLISH_AFTER_S
    now = time.time()
    old = dict(inflight_older_than(app=app, queue=COUNTERS_QUEUE, age_s=republish_after_s, now=now))
    stranded: dict[str, list[tuple[str, int]]] = defaultdict(list)
    ids = list(old)
    for start in range(0, len(ids), 1000):
        chunk = ids[start : start + 1000]
        done = {
            str(i)
            for i in AppliedDelta.objects.filter(delta_id__in=_uuids(chunk)).values_list(
                "delta_id", flat=True
            )
        }
        letters = dict(
            DeadLetter.objects.filter(task_id__in=chunk).values_list("task_id", "status")
        )
        done |= {i for i, status in letters.items() if status == DeadLetter.Status.DISCARDED}
        dead = {i for i, status in letters.items() if status == DeadLetter.Status.DEAD}
        inflight_forget(app=app, queue=COUNTERS_QUEUE, message_ids=[i for i in chunk if i in done])
        for delta_id in chunk:
            if delta_id not in done and delta_id not in dead:  # a replayed one is live again
                payload = old[delta_id]
                delta_publish(
                    delta_id=delta_id,
                    key=payload["key"],
                    amount=payload["amount"],
                    published_at=payload.get("published_at"),
                )
                logger.warning(
                    "delta %s %s %+d re-published: recorded %.0fs ago, not applied",
                    delta_id,
                    payload["key"],
                    payload["amount"],
                    now - payload["recorded_at"],
                )
                stranded[payload["key"]].append((delta_id, payload["amount"]))
    repairs = []
    for key, entries in stranded.items():
        total = sum(amount for _, amount in entries)
        detail = f"re-published {len(entries)} stranded deltas"
        repairs.append(Repair(key=key, before=total, after=total, detail=detail))
    return repairs


# One statement, so one snapshot: the row and the ledger as of the same instant. Two queries
# would let a batch commit in between, and its deltas would then count both in the row and as
# still pending. Dead-lettered deltas (unless replayed) are no longer pending either.
RECONCILE_SNAPSHOT = """
SELECT c.value, c.version,
       ARRAY(SELECT delta_id::text FROM counters_applieddelta WHERE delta_id = ANY(%s::uuid[])),
       ARRAY(SELECT task_id FROM tasks_deadletter WHERE task_id = ANY(%s::text[])
             AND status <> 'replayed')
FROM (SELECT 1) AS one LEFT JOIN counters_counter c ON c.key = %s
"""


def _reconcile_one(
    pipe, hash_key: str, key: str, now: float, tombstone_age_s: float
) -> Repair | None:
    fields = {k.decode(): v.decode() for k, v in pipe.hgetall(hash_key).items()}
    if "durable" not in fields:
        return None
    durable, version = int(fields["durable"]), int(fields["version"])
    pending_sum = int(fields.get("pending", 0))
    entries = {f[2:]: cache.pending_entry(v)[0] for f, v in fields.items() if f.startswith("d:")}
    old_tombstones = [
        f for f, v in fields.items() if f.startswith("a:") and now - float(v) > tombstone_age_s
    ]
    ids = [str(i) for i in _uuids(list(entries))]
    with connection.cursor() as cursor:
        cursor.execute(RECONCILE_SNAPSHOT, [ids, ids, key])
        db_value, db_version, applied_ids, dead_ids = cursor.fetchone()
    db_value, db_version = db_value or 0, db_version or 0
    applied = set(applied_ids) | set(dead_ids)  # no longer pending, either way
    new_durable, new_version = (
        (db_value, db_version) if db_version >= version else (durable, version)
    )
    still_pending = {i: a for i, a in entries.items() if i not in applied}
    new_pending = sum(still_pending.values())
    before, after = durable + pending_sum, new_durable + new_pending
    # Out-of-order applies kept for versions the hash now has (cache.py): never to be replayed.
    kept = [f for f in fields if f.startswith("v:")]
    passed = [f for f in kept if int(f[2:]) <= new_version]
    if (new_durable, new_version, new_pending) == (durable, version, pending_sum) and not (
        applied or old_tombstones or passed
    ):
        return None
    pipe.multi()
    pipe.hset(
        hash_key, mapping={"durable": new_durable, "version": new_version, "pending": new_pending}
    )
    stale = [f"d:{i}" for i in applied] + old_tombstones + passed
    if passed and len(passed) == len(kept):
        stale += ["stashed", "stashed_at"]
    elif passed:
        pipe.hset(hash_key, "stashed", len(kept) - len(passed))
    if stale:
        pipe.hdel(hash_key, *stale)
    pipe.execute()
    detail = (
        f"database {db_value} (v{db_version}) + {len(still_pending)} pending ({new_pending}); "
        f"dropped {len(applied)} applied pending entries, {len(old_tombstones)} old tombstones"
    )
    return Repair(key=key, before=before, after=after, detail=detail)
