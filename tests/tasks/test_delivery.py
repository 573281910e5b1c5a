"""The delivery policy with real worker subprocesses, on both brokers."""

import itertools
import os
import signal
import uuid

import pytest

from project.celery import app as celery_app
from tasks.models import DeadLetter

from ..helpers import celery_worker, held_after_stop, queue_depth, read_queue, wait_for

RETRY_ENV = {
    "TASK_RETRY_BACKOFF_BASE": "1.0",
    "TASK_RETRY_BACKOFF_MAX": "4.0",
    "TASK_MAX_RETRIES": "3",
    "TASK_MAX_DELIVERIES": "3",
}


def send(broker_url: str, name: str, *args) -> str:
    with celery_app.connection_for_write(broker_url) as conn:
        return celery_app.send_task(name, args=list(args), connection=conn).id


def dead_letter(task_id: str) -> DeadLetter | None:
    return DeadLetter.objects.filter(task_id=task_id).first()


def dead_letter_queue_holds(broker_url: str, task_id: str) -> None:
    """Exactly one message, this task's, ends in the broker's dead-letter queue."""
    wait_for(lambda: queue_depth(broker_url, "dead_letter") >= 1, what="the dead-letter message")
    messages = read_queue(broker_url, "dead_letter")
    assert [m.headers["id"] for m in messages] == [task_id]


@pytest.mark.django_db(transaction=True)
def test_transient_error_retries_with_growing_delays_then_dead_letters(
    broker_url, database_url, cache_redis, worker_log_dir
):
    marker = uuid.uuid4().hex
    with celery_worker(
        broker_url=broker_url, database_url=database_url, log_dir=worker_log_dir, env=RETRY_ENV
    ) as worker:
        task_id = send(broker_url, "tests.always_transient", marker)
        row = wait_for(lambda: dead_letter(task_id), timeout=60, what="the DeadLetter row")
        assert held_after_stop(worker, broker_url, "default") == 0

    assert row.reason == DeadLetter.Reason.RETRIES_EXHAUSTED
    assert row.attempts == 4  # the first run and 3 retries
    assert row.task_name == "tests.always_transient"
    assert row.args == [marker]
    assert row.queue == "default"
    assert row.broker == ("redis" if broker_url.startswith("redis") else "amqp")
    assert "OperationalError: simulated: database unreachable" in row.exception
    assert "Traceback" in row.traceback
    assert row.first_failed_at == row.last_failed_at
    assert DeadLetter.objects.count() == 1

    times = [float(t) for t in cache_redis.lrange(f"test:attempts:{marker}", 0, -1)]
    assert len(times) == 4
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # Retry n waits in [base * 2**n / 2, base * 2**n] (capped at 4 s), plus delivery latency.
    for n, gap in enumerate(gaps):
        assert gap >= 0.5 * 2**n - 0.05, gaps
    assert gaps[2] > gaps[0], gaps
    dead_letter_queue_holds(broker_url, task_id)
    leftover = read_queue(broker_url, "default")
    assert leftover == [], [(m.headers["task"], m.headers["id"], m.delivery_info) for m in leftover]


@pytest.mark.django_db(transaction=True)
def test_permanent_error_dead_letters_at_once_without_retrying(
    broker_url, database_url, cache_redis, worker_log_dir
):
    marker = uuid.uuid4().hex
    with celery_worker(
        broker_url=broker_url, database_url=database_url, log_dir=worker_log_dir, env=RETRY_ENV
    ) as worker:
        task_id = send(broker_url, "tests.always_permanent", marker)
        row = wait_for(lambda: dead_letter(task_id), what="the DeadLetter row")
        # A task sent after it on the same single-process worker has run: the worker is past it.
        sentinel = uuid.uuid4().hex
        send(broker_url, "tests.record", sentinel)
        wait_for(lambda: cache_redis.llen(f"test:done:{sentinel}"), what="the sentinel task")
        assert held_after_stop(worker, broker_url, "default") == 0

    assert row.reason == DeadLetter.Reason.PERMANENT_ERROR
    assert row.attempts == 1
    assert "ValueError: simulated: malformed payload" in row.exception
    assert cache_redis.llen(f"test:attempts:{marker}") == 1
    dead_letter_queue_holds(broker_url, task_id)
    leftover = read_queue(broker_url, "default")
    assert leftover == [], [(m.headers["task"], m.headers["id"], m.delivery_info) for m in leftover]


