"""Read repair, reconcile, the stale-fill race and ledger pruning, on real PostgreSQL and Redis."""

import time
import uuid
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from counters import cache, services
from counters.models import AppliedDelta, Counter
from tasks.models import DeadLetter

from ..helpers import read_queue

pytestmark = pytest.mark.django_db(transaction=True)


def apply_now(*deltas):
    """What the worker does for one batch (no broker needed for these tests)."""
    return services.delta_group_apply(deltas=list(deltas))


def new_key() -> str:
    return f"article_views:repair-{uuid.uuid4().hex[:8]}"


def test_a_miss_reads_postgresql_and_refills_redis(cache_redis):
    key = new_key()
    apply_now((str(uuid.uuid4()), key, 5))
    cache_redis.flushdb()  # not FLUSHALL: other test processes use other databases
    reading = services.counter_get(key=key)
    assert (reading.value, reading.durable, reading.pending) == (5, 5, 0)
    assert cache_redis.hget(cache.hash_key(key), "durable") == b"5"


def test_a_batch_applied_moves_pending_into_durable_without_changing_the_sum(cache_redis):
    key = new_key()
    services.counter_get(key=key)  # fill: 0
    delta_id = str(uuid.uuid4())
    assert cache.bump(key=key, delta_id=delta_id, amount=4, now=time.time()) == 4
    assert services.counter_get(key=key) == services.CounterReading(4, 0, 4)
    apply_now((delta_id, key, 4))
    assert services.counter_get(key=key) == services.CounterReading(4, 4, 0)


def test_a_bump_after_its_delta_was_applied_is_not_counted_twice(cache_redis):
    key = new_key()
    services.counter_get(key=key)
    delta_id = str(uuid.uuid4())
    apply_now((delta_id, key, 3))  # the worker was faster than the web process
    assert cache.bump(key=key, delta_id=delta_id, amount=3, now=time.time()) == 3
    assert services.counter_get(key=key).value == 3


def test_the_stale_fill_race_cannot_put_an_old_value_back(cache_redis):
    """A reader reads the row, a batch commits and is applied, then the reader's fill arrives:
    it is refused and the reader reads again."""
    key = new_key()
    apply_now((str(uuid.uuid4()), key, 1))
    cache_redis.flushdb()  # not FLUSHALL: other test processes use other databases
    old = Counter.objects.get(key=key)  # the reader's read (hook point: before its fill)
    apply_now((str(uuid.uuid4()), key, 10))  # a batch commits and is applied meanwhile
    assert cache.fill(key=key, durable=old.value, version=old.version, now=time.time()) is None
    assert services.counter_get(key=key).value == 11  # the retried read is fresh


def test_applies_that_cross_are_replayed_in_version_order_without_a_refill(cache_redis):
    """Two worker processes commit versions 2 and 3 of a counter; 3's apply reaches Redis first."""
    key = new_key()
    services.counter_get(key=key)
    apply_now((str(uuid.uuid4()), key, 1))  # version 1
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    now = time.time()
    cache.bump(key=key, delta_id=first, amount=2, now=now)
    cache.bump(key=key, delta_id=second, amount=3, now=now)
    Counter.objects.filter(key=key).update(value=6, version=3)  # both committed
    cache.apply(rows=[(key, 6, 3)], deltas={key: [(second, 3)]}, now=now)
    # Kept, not dropped: same reading, its deltas still pending.
    assert cache_redis.hexists(cache.hash_key(key), "v:3")
    hit = cache.read_many(keys=[key])[key]
    assert (hit.durable, hit.pending) == (1, 5)
    cache.apply(rows=[(key, 3, 2)], deltas={key: [(first, 2)]}, now=now)
    fields = cache_redis.hgetall(cache.hash_key(key))
    assert (fields[b"durable"], fields[b"version"], fields[b"pending"]) == (b"6", b"3", b"0")
    assert not [f for f in fields if f.startswith((b"v:", b"d:", b"stashed"))]


def test_a_lost_apply_drops_the_hash_after_a_while_and_the_next_read_is_exact(cache_redis):
    key = new_key()
    services.counter_get(key=key)
    apply_now((str(uuid.uuid4()), key, 2))
    # A batch whose apply never reached Redis (worker killed after commit, or cache down):
    Counter.objects.filter(key=key).update(value=7, version=3)
    now = time.time()
    cache.apply(rows=[(key, 8, 4)], deltas={}, now=now)  # version 4 while the cache holds 1
    assert cache_redis.exists(cache.hash_key(key))  # kept: version 2 or 3 may still come
    later = now + cache.STASH_AGE_S + 1
    cache.apply(rows=[(key, 9, 5)], deltas={}, now=later)  # the gap is still open: lost
    assert not cache_redis.exists(cache.hash_key(key))
    Counter.objects.filter(key=key).update(value=9, version=5)
    assert services.counter_get(key=key).value == 9


