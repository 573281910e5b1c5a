"""Publishing a delta and waiting for the broker's confirmation: in an envelope with the
process's other concurrent deltas (tasks/envelopes.py), or alone (retries, re-publishes).
"""

from __future__ import annotations

import logging
import time

import redis.exceptions
from django.conf import settings

from tasks.app import app
from tasks.batches import ALONE_KWARG
from tasks.broker import broker_kind
from tasks.envelopes import ENVELOPE_KWARG, NOTHING, envelope_publisher_for
from tasks.inflight import inflight_record, inflight_record_many
from tasks.outbox import OutboxItem
from tasks.publisher import publisher_for

from .. import cache, metrics
from ..faults import fault_point
from .common import APPLY_TASK, COUNTERS_QUEUE

logger = logging.getLogger(__name__)
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


def delta_publish_from_outbox(item: OutboxItem) -> None:
    """The relay's publisher for outbox deltas: the same publish as a request's (in-flight
    record on the Redis broker, group confirms on RabbitMQ)."""
    delta_id, key, amount = item.args
    delta_publish(delta_id=delta_id, key=key, amount=amount)


def delta_publish(
    *,
    delta_id: str,
    key: str,
    amount: int,
    countdown: float | None = None,
    retries: int = 0,
    published_at: float | None = None,
    bump_since: float | None = None,
) -> object:
    """Publish one delta and wait for the broker's confirmation; CounterUnavailable if none.

    A fresh delta (first attempt, no countdown) travels in an envelope with this process's other
    concurrent deltas (tasks/envelopes.py; ``COUNTER_ENVELOPES``); a retry, a re-publish and an
    exploded envelope's delta go alone (``delta_publish_single``).

    ``bump_since`` (a request's increment, see ``cache.bump``): with ``COUNTER_ENVELOPE_BUMP`` the
    envelope's thread records the delta as pending in the cache after the confirm, one pipeline
    for the whole envelope, and this returns ``cache.bump``'s result; otherwise, or if that
    failed, ``NOTHING`` (the caller bumps); the RedisError itself if the cache failed it."""
    if countdown is not None or retries or not settings.COUNTER_ENVELOPES:
        delta_publish_single(
            delta_id=delta_id,
            key=key,
            amount=amount,
            countdown=countdown,
            retries=retries,
            published_at=published_at,
        )
        return NOTHING
    try:
        _publish_twice_fault(delta_id=delta_id, key=key, amount=amount)
        publisher = envelope_publisher_for(
            key=(app.conf.broker_url, COUNTERS_QUEUE), send=_send, after_confirm=_bump_confirmed
        )
        # As long as a single publish may take (a timed-out attempt and one more), so an
        # increment still answers within the bound docs/settings.md gives.
        timeout_s = settings.COUNTER_PUBLISH_TIMEOUT_S * 2 + 1
        return publisher.publish(
            [delta_id, key, amount, published_at or time.time()],
            timeout_s=timeout_s,
            context=bump_since if settings.COUNTER_ENVELOPE_BUMP else None,
        )
    except Exception as exc:  # any publish failure means "not counted"
        _not_published(delta_id=delta_id, key=key, amount=amount, exc=exc)


def _bump_confirmed(entries: list[tuple[list, float | None]]) -> list:
    """After an envelope's confirm, in its thread: record as pending in the cache, in one
    pipeline, the deltas whose callers asked (their ``bump_since``). A key a test hooks
    ``before_bump`` on is left to its request, where the hook runs."""
    keys = {item[1] for item, since in entries if since is not None}
    fault_point("kill_after_publish", keys=keys)  # the same place as on the request's path
    hooked = set(settings.COUNTER_FAULTS.get("before_bump", ()))
    wanted = [
        (index, item, since)
        for index, (item, since) in enumerate(entries)
        if since is not None and item[1] not in hooked
    ]
    results = [NOTHING] * len(entries)
    if wanted:
        try:
            bumped = cache.bump_many(
                bumps=[(item[1], item[0], item[2], since) for _, item, since in wanted],
                now=time.time(),
            )
        except redis.exceptions.RedisError as exc:
            # Each caller takes the cache-down path at once, as if its own bump had failed (not
            # a second wait on the same unreachable cache).
            bumped = [exc] * len(wanted)
        for (index, _, _), result in zip(wanted, bumped, strict=True):
            results[index] = result
    return results


