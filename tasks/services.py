"""Dead-letter services: record a dead letter in PostgreSQL, and publish it to the dead-letter queue
on a broker that cannot dead-letter by itself."""

from dataclasses import dataclass, field
from datetime import datetime

from django.db import transaction
from django.utils import timezone
from kombu import Connection

from .app import app
from .models import DeadLetter
from .topology import dead_letter_queue

# How long the Redis broker remembers a message's delivery count: longer than any redelivery
# cycle (visibility timeout) times the delivery limit.
DELIVERY_COUNT_TTL_S = 7 * 24 * 3600


@dataclass(frozen=True)
class FailedMessage:
    task_id: str
    task_name: str
    queue: str
    args: list
    kwargs: dict
    attempts: int
    deliveries: int
    broker: str


def dead_letter_record(
    *,
    message: FailedMessage,
    reason: str,
    exception: str,
    traceback: str,
    failed_at: datetime | None = None,
) -> DeadLetter:
    """Insert the dead letter, or update it if this message was dead-lettered before.

    One ``INSERT ... ON CONFLICT (task_id) DO UPDATE``: a worker killed after this commit and
    before the broker acknowledgement redelivers the message, which lands here again and updates
    the same row instead of adding a second one. ``first_failed_at`` keeps its first value.
    """
    failed_at = failed_at or timezone.now()
    row = DeadLetter(
        task_id=message.task_id,
        task_name=message.task_name,
        queue=message.queue,
        args=message.args,
        kwargs=message.kwargs,
        reason=reason,
        exception=exception,
        traceback=traceback,
        attempts=message.attempts,
        deliveries=message.deliveries,
        broker=message.broker,
        status=DeadLetter.Status.DEAD,
        first_failed_at=failed_at,
        last_failed_at=failed_at,
    )
    update_fields = ["reason", "exception", "traceback", "attempts", "deliveries"]
    update_fields += ["broker", "status", "last_failed_at", "queue"]
    with transaction.atomic():
        DeadLetter.objects.bulk_create(
            [row], update_conflicts=True, unique_fields=["task_id"], update_fields=update_fields
        )
    return DeadLetter.objects.get(task_id=message.task_id)


