"""Delivery mechanics that the base task (one message per run, tasks/base.py) and a batch task
(many messages per run, tasks/batches.py) share: counting deliveries and dead-lettering."""

from __future__ import annotations

from . import metrics
from .services import (
    FailedMessage,
    dead_letter_publish_task,
    dead_letter_record,
    redis_delivery_counts,
)


def delivery_counts(*, app, messages: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
    """Redis broker: count one more delivery of each (message id, retry number), in the broker
    Redis. Copies of one message in the same call (a restore after a broker restart, a duplicate
    publish) are one delivery, not several. RabbitMQ's quorum queues count in a header instead."""
    distinct = list(dict.fromkeys(messages))
    return dict(zip(distinct, redis_delivery_counts(app=app, messages=distinct), strict=True))


def message_dead_letter(
    *,
    app,
    message: FailedMessage,
    retries: int,
    reason: str,
    exception: str,
    trace: str,
    publish_copy: bool = False,
) -> None:
    """Dead-letter a message; the caller then rejects it (RabbitMQ's dead-letter exchange moves
    it to the dead-letter queue).

    On the Redis broker, whose transport drops a rejected message, a complete copy goes to the
    dead-letter queue first; then the ``DeadLetter`` row is written (G3). The copy first: a row
    written and then a failed publish would leave the message both dead-lettered and retried. It
    raises if either fails; the caller keeps the message alive with a backoff (giving it back at
    once would spend a delivery per cycle until the broker's limit dead-letters it unseen). The
    row is one per message id; a copy published before a failed row may be followed by another.
    ``publish_copy``: publish the copy on RabbitMQ too (an item of an envelope: the caller
    acknowledges the envelope instead of rejecting it).
    """
    if message.broker == "redis" or publish_copy:
        dead_letter_publish_task(
            app=app,
            task_id=message.task_id,
            task_name=message.task_name,
            args=message.args,
            kwargs=message.kwargs,
            retries=retries,
            queue=message.queue,
            reason=reason,
            exception=exception,
        )
    dead_letter_record(message=message, reason=reason, exception=exception, traceback=trace)
    metrics.dead_letters.labels(reason=reason).inc()