def _send(envelope_id: str, items: list[list]) -> None:
    """Publish one envelope of deltas and return once the broker confirmed it (the envelope
    publisher's thread; tasks/envelopes.py)."""
    kwargs = {ENVELOPE_KWARG: items}
    if broker_kind(app) == "redis":
        # Before the push, so no pushed delta lacks its record (tasks/inflight.py).
        inflight_record_many(
            app=app,
            queue=COUNTERS_QUEUE,
            records={
                delta_id: {"key": key, "amount": amount, "published_at": published_at}
                for delta_id, key, amount, published_at in items
            },
            now=time.time(),
        )
    _publish(task_id=envelope_id, args=[], kwargs=kwargs)


def delta_publish_single(
    *,
    delta_id: str,
    key: str,
    amount: int,
    countdown: float | None = None,
    retries: int = 0,
    published_at: float | None = None,
    alone: bool = False,
) -> None:
    """Publish one delta as a message of its own (its id the message id) and wait for the
    broker's confirmation; CounterUnavailable if none. ``alone``: out of an envelope that came
    back, so the worker runs it in a batch of its own (``ALONE_KWARG``, tasks/batches.py)."""
    try:
        _publish_twice_fault(delta_id=delta_id, key=key, amount=amount)
        kwargs = {"published_at": published_at or time.time()}
        if alone:
            kwargs[ALONE_KWARG] = True
        if retries == 0 and broker_kind(app) == "redis":
            # Before the push, so no pushed delta lacks its record (tasks/inflight.py).
            inflight_record(
                app=app,
                queue=COUNTERS_QUEUE,
                message_id=delta_id,
                payload={"key": key, "amount": amount, **kwargs},
                now=time.time(),
            )
        _publish(
            task_id=delta_id,
            args=[delta_id, key, amount],
            kwargs=kwargs,
            countdown=countdown,
            retries=retries,
        )
    except Exception as exc:  # any publish failure means "not counted"
        _not_published(delta_id=delta_id, key=key, amount=amount, exc=exc)
    return NOTHING


def _publish(
    *, task_id: str, args: list, kwargs: dict, countdown: float | None = None, retries: int = 0
) -> None:
    """One ``counters.apply_deltas`` message, returning once the broker confirmed it."""
    if countdown is None and settings.COUNTER_GROUP_COMMIT and broker_kind(app) == "amqp":
        # Shares confirms with the process's other publishes (tasks/publisher.py).
        publisher_for(
            app=app, queue_name=COUNTERS_QUEUE, timeout_s=settings.COUNTER_PUBLISH_TIMEOUT_S
        ).publish(name=APPLY_TASK, task_id=task_id, args=args, kwargs=kwargs, retries=retries)
        return
    app.send_task(
        APPLY_TASK,
        args=args,
        task_id=task_id,
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


def _publish_twice_fault(*, delta_id: str, key: str, amount: int) -> None:
    # The copy comes a second later, alone, so it reaches the ledger in a later transaction than
    # the original (and never in the same envelope).
    fault_point(
        "publish_twice",
        keys={key},
        publish=lambda: app.send_task(
            APPLY_TASK, args=[delta_id, key, amount], task_id=delta_id, countdown=1
        ),
    )


def _not_published(*, delta_id: str, key: str, amount: int, exc: BaseException):
    logger.error("delta %s %s %+d NOT published: %r", delta_id, key, amount, exc)
    metrics.publish_failures.inc()
    raise CounterUnavailable(f"the broker did not accept the delta: {exc}") from exc