def dead_letter_publish(
    *, connection: Connection, body: tuple, headers: dict, properties: dict
) -> None:
    """Publish a copy of a task message to the dead-letter queue (used on the Redis broker).

    kombu's Redis transport drops a rejected message, so it cannot dead-letter by itself. The copy
    is a complete Celery message (same id, arguments and headers plus the reason), so it can be
    replayed as it is. Published with retries; it raises if the broker stays unreachable, and the
    caller then leaves the original message unacknowledged.
    """
    queue = dead_letter_queue()
    with connection.Producer() as producer:
        producer.publish(
            body,
            exchange=queue.exchange,
            routing_key=queue.routing_key,
            declare=[queue],
            headers=headers,
            serializer="json",
            delivery_mode=2,
            retry=True,
            retry_policy={"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5},
            **properties,
        )


def dead_letter_publish_task(
    *,
    app,
    task_id: str,
    task_name: str,
    args: list,
    kwargs: dict,
    retries: int,
    queue: str,
    reason: str,
    exception: str,
) -> None:
    """Publish a complete Celery message for this task to the dead-letter queue (Redis broker)."""
    task_message = app.amqp.as_task_v2(
        task_id, task_name, args=args, kwargs=kwargs, retries=retries
    )
    headers = {
        **task_message.headers,
        "x-dead-letter-reason": reason,
        "x-dead-letter-exception": exception[:1000],
        "x-original-queue": queue,
    }
    with app.pool.acquire(block=True) as conn:
        dead_letter_publish(
            connection=conn,
            body=task_message.body,
            headers=headers,
            properties=task_message.properties,
        )


def redis_delivery_counts(*, app, messages: list[tuple[str, int]]) -> list[int]:
    """Count one more delivery of each (message id, retry number) in the broker Redis.

    kombu's Redis transport only flags a redelivery, it does not count them; the count lives in
    the broker Redis (AOF, noeviction) next to the messages, so it survives the worker it counts.
    """
    with app.pool.acquire(block=True) as conn:
        pipe = conn.default_channel.client.pipeline()
        for message_id, retries in messages:
            key = f"celery-deliveries:{message_id}:{retries}"
            pipe.incr(key).expire(key, DELIVERY_COUNT_TTL_S)
        return [int(count) for count in pipe.execute()[::2]]


def redis_delivery_counts_reset(*, app, message_id: str, retries_up_to: int) -> None:
    """Forget the delivery counts of a message (every retry number up to ``retries_up_to``), so a
    replayed dead letter starts a fresh count instead of being over the limit at once."""
    keys = [f"celery-deliveries:{message_id}:{n}" for n in range(retries_up_to + 1)]
    with app.pool.acquire(block=True) as conn:
        conn.default_channel.client.delete(*keys)


class DeadLetterError(Exception):
    """A dead-letter operation that cannot be done (unknown id, already replayed)."""


def _lock_dead_letter(dead_letter_id: int) -> DeadLetter:
    """The dead letter, row-locked, if it is still dead (not replayed or discarded)."""
    letter = DeadLetter.objects.select_for_update().filter(pk=dead_letter_id).first()
    if letter is None:
        raise DeadLetterError(f"no dead letter with id {dead_letter_id}")
    if letter.status != DeadLetter.Status.DEAD:
        raise DeadLetterError(f"dead letter {dead_letter_id} is already {letter.status}")
    return letter


def dead_letter_replay(*, dead_letter_id: int) -> DeadLetter:
    """Publish the dead letter's task again (same id, same arguments) to its original queue.

    Replaying is safe to repeat for tasks that are idempotent (counter deltas are: the ledger
    applies a delta id at most once); a letter already replayed is refused all the same, so a
    double click does not publish twice.
    """
    with transaction.atomic():
        letter = _lock_dead_letter(dead_letter_id)
        if app.conf.broker_url.startswith("redis"):
            # The broker Redis still counts the deliveries that dead-lettered it (kept for days).
            redis_delivery_counts_reset(
                app=app, message_id=letter.task_id, retries_up_to=max(letter.attempts, 1)
            )
        app.send_task(
            letter.task_name,
            args=letter.args,
            kwargs=letter.kwargs,
            task_id=letter.task_id,
            queue=letter.queue or "default",
        )
        letter.status = DeadLetter.Status.REPLAYED
        letter.save(update_fields=["status"])
    return letter


def dead_letter_discard(*, dead_letter_id: int) -> DeadLetter:
    with transaction.atomic():
        letter = _lock_dead_letter(dead_letter_id)
        letter.status = DeadLetter.Status.DISCARDED
        letter.save(update_fields=["status"])
    return letter


@dataclass
class ReplayOutcome:
    replayed: int = 0
    refused: list[str] = field(default_factory=list)  # replayed meanwhile by someone else
    failed: str | None = None  # the error that stopped the run (the broker is down, ...)
    more: bool = False  # letters of this reason beyond the limit, left for another run


def dead_letters_replay(*, reason: str, limit: int = 500) -> ReplayOutcome:
    """Replay the dead letters of one reason, oldest first, each through ``dead_letter_replay``
    (the operations page's button; the admin's action replays a selection the same way). Stops
    at the first failure other than a refusal: the letters replayed so far stay replayed, the
    rest stay dead."""
    if reason not in DeadLetter.Reason.values:
        raise DeadLetterError(f"unknown reason {reason!r}")
    dead = DeadLetter.objects.filter(reason=reason, status=DeadLetter.Status.DEAD).order_by("pk")
    ids = list(dead.values_list("pk", flat=True)[: limit + 1])
    outcome = ReplayOutcome(more=len(ids) > limit)
    for dead_letter_id in ids[:limit]:
        try:
            dead_letter_replay(dead_letter_id=dead_letter_id)
            outcome.replayed += 1
        except DeadLetterError as exc:
            outcome.refused.append(str(exc))
        except Exception as exc:  # the broker or the cache failed: report it, stop here
            outcome.failed = f"{type(exc).__name__}: {exc}"
            break
    return outcome
