"""The apply path, run by the ``counters.apply_deltas`` batch task: in ONE PostgreSQL transaction
insert the batch's delta ids into the ledger (``ON CONFLICT DO NOTHING``) and add the sums of the
newly inserted ones to the counter rows (one upsert, rows in key order); the messages are
acknowledged after the commit, each according to its outcome (applied, retried later, given
back, dead-lettered).
"""

from __future__ import annotations

import logging
import time
import traceback
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta

import redis.exceptions
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from tasks.app import app
from tasks.base import retry_countdown
from tasks.broker import broker_kind
from tasks.delivery import delivery_counts, message_dead_letter
from tasks.inflight import inflight_forget
from tasks.models import DeadLetter
from tasks.policy import is_transient
from tasks.services import (
    FailedMessage,
)

from .. import cache, metrics
from ..cache import lag_record
from ..faults import fault_point
from ..models import AppliedDelta
from .common import APPLY_TASK, COUNTERS_QUEUE, close_connection, valid_uuids
from .partition import IncomingDelta, Parsed, deltas_partition
from .publish import delta_publish, delta_publish_single
from .sql import COUNTER_UPSERT, LEDGER_INSERT

logger = logging.getLogger(__name__)


@dataclass
class BatchOutcome:
    """What to do with each message after the batch: ids not listed are acknowledged."""

    reject: list[str] = field(default_factory=list)  # dead-lettered
    requeue: list[str] = field(default_factory=list)  # give back to the broker
    # Every message whose fate is decided (applied, dead-lettered, re-published or given back).
    settled: set[str] = field(default_factory=set)
    # Applied (now or before) or recorded as a dead letter: no longer in flight.
    done: list[str] = field(default_factory=list)


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
    * First deliveries are applied together in one transaction, second deliveries together in
      another (mostly what a lost connection or broker node gave back). A message seen twice
      before was in batches whose worker died, so it is applied on its own (an envelope: its
      deltas published alone): a poison delta can then only take itself down, and the innocent
      deltas of its batch get through.
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
        close_connection()
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
    _count_deliveries(deltas)
    partition = deltas_partition(
        deltas=deltas,
        max_deliveries=settings.TASK_MAX_DELIVERIES,
        applied=_applied_among(deltas),
    )
    for delta in partition.done:
        outcome.settled.add(delta.message_id)
        outcome.done.append(delta.message_id)
    if partition.done or partition.explode:
        # The fault suite reads the first figure as proof that a redelivery was absorbed.
        logger.info(
            "redelivered: %d deltas found in the ledger, acknowledged; %d published alone",
            len(partition.done),
            len(partition.explode),
        )
    for delta in partition.over_limit:
        reason = f"worker lost while applying this delta {delta.deliveries - 1} times"
        _dead_letter(delta, DeadLetter.Reason.DELIVERY_LIMIT, reason, "", outcome)
    for delta, error in partition.malformed:
        _dead_letter(delta, DeadLetter.Reason.PERMANENT_ERROR, error, "", outcome)
    for delta, (delta_id, key, amount) in partition.explode:
        if outcome.requeue:  # the broker refuses publishes: the envelope goes back anyway
            outcome.settled.add(delta.message_id)
            outcome.requeue.append(delta.message_id)
            continue
        _publish_alone(delta, delta_id=delta_id, key=key, amount=amount, outcome=outcome)
    _apply_groups(partition.groups, outcome)


def _count_deliveries(deltas: list[IncomingDelta]) -> None:
    """Redis broker: set each delta's delivery count (RabbitMQ's come in a header)."""
    if broker_kind(app) != "redis":
        return
    try:
        counts = delivery_counts(app=app, messages=[(d.delivered_as, d.retries) for d in deltas])
        for delta in deltas:
            delta.deliveries = counts[(delta.delivered_as, delta.retries)]
    except Exception:  # counting must never stop deltas from being applied
        logger.exception("could not count deliveries")


