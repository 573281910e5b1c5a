"""The transactional outbox and its relay, on real relay and worker subprocesses, both brokers."""

import os
import signal
import socket
import subprocess
import sys
import uuid
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
from django.db import transaction
from django.utils import timezone

from counters.models import AppliedDelta, Counter
from counters.services import counter_incr
from tasks.models import OutboxMessage
from tasks.outbox import CHANNEL, outbox_prune, outbox_stats
from tests.worker_tasks import record

from ..helpers import (
    BASE_DIR,
    celery_worker,
    counters_worker,
    held_after_stop,
    outbox_relay,
    wait_for,
)

pytestmark = pytest.mark.django_db(transaction=True)


def _unreachable(broker_url: str) -> str:
    """The same kind of broker URL, on a port where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    parts = urlsplit(broker_url)
    credentials = f"{parts.username}:{parts.password}@" if parts.username else ""
    return parts._replace(netloc=f"{credentials}127.0.0.1:{port}").geturl()


def _unsent() -> int:
    return OutboxMessage.objects.filter(sent_at__isnull=True).count()


def _done(cache_redis, marker: str) -> list[str]:
    return [raw.decode() for raw in cache_redis.lrange(f"test:done:{marker}", 0, -1)]


def test_a_rolled_back_transaction_leaves_nothing_to_publish():
    with pytest.raises(RuntimeError), transaction.atomic():
        record.delay_on_commit("never")
        counter_incr(key="article_views:rolled-back", amount=5)
        assert OutboxMessage.objects.count() == 2
        raise RuntimeError("the caller changed its mind")
    assert not OutboxMessage.objects.exists()


def test_an_option_the_relay_cannot_honour_is_refused_and_writes_nothing():
    with pytest.raises(TypeError, match="countdown"), transaction.atomic():
        record.apply_async_on_commit(("m",), countdown=5)
    assert not OutboxMessage.objects.exists()


def test_two_relays_publish_every_committed_task_exactly_once(
    broker_url, database_url, cache_redis, worker_log_dir
):
    marker = uuid.uuid4().hex
    ids = []
    for _ in range(30):
        with transaction.atomic():
            ids += [record.delay_on_commit(marker) for _ in range(10)]
    small_batches = {"OUTBOX_BATCH_SIZE": "7"}  # many passes, so the relays contend for rows
    with (
        celery_worker(
            broker_url=broker_url,
            database_url=database_url,
            log_dir=worker_log_dir,
            queues="default",
            concurrency=2,
        ) as worker,
        outbox_relay(
            broker_url=broker_url,
            database_url=database_url,
            log_dir=worker_log_dir,
            env=small_batches,
        ),
        outbox_relay(
            broker_url=broker_url,
            database_url=database_url,
            log_dir=worker_log_dir,
            env=small_batches,
        ),
    ):
        wait_for(lambda: len(_done(cache_redis, marker)) >= len(ids), what="every task run")
        wait_for(lambda: _unsent() == 0, what="every row marked sent")
        assert held_after_stop(worker, broker_url, "default") == 0
    done = _done(cache_redis, marker)
    assert sorted(done) == sorted(ids)  # each once: a row published twice would run twice
    assert OutboxMessage.objects.filter(attempts__gt=0).count() == 0


def test_a_commit_wakes_an_idle_relay_at_once(broker_url, database_url, worker_log_dir):
    """With polls an hour apart, only the NOTIFY of the commit (a trigger on the table) can get
    the row published: the normal commit-to-publish path never waits for a poll."""
    hourly = {"OUTBOX_POLL_INTERVAL_S": "3600"}
    with outbox_relay(
        broker_url=broker_url, database_url=database_url, log_dir=worker_log_dir, env=hourly
    ):
        # Idle and listening: its first pass is over (nothing to do) and it waits on LISTEN.
        wait_for(_relay_listening, what="the relay to LISTEN")
        with transaction.atomic():
            message_id = record.delay_on_commit(uuid.uuid4().hex)
        wait_for(lambda: _unsent() == 0, what="the row published without a poll")
    assert OutboxMessage.objects.get(message_id=message_id).attempts == 0


def _relay_listening() -> bool:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE query = %s",
            [f"LISTEN {CHANNEL}"],
        )
        return cursor.fetchone()[0] > 0


def test_rows_committed_while_the_broker_is_unreachable_wait_then_are_published(
    broker_url, database_url, cache_redis, worker_log_dir
):
    marker = uuid.uuid4().hex
    with outbox_relay(
        broker_url=_unreachable(broker_url), database_url=database_url, log_dir=worker_log_dir
    ) as relay:
        ids, amounts = [], [3, 4, 5]
        for amount in amounts:
            with transaction.atomic():
                ids.append(record.delay_on_commit(marker))
                counter_incr(key="article_views:outbox-down", amount=amount)
        wait_for(
            lambda: OutboxMessage.objects.filter(attempts__gt=0).exists(), what="a failed publish"
        )
        stats = outbox_stats()
        assert relay.process.poll() is None  # it keeps trying; it does not exit
    assert stats["waiting"] == 6 and stats["retrying"] >= 1 and stats["oldest_age_s"] > 0
    assert len(stats["relays_alive"]) == 1
    failed = OutboxMessage.objects.filter(attempts__gt=0).first()
    assert failed.sent_at is None and failed.last_error
    assert failed.available_at > failed.created_at  # backed off
    with (
        celery_worker(
            broker_url=broker_url,
            database_url=database_url,
            log_dir=worker_log_dir,
            queues="default",
        ) as worker,
        counters_worker(broker_url=broker_url, database_url=database_url, log_dir=worker_log_dir),
        outbox_relay(broker_url=broker_url, database_url=database_url, log_dir=worker_log_dir),
    ):
        wait_for(
            lambda: len(_done(cache_redis, marker)) == len(ids), what="the tasks run", timeout=60
        )
        wait_for(
            lambda: Counter.objects.filter(key="article_views:outbox-down", value=12).exists(),
            what="the increments applied",
            timeout=60,
        )
        assert held_after_stop(worker, broker_url, "default") == 0
    assert sorted(_done(cache_redis, marker)) == sorted(ids)
    assert _unsent() == 0


def test_a_relay_killed_between_publish_and_mark_is_absorbed_by_the_ledger(
    broker_url, database_url, cache_redis, worker_log_dir
):
    key = "article_views:outbox-kill"
    returned = []
    for amount in range(1, 21):
        with transaction.atomic():
            returned.append(counter_incr(key=key, amount=amount).delta_id)
    cache_redis.set("fault:budget:relay_kill", 1)
    kill = {"OUTBOX_FAULT_KILL_AFTER": "5"}
    with counters_worker(
        broker_url=broker_url, database_url=database_url, log_dir=worker_log_dir
    ) as worker:
        with outbox_relay(
            broker_url=broker_url,
            database_url=database_url,
            log_dir=worker_log_dir,
            env=kill,
            may_exit=True,
        ) as first:
            assert first.process.wait(60) == -signal.SIGKILL
        assert _unsent() == 20  # five were published, none was marked
        with outbox_relay(
            broker_url=broker_url, database_url=database_url, log_dir=worker_log_dir, env=kill
        ):
            wait_for(lambda: _unsent() == 0, what="every row sent")
            wait_for(
                lambda: AppliedDelta.objects.filter(key=key).count() == 20,
                what="every delta applied",
            )
            wait_for(lambda: _batches(worker.output()) == (25, 20), what="25 received, 20 new")
    assert sorted(
        AppliedDelta.objects.filter(key=key).values_list("delta_id", flat=True)
    ) == sorted(uuid.UUID(d) for d in returned)
    assert Counter.objects.get(key=key).value == sum(range(1, 21))


def _batches(log: str) -> tuple[int, int]:
    """Deltas received and newly applied, summed over the worker's "batch committed" lines (a
    copy in the same batch as its original, or in a later one, is received but not new)."""
    received = new = 0
    for line in log.splitlines():
        if "batch committed:" in line:
            counts = line.split("batch committed:")[1].split(",")
            received += int(counts[0].split()[0])
            new += int(counts[1].split()[0])
    return received, new


def test_the_health_check_passes_only_while_a_relay_on_this_host_reports(
    broker_url, database_url, worker_log_dir
):
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "project.settings.test",
        "DATABASE_URL": database_url,
        "CELERY_BROKER_URL": broker_url,
    }

    def check() -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "manage.py", "outbox_relay", "--check"],
            cwd=BASE_DIR,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    failed = check()
    assert failed.returncode != 0 and "no outbox relay on" in failed.stderr
    assert "Traceback" not in failed.stderr
    with outbox_relay(broker_url=broker_url, database_url=database_url, log_dir=worker_log_dir):
        wait_for(lambda: outbox_stats()["relays_alive"], what="the first heartbeat")
        passed = check()
    assert passed.returncode == 0 and passed.stdout.startswith("ok: ")


def test_pruning_deletes_only_rows_sent_before_the_retention():
    now = timezone.now()

    def row(sent_at):
        return OutboxMessage.objects.create(
            message_id=uuid.uuid4(),
            task_name="tests.record",
            queue="default",
            args=["p"],
            created_at=now - timedelta(days=3),
            available_at=now,
            sent_at=sent_at,
        )

    old, recent, unsent = row(now - timedelta(days=2)), row(now - timedelta(minutes=5)), row(None)
    assert outbox_prune(older_than_s=24 * 3600) == 1
    assert set(OutboxMessage.objects.values_list("pk", flat=True)) == {recent.pk, unsent.pk}
    assert not OutboxMessage.objects.filter(pk=old.pk).exists()