@pytest.mark.django_db(transaction=True)
def test_a_database_connection_the_server_killed_is_replaced_after_one_retry(
    broker_url, database_url, cache_redis, worker_log_dir
):
    """Connections outlive tasks (CELERY_DB_REUSE_MAX): one PostgreSQL terminated between tasks
    fails the next task once (transient: retried), is closed after it, and the retry reconnects
    instead of failing the same way until the task is dead-lettered."""
    from django.db import connection

    def backend(marker: str) -> int:
        send(broker_url, "tests.database_backend", marker)
        key = f"test:done:{marker}"
        return int(wait_for(lambda: cache_redis.lindex(key, 0), timeout=30, what=marker))

    with celery_worker(
        broker_url=broker_url, database_url=database_url, log_dir=worker_log_dir, env=RETRY_ENV
    ):
        first = backend(uuid.uuid4().hex)
        assert backend(uuid.uuid4().hex) == first  # kept across tasks
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [first])
        after = backend(uuid.uuid4().hex)

    assert after != first
    assert not DeadLetter.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_worker_child_killed_mid_task_redelivers_and_runs_again(
    broker_url, database_url, cache_redis, worker_log_dir
):
    marker = uuid.uuid4().hex
    with celery_worker(
        broker_url=broker_url, database_url=database_url, log_dir=worker_log_dir
    ) as worker:
        task_id = send(broker_url, "tests.block_until_released", marker)
        started = f"test:started:{marker}"
        first_pid = int(wait_for(lambda: cache_redis.lindex(started, 0), what="the first run"))
        os.kill(first_pid, signal.SIGKILL)

        second_pid = int(wait_for(lambda: cache_redis.lindex(started, 1), what="a redelivery"))
        cache_redis.set(f"test:release:{marker}", 1)
        wait_for(lambda: cache_redis.llen(f"test:done:{marker}"), what="the task to finish")
        assert held_after_stop(worker, broker_url, "default") == 0

    assert second_pid != first_pid
    assert cache_redis.llen(started) == 2
    assert [int(pid) for pid in cache_redis.lrange(f"test:done:{marker}", 0, -1)] == [second_pid]
    assert not DeadLetter.objects.filter(task_id=task_id).exists()
    leftover = read_queue(broker_url, "default")
    assert leftover == [], [(m.headers["task"], m.headers["id"], m.delivery_info) for m in leftover]


@pytest.mark.django_db(transaction=True)
def test_message_that_kills_its_worker_every_time_is_dead_lettered_after_the_delivery_limit(
    broker_url, database_url, cache_redis, worker_log_dir
):
    marker = uuid.uuid4().hex
    with celery_worker(
        broker_url=broker_url, database_url=database_url, log_dir=worker_log_dir, env=RETRY_ENV
    ) as worker:
        task_id = send(broker_url, "tests.kill_own_process", marker)
        row = wait_for(lambda: dead_letter(task_id), timeout=90, what="the DeadLetter row")
        # The worker survives the poison message and still does work.
        sentinel = uuid.uuid4().hex
        send(broker_url, "tests.record", sentinel)
        wait_for(lambda: cache_redis.llen(f"test:done:{sentinel}"), what="an innocent task")
        assert held_after_stop(worker, broker_url, "default") == 0

    assert row.reason == DeadLetter.Reason.DELIVERY_LIMIT
    assert row.deliveries == 4  # TASK_MAX_DELIVERIES=3 deliveries killed a process
    assert cache_redis.llen(f"test:started:{marker}") == 3
    dead_letter_queue_holds(broker_url, task_id)