def _applied_among(deltas: list[IncomingDelta]) -> set[str]:
    """The ids the ledger holds of the deltas over the delivery limit and of the redelivered
    envelopes' (one query, only if any)."""
    ids = [
        str(d.args[0])
        for d in deltas
        if d.args
        and (d.deliveries > settings.TASK_MAX_DELIVERIES or (d.envelope_id and d.deliveries > 1))
    ]
    if not ids:
        return set()
    rows = AppliedDelta.objects.filter(delta_id__in=valid_uuids(ids))
    return {str(i) for i in rows.values_list("delta_id", flat=True)}


def _apply_groups(groups: list[list[tuple[IncomingDelta, Parsed]]], outcome: BatchOutcome) -> None:
    """Each group in one transaction. A transient error retries the group later; a permanent one
    splits it until the culprit is alone, which is dead-lettered ("others unaffected")."""
    groups = list(groups)
    while groups:
        group = groups.pop(0)
        try:
            started = time.monotonic()
            new = delta_group_apply(deltas=[parsed for _, parsed in group])
        except Exception as exc:
            if is_transient(exc):
                close_connection()  # a broken connection must not be reused by the next batch
                for delta, _ in group:
                    _retry_later(delta, exc, outcome)
            elif len(group) > 1:
                groups[:0] = [[member] for member in group]
            else:
                error = f"{type(exc).__name__}: {exc}"
                reason = DeadLetter.Reason.PERMANENT_ERROR
                _dead_letter(group[0][0], reason, error, traceback.format_exc(), outcome)
            continue
        outcome.settled.update(delta.message_id for delta, _ in group)
        outcome.done.extend(delta.message_id for delta, _ in group)
        metrics.apply_seconds.observe(time.monotonic() - started)
        metrics.batch_size.observe(len(group))
        metrics.deltas_applied.inc(new)
        _record_lag([delta for delta, _ in group])


def _record_lag(deltas: list[IncomingDelta]) -> None:
    now = time.time()
    lags = [now - d.published_at for d in deltas if d.published_at]
    for lag in lags:
        metrics.apply_lag_seconds.observe(lag)
    try:
        lag_record(lags=lags)
    except redis.exceptions.RedisError:
        pass  # the operations page loses a sample; nothing else depends on it


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


def _publish_alone(
    delta: IncomingDelta, *, delta_id: str, key: str, amount: int, outcome: BatchOutcome
) -> None:
    """A delta of a redelivered envelope, published again as a message of its own; its envelope
    is given back if that fails (the copies already published are absorbed by the ledger)."""
    outcome.settled.add(delta.message_id)
    try:
        delta_publish_single(
            delta_id=delta_id, key=key, amount=amount, published_at=delta.published_at, alone=True
        )
    except Exception:
        outcome.requeue.append(delta.message_id)


def _dead_letter(
    delta: IncomingDelta, reason: str, exception: str, trace: str, outcome: BatchOutcome
) -> None:
    message = FailedMessage(
        task_id=delta.message_id,
        task_name=APPLY_TASK,
        queue=COUNTERS_QUEUE,
        args=list(delta.args),
        kwargs={"published_at": delta.published_at} if delta.published_at else {},
        attempts=delta.retries + 1,
        deliveries=delta.deliveries,
        broker=broker_kind(app),
    )
    try:
        message_dead_letter(
            app=app,
            message=message,
            retries=delta.retries,
            reason=reason,
            exception=exception,
            trace=trace,
            # One delta of an envelope: the broker cannot dead-letter part of a message.
            publish_copy=delta.envelope_id is not None,
        )
    except Exception as exc:
        # The dead-letter table or queue is unreachable (or the database is read-only): a
        # transient condition. Keep the delta alive with a backoff instead of giving it back at
        # once, which would spend a delivery per cycle until the broker dead-letters it unseen.
        close_connection()
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
    # Its in-flight record stays (until a replay is applied, or it is discarded): a replayed copy
    # lost by the broker is re-published from it like any other delta.
    outcome.settled.add(delta.message_id)
    if delta.envelope_id is None:  # an envelope is acknowledged: its copy is published already
        outcome.reject.append(delta.message_id)


def ledger_prune(*, older_than_s: int) -> int:
    """Delete ledger rows older than the longest redelivery window; return how many."""
    cutoff = timezone.now() - timedelta(seconds=older_than_s)
    deleted, _ = AppliedDelta.objects.filter(applied_at__lt=cutoff).delete()
    return deleted
