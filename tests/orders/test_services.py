"""Critical data on real PostgreSQL and Redis: concurrency, idempotency, cache freshness, and
nothing dispatched or cached by a transaction that rolls back."""

import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Sum

from counters import cache as counter_cache
from orders import cache, selectors, services
from orders.models import Account, Order, Payment, Product
from tasks.models import OutboxMessage

from ..helpers import publishing_to, queue_depth

pytestmark = pytest.mark.django_db(transaction=True)
BASE_DIR = Path(__file__).resolve().parents[2]


def place(account, sku="mug", qty=1, key=None):
    return services.order_place(
        account_id=account.pk,
        lines=[{"sku": sku, "qty": qty}],
        idempotency_key=key or uuid.uuid4().hex,
    )


def test_concurrent_orders_from_threads_and_processes_never_overdraw_or_oversell(
    account, product, broker_url
):
    # 10,000 balance buys 33 mugs at 300, the stock is 20: stock runs out first.
    Product.objects.filter(pk=product.pk).update(stock=20)
    statuses: list[int] = []
    lock = threading.Lock()

    def buyer():
        try:
            for _ in range(6):
                outcome = place(account)
                with lock:
                    statuses.append(outcome.status)
        finally:
            connection.close()

    db = settings.DATABASES["default"]
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "project.settings.test",
        "CELERY_BROKER_URL": broker_url,
        "DATABASE_URL": f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT']}/"
        f"{db['NAME']}",
    }
    with publishing_to(broker_url):
        processes = [
            subprocess.Popen(
                [sys.executable, "-m", "tests.orders.place_orders", str(account.pk), "mug", "6"],
                cwd=BASE_DIR,
                env=env,
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(3)
        ]
        threads = [threading.Thread(target=buyer) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        placed_by_processes = sum(int(p.communicate(timeout=120)[0].strip()) for p in processes)

    account.refresh_from_db()
    product.refresh_from_db()
    placed = statuses.count(201) + placed_by_processes
    assert placed == 20  # 42 attempts, exactly the stock
    assert set(statuses) <= {201, 409}
    assert product.stock == 0 and account.balance == 10_000 - 20 * 300
    payments = Payment.objects.filter(account=account).aggregate(total=Sum("amount"))["total"]
    assert payments == account.balance  # balance = sum of the ledger
    assert Order.objects.filter(account=account).count() == 20
    assert sum(o.total for o in Order.objects.all()) == 10_000 - account.balance


def test_the_same_key_sequentially_returns_the_first_answer_and_creates_nothing(account, product):
    first = place(account, key="k1")
    again = place(account, key="k1")
    assert (first.status, again.status) == (201, 201)
    assert again.body == first.body and again.replayed and not first.replayed
    assert Order.objects.count() == 1
    with pytest.raises(services.IdempotencyConflict):
        place(account, qty=2, key="k1")  # same key, other body
    assert Order.objects.count() == 1


def test_the_same_key_concurrently_creates_one_order(account, product):
    outcomes = []

    def send():
        try:
            outcomes.append(place(account, key="same-key"))
        finally:
            connection.close()

    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(outcomes) == 8
    assert Order.objects.count() == 1
    assert {o.status for o in outcomes} == {201}
    assert all(o.body == outcomes[0].body for o in outcomes)
    assert sum(not o.replayed for o in outcomes) == 1


def test_insufficient_balance_or_stock_is_refused_and_remembered(account, product):
    too_many = place(account, qty=21, key="big")
    assert too_many.status == 409 and "insufficient stock" in too_many.body["error"]
    Product.objects.filter(pk=product.pk).update(stock=1000)
    too_expensive = place(account, qty=40, key="dear")
    assert too_expensive.status == 409 and "insufficient balance" in too_expensive.body["error"]
    assert place(account, qty=40, key="dear").body == too_expensive.body  # the first answer
    account.refresh_from_db()
    assert account.balance == 10_000 and not Order.objects.exists()


def test_cancel_refunds_and_restocks_once(account, product):
    order_id = place(account, qty=3).body["id"]
    first = services.order_cancel(order_id=order_id, idempotency_key="c1")
    assert first.status == 200 and first.body["status"] == "cancelled"
    assert services.order_cancel(order_id=order_id, idempotency_key="c1").body == first.body
    second = services.order_cancel(order_id=order_id, idempotency_key="c2")
    assert second.status == 409
    account.refresh_from_db()
    product.refresh_from_db()
    assert (account.balance, product.stock) == (10_000, 20)
    kinds = list(Payment.objects.filter(account=account).values_list("kind", "amount"))
    assert kinds == [("deposit", 10_000), ("order_debit", -900), ("refund", 900)]


def test_writes_are_cached_after_commit_and_reads_see_the_latest(account, product, cache_redis):
    order_id = place(account).body["id"]
    assert selectors.account_get_cached(account_id=account.pk)["balance"] == 9_700
    assert selectors.order_get_cached(order_id=order_id)["status"] == "placed"
    services.order_cancel(order_id=order_id, idempotency_key="c")
    assert selectors.order_get_cached(order_id=order_id)["status"] == "cancelled"
    assert selectors.account_get_cached(account_id=account.pk)["balance"] == 10_000


def test_the_stale_fill_race_serves_fresh_data(account, product, cache_redis):
    """A reader misses and reads the old row; a writer commits and writes through; then the
    reader's fill arrives. It must not replace the newer version."""
    order_id = place(account).body["id"]
    cache_redis.flushdb()  # not FLUSHALL: other test processes use other databases

    def writer_commits_between_read_and_fill():
        services.order_cancel(order_id=order_id, idempotency_key="race")

    cache.hooks["after_read"] = writer_commits_between_read_and_fill
    try:
        seen_by_racing_reader = selectors.order_get_cached(order_id=order_id)
    finally:
        cache.hooks.clear()
    assert seen_by_racing_reader["status"] == "cancelled"  # refused fill: given the newer copy
    assert selectors.order_get_cached(order_id=order_id)["status"] == "cancelled"


def test_a_hot_miss_sends_one_reader_to_postgresql(account, product, cache_redis):
    order_id = place(account).body["id"]
    cache_redis.flushdb()  # not FLUSHALL: other test processes use other databases
    loads = []
    original = selectors._load_order

    def counting_load(oid):
        loads.append(oid)
        return original(oid)

    selectors._load_order = counting_load
    results = []
    try:
        cache.hooks["after_read"] = lambda: __import__("time").sleep(0.2)  # a slow database

        def read():
            try:
                results.append(selectors.order_get_cached(order_id=order_id)["id"])
            finally:
                connection.close()

        threads = [threading.Thread(target=read) for _ in range(10)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        selectors._load_order = original
        cache.hooks.clear()
    assert results == [order_id] * 10
    assert len(loads) == 1


def test_a_rolled_back_transaction_dispatches_nothing_and_caches_nothing(
    account, product, broker_url, cache_redis
):
    with publishing_to(broker_url):
        with pytest.raises(RuntimeError), transaction.atomic():
            order_id = place(account).body["id"]
            raise RuntimeError("the caller's transaction fails after the order")
        assert not Order.objects.filter(pk=order_id).exists()
        assert queue_depth(broker_url, "orders") == 0
        assert queue_depth(broker_url, "counters") == 0
        assert not cache_redis.exists(cache.cache_key("order", order_id))
        assert cache_redis.get(cache.cache_key("account", account.pk)) is None or (
            selectors.account_get_cached(account_id=account.pk)["balance"] == 10_000
        )
        assert not list(cache_redis.scan_iter(match=counter_cache.PREFIX + "*"))

        assert not OutboxMessage.objects.exists()

        committed = place(account)
        assert committed.status == 201
        # The follow-ups are outbox rows of the order's transaction, for the relay to publish.
        assert sorted(OutboxMessage.objects.values_list("task_name", "queue")) == [
            ("counters.apply_deltas", "counters"),  # orders placed
            ("counters.apply_deltas", "counters"),  # units sold
            ("orders.send_confirmation", "orders"),
        ]
        assert queue_depth(broker_url, "orders") == queue_depth(broker_url, "counters") == 0
        assert cache_redis.exists(cache.cache_key("order", committed.body["id"]))


def test_invalid_input_writes_nothing(account, product):
    for lines in (
        [],
        [{"sku": "mug"}],
        [{"sku": "mug", "qty": 0}],
        [{"sku": "nope", "qty": 1}],
        [{"sku": "mug", "qty": True}],
        "mug",
    ):
        with pytest.raises(services.OrderInputError):
            services.order_place(account_id=account.pk, lines=lines, idempotency_key="x")
    with pytest.raises(Account.DoesNotExist):
        services.order_place(
            account_id=999999, lines=[{"sku": "mug", "qty": 1}], idempotency_key="x"
        )
    assert not Order.objects.exists()
    from orders.models import IdempotencyRecord

    assert not IdempotencyRecord.objects.exclude(
        scope=f"account:{account.pk}", status_code=200
    ).exists()
