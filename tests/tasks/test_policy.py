import itertools

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.db import OperationalError

from project.celery import app as celery_app
from tasks.base import DeliveryTask
from tasks.policy import backoff_delay, is_transient


def test_backoff_grows_exponentially_with_equal_jitter_and_a_cap():
    for attempt in range(12):
        ceiling = min(300.0, 1.0 * 2**attempt)
        low = backoff_delay(attempt=attempt, base=1.0, cap=300.0, rng=lambda: 0.0)
        high = backoff_delay(attempt=attempt, base=1.0, cap=300.0, rng=lambda: 1.0)
        assert (low, high) == (ceiling / 2, ceiling)


def test_backoff_delays_never_shrink_whatever_the_jitter_below_the_cap():
    # The lower half is fixed, so the shortest possible delay of attempt n+1 is the longest of n.
    for attempt, (r1, r2) in itertools.product(range(6), [(0, 1), (1, 0), (0.5, 0.5)]):
        first = backoff_delay(attempt=attempt, base=0.5, cap=60, rng=lambda r=r1: r)
        second = backoff_delay(attempt=attempt + 1, base=0.5, cap=60, rng=lambda r=r2: r)
        assert second >= first


def test_backoff_is_jittered():
    delays = {backoff_delay(attempt=3, base=1.0, cap=300.0) for _ in range(50)}
    assert len(delays) > 40
    assert all(4.0 <= delay <= 8.0 for delay in delays)


def test_only_connection_and_database_errors_are_transient():
    import kombu.exceptions
    import redis.exceptions

    assert is_transient(OperationalError("server closed the connection"))
    assert is_transient(redis.exceptions.ConnectionError("refused"))
    assert is_transient(kombu.exceptions.OperationalError("broker down"))
    assert is_transient(ConnectionRefusedError())
    assert not is_transient(ValueError("bad input"))
    assert not is_transient(KeyError("missing"))


def test_celery_is_configured_for_safe_delivery():
    conf = celery_app.conf
    assert conf.accept_content == ["json"]
    assert conf.task_serializer == conf.result_serializer == conf.event_serializer == "json"
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.task_acks_on_failure_or_timeout is False
    assert conf.worker_prefetch_multiplier == 1
    assert conf.broker_transport_options["confirm_publish"] is True
    timeout = conf.broker_transport_options["visibility_timeout"]
    assert conf.result_backend_transport_options["visibility_timeout"] == timeout
    assert conf.visibility_timeout == timeout
    assert conf.worker_send_task_events and not conf.task_send_sent_event
    assert {q.name for q in conf.task_queues} == {"counters", "orders", "default"}
    for queue in conf.task_queues:
        assert queue.queue_arguments["x-queue-type"] == "quorum"
        assert queue.queue_arguments["x-dead-letter-exchange"] == "dead_letter"
    assert issubclass(celery_app.Task, DeliveryTask)


def test_visibility_timeout_shorter_than_the_longest_retry_fails_the_system_check(settings):
    settings.REDIS_BROKER_VISIBILITY_TIMEOUT = 60
    settings.TASK_RETRY_BACKOFF_MAX = 300
    with pytest.raises(SystemCheckError, match="REDIS_BROKER_VISIBILITY_TIMEOUT"):
        call_command("check")