def test_reconcile_removes_kept_applies_the_database_has_passed(cache_redis):
    key = new_key()
    services.counter_get(key=key)
    apply_now((str(uuid.uuid4()), key, 1))
    Counter.objects.filter(key=key).update(value=4, version=3)
    cache.apply(rows=[(key, 4, 3)], deltas={}, now=time.time())
    assert cache_redis.hexists(cache.hash_key(key), "v:3")
    repairs = services.counter_reconcile()
    assert [(r.key, r.before, r.after) for r in repairs] == [(key, 1, 4)]
    fields = cache_redis.hgetall(cache.hash_key(key))
    assert (fields[b"durable"], fields[b"version"]) == (b"4", b"3")
    assert not [f for f in fields if f.startswith((b"v:", b"stashed"))]


def test_reconcile_repairs_a_web_process_killed_between_publish_and_redis_update(
    cache_redis, capsys
):
    key = new_key()
    services.counter_get(key=key)
    killed = str(uuid.uuid4())  # published, never bumped
    apply_now((killed, key, 5))  # the worker applied it: tombstone left for the bump
    assert services.counter_get(key=key).value == 5
    assert cache_redis.hexists(cache.hash_key(key), f"a:{killed}")
    # Drift of another kind: a pending entry whose delta the ledger shows as applied.
    counted_twice = str(uuid.uuid4())
    apply_now((counted_twice, key, 2))
    cache_redis.hset(cache.hash_key(key), f"d:{counted_twice}", 2)
    cache_redis.hincrby(cache.hash_key(key), "pending", 2)
    assert services.counter_get(key=key).value == 9  # 7 + 2 counted twice

    repairs = services.counter_reconcile(tombstone_age_s=0)
    assert [(r.key, r.before, r.after) for r in repairs] == [(key, 9, 7)]
    assert not cache_redis.hexists(cache.hash_key(key), f"a:{killed}")
    assert services.counter_get(key=key) == services.CounterReading(7, 7, 0)
    call_command("counters", "reconcile")
    assert "reconciled: 0 counters repaired." in capsys.readouterr().out


def test_ledger_prune_keeps_recent_ids_and_deletes_old_ones():
    key = new_key()
    old, recent = str(uuid.uuid4()), str(uuid.uuid4())
    apply_now((old, key, 1), (recent, key, 1))
    AppliedDelta.objects.filter(delta_id=old).update(applied_at=timezone.now() - timedelta(days=8))
    assert services.ledger_prune(older_than_s=7 * 24 * 3600) == 1
    assert list(AppliedDelta.objects.values_list("delta_id", flat=True)) == [uuid.UUID(recent)]
    assert Counter.objects.get(key=key).value == 2  # pruning the ledger never touches counters


def test_ledger_retention_shorter_than_the_redelivery_window_fails_the_system_check(settings):
    from django.core.management.base import SystemCheckError

    settings.COUNTER_LEDGER_RETENTION_S = 600
    with pytest.raises(SystemCheckError, match="COUNTER_LEDGER_RETENTION_S"):
        call_command("check")


def test_ephemeral_counters_live_in_redis_only(cache_redis):
    assert services.counter_incr(key="active_readers:x", amount=2).value == 2
    assert services.counter_get(key="active_readers:x").value == 2
    assert not Counter.objects.exists()
    cache_redis.flushdb()  # not FLUSHALL: other test processes use other databases
    assert services.counter_get(key="active_readers:x").value == 0  # lossy by design


