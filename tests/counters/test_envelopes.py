"""Envelopes (tasks/envelopes.py): many deltas in one message, each applied exactly once, a poison
or malformed delta dead-lettered alone, a redelivered envelope's deltas published again one by
one. Real worker subprocesses, both brokers."""

import threading
import time
import uuid

import pytest
from django.core.management import call_command
from django.db import connection

from counters import services
from counters.models import AppliedDelta, Counter
from counters.services import APPLY_TASK
from counters.services.publish import _send
from tasks import metrics
from tasks.app import app
from tasks.envelopes import ENVELOPE_KWARG
from tasks.models import DeadLetter

from ..helpers import counters_worker, held_after_stop, read_queue, run_together, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def durable(key: str) -> int:
    row = Counter.objects.filter(key=key).first()
    return row.value if row else 0


def envelope(*deltas: tuple[str, int]) -> tuple[list[list], list[str]]:
    """An envelope's items for (key, amount) pairs, and their delta ids."""
    items = [[str(uuid.uuid4()), key, amount, time.time()] for key, amount in deltas]
    return items, [item[0] for item in items]


def envelope_count() -> tuple[float, float]:
    """(envelopes, deltas) this process has published so far (the envelope-size histogram)."""
    samples = {s.name: s.value for s in metrics.envelope_size.collect()[0].samples}
    return samples["envelope_size_count"], samples["envelope_size_sum"]


