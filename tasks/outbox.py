"""The transactional outbox: a task dispatched inside a transaction is a row of that transaction.

``transaction.on_commit(task.delay)`` publishes at most once: a broker that is down at the commit
(or a process that dies right after it) loses the task, although what it follows has committed.
Here the task is written to ``tasks_outboxmessage`` in the SAME transaction as the data it
follows, so it exists exactly when that data does; the relay (tasks/relay.py, its own process)
publishes it after the commit, with the broker's confirmation, and keeps trying while the broker
is down. A ``NOTIFY``, sent by a trigger on the table in the inserting transaction, wakes the
relays at the commit (PostgreSQL delivers it only then, and never for a rollback), so the
normal commit-to-publish delay is milliseconds.

Delivery is at least once: a relay killed between a publish and marking the row sent publishes it
again, with the same message id. What the outbox carries must therefore be idempotent (a counter
delta uses the row's message id as its delta id; the confirmation mail has a sent-marker).

A task with a publish path of its own (a counter delta: its in-flight record on the Redis broker,
the group confirms on RabbitMQ) registers it with ``outbox_publisher_register``; any other task is
published with ``send_task`` and the broker's confirmation.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db.models import Count, Min, Q
from django.utils import timezone

from .models import OutboxMessage, OutboxRelay

# The trigger of migration tasks/0003 notifies this channel.
CHANNEL = "tasks_outbox"
# A relay that has not reported (every 2 s) for this long is not alive: the operations page and the
# health check. Well above a pass that waits out a confirm timeout.
RELAY_STALE_S = 30.0


@dataclass(frozen=True)
class OutboxItem:
    """What a publisher gets of a row."""

    message_id: str
    task_name: str
    queue: str
    args: list
    kwargs: dict


Publisher = Callable[[OutboxItem], None]
_publishers: dict[str, Publisher] = {}


def outbox_publisher_register(*, task_name: str, publisher: Publisher) -> None:
    """Publish rows of ``task_name`` with ``publisher`` (which raises when not confirmed)."""
    _publishers[task_name] = publisher


def outbox_publisher_for(*, task_name: str) -> Publisher | None:
    return _publishers.get(task_name)


def outbox_enqueue(
    *,
    task_name: str,
    queue: str,
    args: list | None = None,
    kwargs: dict | None = None,
    message_id: str | None = None,
) -> str:
    """Write a task to the outbox in the caller's transaction; return its message id.

    Outside a transaction (autocommit) the row commits at once, which is still durable: the relay
    publishes it. The arguments must be JSON (they are a JSONB column and a JSON message).
    """
    message_id = message_id or str(uuid.uuid4())
    now = timezone.now()
    # One INSERT: it stands or falls with the caller's transaction, and its trigger's NOTIFY
    # (migration tasks/0003) is delivered at that transaction's commit.
    OutboxMessage.objects.create(
        message_id=message_id,
        task_name=task_name,
        queue=queue,
        args=list(args or []),
        kwargs=dict(kwargs or {}),
        created_at=now,
        available_at=now,
    )
    return message_id


def relays_alive(*, within_s: float) -> list[OutboxRelay]:
    cutoff = timezone.now() - timedelta(seconds=within_s)
    return list(OutboxRelay.objects.filter(seen_at__gte=cutoff).order_by("name"))


def outbox_prune(*, older_than_s: int | None = None) -> int:
    """Delete rows sent more than ``older_than_s`` ago (``OUTBOX_KEEP_SENT_S``), and the
    heartbeats of relays gone as long."""
    age = older_than_s if older_than_s is not None else settings.OUTBOX_KEEP_SENT_S
    cutoff = timezone.now() - timedelta(seconds=age)
    deleted, _ = OutboxMessage.objects.filter(sent_at__lt=cutoff).delete()
    OutboxRelay.objects.filter(seen_at__lt=cutoff).delete()
    return deleted


def outbox_stats() -> dict:
    """What the operations page shows of the outbox: rows waiting, the age of the oldest (s), the
    relays that reported lately, and the rows that failed to publish at least once."""
    waiting = OutboxMessage.objects.filter(sent_at__isnull=True).aggregate(
        rows=Count("pk"), oldest=Min("created_at"), retrying=Count("pk", filter=Q(attempts__gt=0))
    )
    oldest = waiting["oldest"]
    relays = relays_alive(within_s=RELAY_STALE_S)
    return {
        "waiting": waiting["rows"],
        "retrying": waiting["retrying"],
        "oldest_age_s": round((timezone.now() - oldest).total_seconds(), 3) if oldest else None,
        "relays_alive": [
            {
                "name": r.name,
                "published": r.published,
                "seen_s_ago": round((timezone.now() - r.seen_at).total_seconds(), 1),
            }
            for r in relays
        ],
    }