def test_reconcile_republishes_a_stranded_delta_from_the_broker_record_without_the_cache(
    broker, cache_redis, capsys
):
    """A delta acknowledged whose message the Redis broker lost (between kombu's BRPOP and its
    unacked record): reconcile finds it in the broker's record of published deltas, not in the
    cache (flushed here), and publishes it again under its id; applied, cancelled, dead-lettered
    and recent ones are left alone. RabbitMQ keeps no record and loses no confirmed message."""
    from project.celery import app
    from tasks.inflight import inflight_count, inflight_record

    key = new_key()
    now = time.time()
    stranded, applied, cancelled, dead, recent = (str(uuid.uuid4()) for _ in range(5))
    redis_broker = broker.startswith("redis")
    if redis_broker:
        for delta_id, amount, age in (
            (stranded, 3, 100),
            (applied, 1, 100),
            (cancelled, 5, 100),
            (dead, 2, 100),
            (recent, 4, 0),
        ):
            inflight_record(
                app=app,
                queue="counters",
                message_id=delta_id,
                payload={"key": key, "amount": amount},
                now=now - age,
            )
    apply_now((applied, key, 1), (cancelled, key, 0))
    DeadLetter.objects.create(
        task_id=dead,
        task_name=services.APPLY_TASK,
        queue="counters",
        args=[dead, key, 2],
        reason=DeadLetter.Reason.PERMANENT_ERROR,
        attempts=1,
        deliveries=1,
        broker="redis",
        first_failed_at=timezone.now(),
        last_failed_at=timezone.now(),
    )
    cache_redis.flushdb()  # not FLUSHALL: other test processes use other databases

    call_command("counters", "reconcile", "--republish-after", "50")
    out = capsys.readouterr().out
    messages = read_queue(broker, "counters")
    if not redis_broker:
        assert "re-published" not in out and messages == []
        return
    assert "re-published 1 stranded deltas" in out
    assert [(m.headers["id"], m.headers["argsrepr"]) for m in messages] == [
        (stranded, repr([stranded, key, 3]))
    ]
    # Applied and cancelled ones are forgotten; the stranded one is recorded again (now); the
    # recent one stays, and so does the dead letter's (a replay makes it live again).
    assert inflight_count(app=app, queue="counters") == 3
    call_command("counters", "reconcile", "--republish-after", "50")
    assert "re-published" not in capsys.readouterr().out


def test_reconcile_refuses_a_negative_republish_age(capsys):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="0 or more"):
        call_command("counters", "reconcile", "--republish-after", "-1")


@pytest.mark.parametrize("order", ["applied-then-refilled", "refilled-then-applied"])
def test_a_late_bump_after_an_eviction_and_a_refill_is_not_counted_twice(
    broker, cache_redis, settings, order
):
    """Web publishes X; before its Redis update the hash is evicted, the worker commits X, and a
    reader refills the hash from PostgreSQL (in either order). The late bump must not add X again
    as pending: the hash holds it already (or will, through the apply's tombstone)."""
    from counters import faults

    key = new_key()
    services.counter_get(key=key)

    def evicted_applied_refilled(*, keys, delta_id):
        cache_redis.delete(cache.hash_key(key))  # evicted
        if order == "applied-then-refilled":
            apply_now((delta_id, key, 3))  # the worker's apply finds no hash
            assert services.counter_get(key=key).value == 3  # the refill holds X
        else:
            assert services.counter_get(key=key).value == 0  # the refill does not
            apply_now((delta_id, key, 3))  # the apply leaves a tombstone for the bump

    settings.COUNTER_FAULTS = {"before_bump": [key]}
    faults.HOOKS["before_bump"] = evicted_applied_refilled
    try:
        increment = services.counter_incr(key=key, amount=3)
    finally:
        faults.HOOKS.pop("before_bump")
    read_queue(broker, "counters")  # the published copy (applied above already)

    assert increment.value == 3
    assert services.counter_get(key=key) == services.CounterReading(3, 3, 0)
    fields = cache_redis.hgetall(cache.hash_key(key))
    assert not [f for f in fields if f.startswith((b"d:", b"a:"))], fields


def test_reconcile_stops_counting_a_dead_lettered_delta_as_pending(cache_redis):
    key = new_key()
    services.counter_get(key=key)
    dead = str(uuid.uuid4())
    cache.bump(key=key, delta_id=dead, amount=2, now=time.time())
    DeadLetter.objects.create(
        task_id=dead,
        task_name=services.APPLY_TASK,
        queue="counters",
        args=[dead, key, 2],
        reason=DeadLetter.Reason.PERMANENT_ERROR,
        attempts=1,
        deliveries=1,
        broker="redis",
        first_failed_at=timezone.now(),
        last_failed_at=timezone.now(),
    )
    assert [(r.key, r.before, r.after) for r in services.counter_reconcile()] == [(key, 2, 0)]
    assert services.counter_get(key=key) == services.CounterReading(0, 0, 0)
