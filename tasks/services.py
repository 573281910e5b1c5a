"""Dead-letter services: record a dead letter in PostgreSQL, and publish it to the dead-letter queue
on a broker that cannot dead-letter by itself."""

from dataclasses import dataclass
from datetime import datetime

from django.db import transaction
from django.utils import timezone
from kombu import Connection

from .models import DeadLetter
from .topology import dead_letter_queue


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