def test_concurrent_increments_share_envelopes_and_each_is_applied_once(worker):
    key = f"article_views:env-{uuid.uuid4().hex[:8]}"
    before = envelope_count()
    ids: list[str] = []

    def client() -> None:
        try:
            for _ in range(25):
                ids.append(services.counter_incr(key=key).delta_id)
        finally:
            connection.close()  # this thread's own connection (a cache miss reads the row)

    threads = [threading.Thread(target=client) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wait_for(lambda: durable(key) == 400, what="every increment applied")
    after = envelope_count()
    envelopes, deltas = after[0] - before[0], after[1] - before[1]
    assert deltas == 400
    assert envelopes < 400  # increments queued behind a confirm shared an envelope
    assert AppliedDelta.objects.filter(key=key).count() == 400 == len(set(ids))
    assert services.counter_get(key=key).value == 400
    assert not DeadLetter.objects.exists()


@pytest.mark.parametrize("envelope_bump", [True, False], ids=["envelope-bump", "request-bump"])
def test_each_increment_answers_with_its_own_value_when_its_envelope_bumps_the_cache(
    worker, cache_redis, settings, envelope_bump
):
    """Sixteen increments released together on sixteen fresh keys, amounts 1..16: they share
    envelopes, and with COUNTER_ENVELOPE_BUMP the envelope's thread records them in the cache in one
    pipeline. Each caller must get its own key's value back, and each hash hold its own delta
    as pending until it is applied."""
    from counters import cache

    settings.COUNTER_ENVELOPE_BUMP = envelope_bump
    run = uuid.uuid4().hex[:8]
    keys = [f"article_views:bump-{run}-{n}" for n in range(1, 17)]
    for key in keys:
        services.counter_get(key=key)  # the hashes exist: the bump records, no refill,
        cache_redis.hset(cache.hash_key(key), "filled_at", 0)  # and none within FILL_GRACE_S
    values = {}

    def client(key: str, amount: int) -> None:
        values[key] = services.counter_incr(key=key, amount=amount).value

    run_together([lambda k=k, n=n: client(k, n) for n, k in enumerate(keys, 1)])
    assert values == {key: n for n, key in enumerate(keys, 1)}
    for n, key in enumerate(keys, 1):
        reading = cache.read_many(keys=[key])[key]
        assert reading is not None and reading.value == n  # durable + pending: its own delta
    wait_for(lambda: all(durable(k) == n for n, k in enumerate(keys, 1)), what="all applied")
    assert {k: services.counter_get(key=k).value for k in keys} == values


@pytest.mark.parametrize("envelope_bump", [True, False], ids=["envelope-bump", "request-bump"])
def test_with_the_cache_unreachable_each_increment_is_counted_and_answered_from_postgresql(
    worker, settings, envelope_bump
):
    """The cache update fails (connection refused), the envelope's or each request's: every
    caller is still counted (its delta is confirmed) and answered with the durable value plus its
    own amount."""
    from project.devservers import free_port

    settings.COUNTER_ENVELOPE_BUMP = envelope_bump

    key = f"article_views:nocache-{uuid.uuid4().hex[:8]}"
    cache_settings = {**settings.CACHES["default"]}
    cache_settings["LOCATION"] = f"redis://127.0.0.1:{free_port()}/0"
    settings.CACHES = {**settings.CACHES, "default": cache_settings}
    values = []
    run_together([lambda: values.append(services.counter_incr(key=key, amount=2).value)] * 8)
    assert len(values) == 8 and all(v is not None and v >= 2 and v % 2 == 0 for v in values)
    wait_for(lambda: durable(key) == 16, what="all eight applied")
    assert AppliedDelta.objects.filter(key=key).count() == 8


def test_a_poison_delta_is_dead_lettered_alone_and_its_envelope_mates_applied(
    broker, database_url, cache_redis, worker_log_dir
):
    innocent, poison = "article_views:env-innocent", "article_views:env-poison"
    items, (first, bad, last) = envelope((innocent, 1), (poison, 3), (innocent, 2))
    with counters_worker(
        broker_url=broker,
        database_url=database_url,
        log_dir=worker_log_dir,
        env={"COUNTER_FAULTS": f"raise={poison}"},
    ) as running:
        _send(str(uuid.uuid4()), items)
        letter = wait_for(lambda: DeadLetter.objects.first(), what="the dead letter")
        wait_for(lambda: durable(innocent) == 3, what="the innocent deltas applied")
        assert held_after_stop(running, broker, "counters") == 0  # the envelope acknowledged
    assert (letter.task_id, letter.args) == (bad, [bad, poison, 3])
    assert letter.reason == DeadLetter.Reason.PERMANENT_ERROR
    assert [m.headers["id"] for m in read_queue(broker, "dead_letter")] == [bad]
    assert set(AppliedDelta.objects.values_list("delta_id", flat=True)) == {
        uuid.UUID(first),
        uuid.UUID(last),
    }
    # Fixed: the replay publishes the delta alone, under its own id, and it is applied once.
    with counters_worker(
        broker_url=broker, database_url=database_url, log_dir=worker_log_dir
    ) as running:
        call_command("deadletters", "replay", str(letter.pk))
        wait_for(lambda: durable(poison) == 3, what="the replayed delta")
        assert held_after_stop(running, broker, "counters") == 0
    assert AppliedDelta.objects.filter(key=poison).count() == 1


def test_a_redelivered_envelope_goes_alone_and_only_its_killer_is_dead_lettered(
    broker, database_url, cache_redis, worker_log_dir
):
    """A delta that kills its worker takes its whole envelope down twice (a second delivery is
    applied whole); the envelope comes back again and each of its deltas is published on its
    own, so the innocent ones are applied and only the killer reaches the delivery limit."""
    innocent, killer = "article_views:env-survivor", "article_views:env-killer"
    items, (_, bad, _) = envelope((innocent, 1), (killer, 5), (innocent, 1))
    with counters_worker(
        broker_url=broker,
        database_url=database_url,
        log_dir=worker_log_dir,
        env={"COUNTER_FAULTS": f"kill_before_commit={killer}", "TASK_MAX_DELIVERIES": "2"},
    ) as running:
        _send(str(uuid.uuid4()), items)
        letter = wait_for(lambda: DeadLetter.objects.first(), timeout=120, what="the dead letter")
        wait_for(lambda: durable(innocent) == 2, what="the innocent deltas applied")
        assert held_after_stop(running, broker, "counters") == 0
    assert (letter.task_id, letter.reason) == (bad, DeadLetter.Reason.DELIVERY_LIMIT)
    assert DeadLetter.objects.count() == 1
    assert durable(killer) == 0
    assert AppliedDelta.objects.filter(key=innocent).count() == 2


def test_malformed_items_are_dead_lettered_alone_and_the_rest_applied(
    broker, database_url, cache_redis, worker_log_dir
):
    key = "article_views:env-mixed"
    items, (good,) = envelope((key, 4))
    items += [["not-a-uuid", key, 1, time.time()], 42, [str(uuid.uuid4()), "nope:x", 1, 0.0]]
    with counters_worker(
        broker_url=broker, database_url=database_url, log_dir=worker_log_dir
    ) as running:
        # Not through the publisher (which never builds such an envelope): as any client could.
        app.send_task(APPLY_TASK, kwargs={ENVELOPE_KWARG: items}, task_id=str(uuid.uuid4()))
        wait_for(lambda: DeadLetter.objects.count() == 3, what="three dead letters")
        wait_for(lambda: durable(key) == 4, what="the good delta applied")
        assert held_after_stop(running, broker, "counters") == 0
    assert set(DeadLetter.objects.values_list("reason", flat=True)) == {
        DeadLetter.Reason.PERMANENT_ERROR
    }
    assert list(AppliedDelta.objects.values_list("delta_id", flat=True)) == [uuid.UUID(good)]
