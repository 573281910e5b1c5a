"""The counters pipeline's failure handling, with real servers and worker processes: a poison delta
dead-lettered and replayed once, transient database errors retried. Worker kills, cache loss,
eviction, broker restarts and PostgreSQL outages under load are the fault suite's
(tests/faults, `make test-faults`)."""

import pytest
from django.core.management import call_command

from counters import services
from counters.models import AppliedDelta, Counter
from tasks.models import DeadLetter

from ..helpers import counters_worker, held_after_stop, read_queue, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def durable(key: str) -> int:
    row = Counter.objects.filter(key=key).first()
    return row.value if row else 0


def test_poison_delta_that_raises_is_dead_lettered_others_applied_then_replayed_once(
    broker, database_url, cache_redis, worker_log_dir
):
    poison_key, innocent = "article_views:poison-raise", "article_views:innocent"
    with counters_worker(
        broker_url=broker,
        database_url=database_url,
        log_dir=worker_log_dir,
        env={"COUNTER_FAULTS": f"raise={poison_key}"},
    ) as running:
        for _ in range(5):
            services.counter_incr(key=innocent)
        services.counter_incr(key=poison_key, amount=3)
        for _ in range(5):
            services.counter_incr(key=innocent)
        letter = wait_for(lambda: DeadLetter.objects.first(), what="the dead letter")
        wait_for(lambda: durable(innocent) == 10, what="the innocent deltas applied")
        assert held_after_stop(running, broker, "counters") == 0
    assert letter.reason == DeadLetter.Reason.PERMANENT_ERROR
    assert "InjectedFault" in letter.exception and "Traceback" in letter.traceback
    assert letter.task_name == "counters.apply_deltas" and letter.args[1:] == [poison_key, 3]
    assert durable(innocent) == 10 and durable(poison_key) == 0
    assert [m.headers["id"] for m in read_queue(broker, "dead_letter")] == [letter.task_id]
    # Out of the queue, so no longer pending: reads show what the database holds.
    assert services.counter_get(key=poison_key).value == 0

    # The cause is fixed (no fault any more): replay once, then again.
    with counters_worker(
        broker_url=broker, database_url=database_url, log_dir=worker_log_dir
    ) as running:
        call_command("deadletters", "replay", str(letter.pk))
        wait_for(lambda: durable(poison_key) == 3, what="the replayed delta applied")
        from django.core.management.base import CommandError

        with pytest.raises(CommandError, match="already replayed"):
            call_command("deadletters", "replay", str(letter.pk))
        assert held_after_stop(running, broker, "counters") == 0
    assert durable(poison_key) == 3
    assert AppliedDelta.objects.filter(key=poison_key).count() == 1
    letter.refresh_from_db()
    assert letter.status == DeadLetter.Status.REPLAYED
    assert services.counter_get(key=poison_key).value == 3


def test_database_errors_re_publish_the_batch_with_backoff_and_lose_nothing(
    broker, database_url, cache_redis, worker_log_dir
):
    """The celery-batches trap: a batch whose function fails must not be acknowledged as done.
    Here a transient database error re-publishes the deltas with a countdown; once the database
    is back they are applied, each exactly once."""
    key = "article_views:db-down"
    cache_redis.set("fault:transient", 1)
    with counters_worker(
        broker_url=broker,
        database_url=database_url,
        log_dir=worker_log_dir,
        env={"COUNTER_FAULTS": f"transient={key}", "TASK_RETRY_BACKOFF_BASE": "0.5"},
    ) as running:
        for _ in range(6):
            services.counter_incr(key=key, amount=2)
        wait_for(
            lambda: running.output().count(" retry 2 ") >= 1,
            timeout=60,
            what="retries of the failed batch",
        )
        assert durable(key) == 0
        cache_redis.delete("fault:transient")  # the database is back
        wait_for(lambda: durable(key) == 12, timeout=60, what="the re-published deltas applied")
        assert held_after_stop(running, broker, "counters") == 0
    assert durable(key) == 12
    assert AppliedDelta.objects.filter(key=key).count() == 6
    assert not DeadLetter.objects.exists()
    assert services.counter_get(key=key).value == 12


def replay_from_admin(letter: DeadLetter) -> None:
    from django.contrib.auth import get_user_model
    from django.test import Client

    admin = get_user_model().objects.create_superuser("replayer", "r@example.invalid", "pw")
    client = Client()
    client.force_login(admin)
    response = client.post(
        "/admin/tasks/deadletter/", {"action": "replay", "_selected_action": [letter.pk]}
    )
    assert response.status_code == 302


@pytest.mark.parametrize("replay", ["cli", "admin"])
def test_a_delta_that_killed_its_worker_is_replayed_once_after_the_fix(
    broker, database_url, cache_redis, worker_log_dir, replay
):
    """The delivery-limit dead letter of a poison delta, replayed once the cause is fixed, runs
    with a fresh delivery count (the Redis broker keeps counts for days) and is applied once."""
    poison_key = f"article_views:poison-kill-{replay}"
    limits = {"TASK_MAX_DELIVERIES": "2"}
    with counters_worker(
        broker_url=broker,
        database_url=database_url,
        log_dir=worker_log_dir,
        env={"COUNTER_FAULTS": f"kill_before_commit={poison_key}", **limits},
    ) as running:
        services.counter_incr(key=poison_key, amount=4)
        letter = wait_for(lambda: DeadLetter.objects.first(), timeout=120, what="the dead letter")
        assert held_after_stop(running, broker, "counters") == 0
    assert letter.reason == DeadLetter.Reason.DELIVERY_LIMIT
    assert durable(poison_key) == 0

    with counters_worker(
        broker_url=broker, database_url=database_url, log_dir=worker_log_dir, env=limits
    ) as running:
        if replay == "cli":
            call_command("deadletters", "replay", str(letter.pk))
        else:
            replay_from_admin(letter)
        wait_for(lambda: durable(poison_key) == 4, timeout=60, what="the replayed delta")
        assert held_after_stop(running, broker, "counters") == 0
    assert durable(poison_key) == 4
    assert AppliedDelta.objects.filter(key=poison_key).count() == 1
    letter.refresh_from_db()
    assert letter.status == DeadLetter.Status.REPLAYED
    assert DeadLetter.objects.count() == 1
