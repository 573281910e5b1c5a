"""The write-behind pipeline end to end: real worker subprocesses, both brokers."""

import os
import uuid

import pytest
from django.core.management import call_command

from counters import services
from counters.models import AppliedDelta, Counter
from tasks.models import DeadLetter

from ..helpers import committed_deltas, held_after_stop, outbox_relay, queue_depth, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def drain(timeout: float = 90) -> None:
    """The operator's command: waits until the broker holds no delta (on RabbitMQ that includes
    its statistics lag, about 6 s); the other tests wait on their own postconditions instead."""
    call_command("counters", "drain", "--timeout", str(timeout))


def durable(key: str) -> int:
    row = Counter.objects.filter(key=key).first()
    return row.value if row else 0


def test_increments_reach_postgresql_exactly_once_and_cache_equals_database(worker):
    keys = [f"article_views:exact-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    expected = dict.fromkeys(keys, 0)
    for i in range(60):
        key = keys[i % 3]
        amount = 1 if i % 5 else 3
        value = services.counter_incr(key=key, amount=amount).value
        expected[key] += amount
        assert value == expected[key]  # the caller sees its own increment at once
    drain()
    for key, total in expected.items():
        assert durable(key) == total
        reading = services.counter_get(key=key)
        assert (reading.value, reading.durable, reading.pending) == (total, total, 0)
    assert AppliedDelta.objects.count() == 60
    assert not DeadLetter.objects.exists()


def test_the_same_delta_published_twice_is_applied_once(worker):
    key = f"article_likes:dup-{uuid.uuid4().hex[:8]}"
    delta_id = str(uuid.uuid4())
    services.delta_publish(delta_id=delta_id, key=key, amount=7)
    # The second copy after the first is applied, so that the ledger absorbs it, not the batch's
    # in-memory dedupe (two copies in one batch).
    wait_for(lambda: durable(key) == 7, what="the first copy applied")
    services.delta_publish(delta_id=delta_id, key=key, amount=7)
    wait_for(lambda: committed_deltas(worker) >= 2, what="both copies applied or absorbed")
    assert held_after_stop(worker, worker_broker(worker), "counters") == 0
    assert durable(key) == 7
    assert AppliedDelta.objects.filter(delta_id=delta_id).count() == 1
    assert services.counter_get(key=key).value == 7


def test_increment_inside_a_transaction_is_counted_after_commit_and_never_on_rollback(
    worker, database_url, worker_log_dir
):
    from django.db import transaction

    from tasks.models import OutboxMessage

    broker = worker_broker(worker)
    kept, dropped = (f"article_views:tx-{uuid.uuid4().hex[:8]}" for _ in range(2))
    with transaction.atomic():
        increment = services.counter_incr(key=kept, amount=2)
        assert increment.value is None  # counted after the commit
        assert services.counter_get(key=kept).value == 0  # nothing visible before it
    with pytest.raises(RuntimeError), transaction.atomic():
        services.counter_incr(key=dropped, amount=5)
        raise RuntimeError("roll back")
    # The delta is an outbox row of the committed transaction, its id the row's message id.
    assert list(OutboxMessage.objects.values_list("message_id", flat=True)) == [
        uuid.UUID(increment.delta_id)
    ]
    with outbox_relay(broker_url=broker, database_url=database_url, log_dir=worker_log_dir):
        wait_for(lambda: durable(kept) == 2, what="the increment applied")
        wait_for(lambda: committed_deltas(worker) >= 1, what="its batch committed")
        wait_for(
            lambda: not OutboxMessage.objects.filter(sent_at__isnull=True).exists(),
            what="the outbox row marked sent",
        )
    assert held_after_stop(worker, broker, "counters") == 0
    assert (durable(kept), durable(dropped)) == (2, 0)
    assert services.counter_get(key=kept).value == 2
    assert services.counter_get(key=dropped).value == 0
    assert AppliedDelta.objects.filter(delta_id=increment.delta_id).count() == 1
    assert queue_depth(broker, "counters") == 0


def worker_broker(worker) -> str:
    return os.environ["CELERY_BROKER_URL"]
