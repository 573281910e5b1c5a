"""The counters pipeline under the faults of issue 3, with real servers and worker processes:
after each fault, drain, then every acknowledged delta is applied exactly once (G1, G2), reads
stayed within bounds (G5), and nothing vanished (G3)."""

import os
import signal
import time
import uuid

import pytest
from django.core.management import call_command

from counters import services
from counters.models import AppliedDelta
from project import devservers
from tasks.models import DeadLetter

from ..helpers import counters_worker, read_queue, wait_for
from .load import Load, durable

pytestmark = pytest.mark.django_db(transaction=True)


def keys(prefix: str, n: int = 4) -> list[str]:
    run = uuid.uuid4().hex[:6]
    return [f"article_views:{prefix}-{run}-{i}" for i in range(n)]


def drain(timeout: float = 120) -> None:
    call_command("counters", "drain", "--timeout", str(timeout))


def assert_exact(load: Load, expected: dict[str, int]) -> None:
    drain()
    for key in load.keys:
        total = expected.get(key, 0)
        assert durable(key) == total, key
        reading = services.counter_get(key=key)
        assert (reading.value, reading.pending) == (total, 0), key
    assert AppliedDelta.objects.count() == sum(1 for _ in AppliedDelta.objects.all())
    assert load.failed == 0
    assert load.read_violations == []
    assert load.reads > 0


def test_worker_children_sigkilled_mid_batch_lose_and_double_nothing(worker):
    load = Load(keys("kill"), per_thread=150)

    def kill_children():
        for _ in range(3):
            time.sleep(0.4)
            for pid in worker.child_pids():
                os.kill(pid, signal.SIGKILL)

    expected = load.run(during=kill_children)
    assert_exact(load, expected)
    assert not DeadLetter.objects.exists()
    assert "WorkerLostError" in worker.output() or "SIGKILL" in worker.output()


def test_cache_flushall_during_load_loses_nothing_and_reads_stay_in_bounds(worker, cache_redis):
    load = Load(keys("flush"), per_thread=150)

    def flush():
        for _ in range(4):
            time.sleep(0.25)
            cache_redis.flushall()

    expected = load.run(during=flush)
    assert_exact(load, expected)


def test_cache_evicting_under_a_small_maxmemory_loses_nothing(
    broker, database_url, worker_log_dir, tmp_path, settings
):
    server = devservers.start_redis(
        root=tmp_path, role="cache", extra=["--maxmemory", "2mb", "--maxmemory-samples", "3"]
    )
    try:
        settings.CACHES = {**settings.CACHES, "default": {**settings.CACHES["default"],
                                                         "LOCATION": server.url}}  # fmt: skip
        from django_redis import get_redis_connection

        small = get_redis_connection("default")
        assert small.connection_pool.connection_kwargs["port"] == int(server.url.split(":")[2][:-2])
        with counters_worker(
            broker_url=broker, database_url=database_url, log_dir=worker_log_dir,
            redis_url=server.url,
        ):  # fmt: skip
            load = Load(keys("evict"), per_thread=150)

            def fill_memory():
                filler = "x" * 20_000
                for i in range(400):
                    small.set(f"filler:{i}", filler)
                    time.sleep(0.002)

            expected = load.run(during=fill_memory)
            evicted = int(small.info("stats")["evicted_keys"])
            assert evicted > 0
            assert_exact(load, expected)
    finally:
        server.stop()


def test_poison_delta_that_raises_is_dead_lettered_others_applied_then_replayed_once(
    broker, database_url, cache_redis, worker_log_dir
):
    poison_key, innocent = "article_views:poison-raise", "article_views:innocent"
    with counters_worker(
        broker_url=broker, database_url=database_url, log_dir=worker_log_dir,
        env={"COUNTER_FAULTS": f"raise={poison_key}"},
    ):  # fmt: skip
        for _ in range(5):
            services.counter_incr(key=innocent)
        services.counter_incr(key=poison_key, amount=3)
        for _ in range(5):
            services.counter_incr(key=innocent)
        letter = wait_for(lambda: DeadLetter.objects.first(), what="the dead letter")
        drain()
    assert letter.reason == DeadLetter.Reason.PERMANENT_ERROR
    assert "InjectedFault" in letter.exception and "Traceback" in letter.traceback
    assert letter.task_name == "counters.apply_deltas" and letter.args[1:] == [poison_key, 3]
    assert durable(innocent) == 10 and durable(poison_key) == 0
    assert [m.headers["id"] for m in read_queue(broker, "dead_letter")] == [letter.task_id]
    # Until applied, the dead-lettered delta still counts as pending in the cache (acknowledged).
    assert services.counter_get(key=poison_key).value == 3

    # The cause is fixed (no fault any more): replay once, then again.
    with counters_worker(broker_url=broker, database_url=database_url, log_dir=worker_log_dir):
        call_command("deadletters", "replay", str(letter.pk))
        drain()
        assert durable(poison_key) == 3
        from django.core.management.base import CommandError

        with pytest.raises(CommandError, match="already replayed"):
            call_command("deadletters", "replay", str(letter.pk))
        drain()
    assert durable(poison_key) == 3
    assert AppliedDelta.objects.filter(key=poison_key).count() == 1
    letter.refresh_from_db()
    assert letter.status == DeadLetter.Status.REPLAYED
    assert services.counter_get(key=poison_key).value == 3


def test_poison_delta_that_kills_its_worker_every_time_is_dead_lettered_after_the_limit(
    broker, database_url, cache_redis, worker_log_dir
):
    poison_key, innocent = "article_views:poison-kill", "article_views:bystander"
    with counters_worker(
        broker_url=broker, database_url=database_url, log_dir=worker_log_dir,
        env={"COUNTER_FAULTS": f"kill_before_commit={poison_key}", "TASK_MAX_DELIVERIES": "3"},
    ):  # fmt: skip
        for _ in range(5):
            services.counter_incr(key=innocent)
        services.counter_incr(key=poison_key, amount=2)
        for _ in range(5):
            services.counter_incr(key=innocent)
        letter = wait_for(lambda: DeadLetter.objects.first(), timeout=120, what="the dead letter")
        drain()
    assert letter.reason == DeadLetter.Reason.DELIVERY_LIMIT
    assert letter.deliveries == 4
    assert durable(innocent) == 10  # the innocent deltas of the poisoned batches got through
    assert durable(poison_key) == 0
    assert [m.headers["id"] for m in read_queue(broker, "dead_letter")] == [letter.task_id]


def test_database_errors_re_publish_the_batch_with_backoff_and_lose_nothing(
    broker, database_url, cache_redis, worker_log_dir
):
    """The celery-batches trap: a batch whose function fails must not be acknowledged as done.
    Here a transient database error re-publishes the deltas with a countdown; once the database
    is back they are applied, each exactly once."""
    key = "article_views:db-down"
    cache_redis.set("fault:transient", 1)
    with counters_worker(
        broker_url=broker, database_url=database_url, log_dir=worker_log_dir,
        env={"COUNTER_FAULTS": f"transient={key}", "TASK_RETRY_BACKOFF_BASE": "0.5"},
    ) as running:  # fmt: skip
        for _ in range(6):
            services.counter_incr(key=key, amount=2)
        wait_for(lambda: running.output().count(" retry 2 ") >= 1, timeout=60,
                 what="retries of the failed batch")  # fmt: skip
        assert durable(key) == 0
        cache_redis.delete("fault:transient")  # the database is back
        drain()
    assert durable(key) == 12
    assert AppliedDelta.objects.filter(key=key).count() == 6
    assert not DeadLetter.objects.exists()
    assert services.counter_get(key=key).value == 12
