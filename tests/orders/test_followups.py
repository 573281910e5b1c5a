"""Follow-up tasks of an order run on real workers under the shared delivery policy."""

import re
import uuid

import pytest

from orders import services
from tasks.models import DeadLetter

from ..helpers import (
    celery_worker,
    held_after_stop,
    outbox_relay,
    publishing_to,
    wait_for,
)

pytestmark = pytest.mark.django_db(transaction=True)
MAIL_ENV = {"EMAIL_BACKEND": "tests.mail.FlakyBackend", "TASK_RETRY_BACKOFF_BASE": "0.5"}


def test_confirmation_mail_retries_while_the_mail_server_is_down_then_is_sent(
    broker_url, database_url, cache_redis, worker_log_dir, account, product
):
    cache_redis.set("test:mail-down", 1)
    with (
        publishing_to(broker_url),
        celery_worker(
            broker_url=broker_url,
            database_url=database_url,
            log_dir=worker_log_dir,
            queues="orders",
            env=MAIL_ENV,
        ) as worker,
        outbox_relay(broker_url=broker_url, database_url=database_url, log_dir=worker_log_dir),
    ):
        order_id = services.order_place(
            account_id=account.pk,
            lines=[{"sku": "mug", "qty": 1}],
            idempotency_key=uuid.uuid4().hex,
        ).body["id"]
        wait_for(
            lambda: int(cache_redis.get("test:mail-failures") or 0) >= 2, what="two failed attempts"
        )
        cache_redis.delete("test:mail-down")
        sent = wait_for(lambda: cache_redis.lrange("test:mail-sent", 0, -1), what="the mail")
        assert held_after_stop(worker, broker_url, "orders") == 0
    assert sent == [f"Order {order_id} placed".encode()]
    assert not DeadLetter.objects.exists()


def test_confirmation_for_an_order_that_does_not_exist_dead_letters_at_once(
    broker_url, database_url, cache_redis, worker_log_dir
):
    from project.celery import app

    with (
        publishing_to(broker_url),
        celery_worker(
            broker_url=broker_url,
            database_url=database_url,
            log_dir=worker_log_dir,
            queues="orders",
            env=MAIL_ENV,
        ) as worker,
    ):
        task_id = app.send_task("orders.send_confirmation", args=[424242]).id
        letter = wait_for(
            lambda: DeadLetter.objects.filter(task_id=task_id).first(), what="the dead letter"
        )
        assert held_after_stop(worker, broker_url, "orders") == 0
    assert letter.reason == DeadLetter.Reason.PERMANENT_ERROR
    assert letter.attempts == 1 and letter.queue == "orders"
    assert "DoesNotExist" in letter.exception


def _runs(worker) -> int:
    return len(re.findall(r"orders\.send_confirmation\[\S+\] succeeded", worker.output()))


def test_a_confirmation_task_that_runs_again_mails_once(
    broker_url, database_url, cache_redis, worker_log_dir, account, product
):
    """The order's own publish and two more copies of its task (a redelivery, a duplicate
    publish), on two worker processes: one mail, one sent-marker."""
    from orders.models import OrderConfirmation
    from project.celery import app

    with (
        publishing_to(broker_url),
        celery_worker(
            broker_url=broker_url,
            database_url=database_url,
            log_dir=worker_log_dir,
            queues="orders",
            env=MAIL_ENV,
            concurrency=2,
        ) as worker,
        outbox_relay(broker_url=broker_url, database_url=database_url, log_dir=worker_log_dir),
    ):
        order_id = services.order_place(
            account_id=account.pk,
            lines=[{"sku": "mug", "qty": 1}],
            idempotency_key=uuid.uuid4().hex,
        ).body["id"]
        for _ in range(2):
            app.send_task("orders.send_confirmation", args=[order_id])
        wait_for(lambda: _runs(worker) == 3, what="the three runs")
        assert held_after_stop(worker, broker_url, "orders") == 0
        wait_for(
            lambda: OrderConfirmation.objects.filter(order_id=order_id).exists(),
            what="the sent-marker",
        )
    assert cache_redis.lrange("test:mail-sent", 0, -1) == [f"Order {order_id} placed".encode()]
    assert not DeadLetter.objects.exists()
