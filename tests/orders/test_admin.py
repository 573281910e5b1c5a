"""What staff do in the admin changes critical data only through services (issue 13): a product
edit never puts back stock that orders took, an account edit bumps its version and replaces the
cached copy, the ledger and counter rows cannot be deleted. And any SKU is orderable."""

import threading
import time
import uuid

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client

from counters.models import AppliedDelta, Counter
from orders import selectors, services
from orders.models import IdempotencyRecord, Order, Payment, Product, StockChange

from ..helpers import staff_with


@pytest.fixture
def staff_client(transactional_db, cache_redis):
    # After cache_redis has flushed the cache: sessions live there.
    admin = get_user_model().objects.create_superuser("boss", "boss@example.invalid", "pw")
    client = Client()
    client.force_login(admin)
    return client


def place(account, sku: str, qty: int = 1) -> services.Outcome:
    return services.order_place(
        account_id=account.pk, lines=[{"sku": sku, "qty": qty}], idempotency_key=uuid.uuid4().hex
    )


def test_renaming_a_product_while_orders_flow_keeps_the_stock_they_took(
    account, product, staff_client
):
    url = f"/admin/orders/product/{product.pk}/change/"
    assert staff_client.get(url).status_code == 200  # the form is opened: stock 20
    for _ in range(3):
        assert place(account, "mug", 2).status == 201
    # What a form opened before those orders sends, stock included.
    form = {
        "sku": "mug",
        "name": "Big mug",
        "price": 300,
        "stock": 20,
        "stock_changes-TOTAL_FORMS": 0,
        "stock_changes-INITIAL_FORMS": 0,
    }
    response = staff_client.post(url, form)
    assert response.status_code == 302, response.content.decode()[:2000]
    product.refresh_from_db()
    assert (product.name, product.stock) == ("Big mug", 20 - 6)
    assert product.version == 1 + 3 + 1  # three orders and the rename


def test_a_stock_change_is_locked_and_recorded_with_who_and_why(account, product, staff_client):
    url = f"/admin/orders/product/{product.pk}/change/"
    form = {
        "sku": "mug",
        "name": "Mug",
        "price": 300,
        "stock_change": 5,
        "stock_change_reason": "delivery 42",
        "stock_changes-TOTAL_FORMS": 0,
        "stock_changes-INITIAL_FORMS": 0,
    }
    assert place(account, "mug", 3).status == 201
    assert staff_client.post(url, form).status_code == 302
    product.refresh_from_db()
    assert product.stock == 20 - 3 + 5
    change = StockChange.objects.get()
    assert (change.change, change.stock_after, change.reason) == (5, 22, "delivery 42")
    assert change.actor.username == "boss"
    missing_reason = {**form, "stock_change_reason": ""}
    assert staff_client.post(url, missing_reason).status_code == 200  # the form, with its error
    assert StockChange.objects.count() == 1


def test_an_account_saved_in_the_admin_bumps_its_version_and_is_served_fresh(
    account, alice, staff_client
):
    assert selectors.account_get_cached(account_id=account.pk)["name"] == "alice's"  # cached
    url = f"/admin/orders/account/{account.pk}/change/"
    form = {
        "owner": alice.pk,
        "name": "Alice Ltd",
        "payments-TOTAL_FORMS": 0,
        "payments-INITIAL_FORMS": 0,
        "balance": 1,
    }
    response = staff_client.post(url, form)
    assert response.status_code == 302, response.content.decode()[:2000]
    account_before = account.version
    account.refresh_from_db()
    assert (account.name, account.balance) == ("Alice Ltd", 10_000)  # the balance untouched
    assert account.version == account_before + 1
    assert selectors.account_get_cached(account_id=account.pk)["name"] == "Alice Ltd"


def test_a_deposit_in_the_admin_goes_through_the_service_once_per_form(
    account, alice, staff_client
):
    url = f"/admin/orders/account/{account.pk}/change/"
    page = staff_client.get(url).content.decode()
    key = page.split('name="deposit_key" value="')[1].split('"')[0]  # this rendering's key
    form = {
        "owner": alice.pk,
        "name": "alice's",
        "deposit": 250,
        "deposit_key": key,
        "payments-TOTAL_FORMS": 0,
        "payments-INITIAL_FORMS": 0,
    }
    for _ in range(2):  # a double submit of the same form
        assert staff_client.post(url, form).status_code == 302
    account.refresh_from_db()
    assert account.balance == 10_000 + 250
    deposits = Payment.objects.filter(account=account, kind=Payment.Kind.DEPOSIT).order_by("pk")
    assert [(p.amount, p.actor and p.actor.username) for p in deposits] == [
        (10_000, None),  # the fixture's, by a script
        (250, "boss"),
    ]
    assert selectors.account_get_cached(account_id=account.pk)["balance"] == 10_250
    refused = staff_client.post(url, {**form, "deposit": -5, "deposit_key": "other"})
    assert refused.status_code == 200  # the form again, with its error; nothing written
    account.refresh_from_db()
    assert account.balance == 10_250


def test_cancel_and_refund_in_the_admin_goes_through_the_service_once(
    account, product, staff_client
):
    order_id = place(account, "mug", 4).body["id"]
    action = {"action": "cancel_and_refund", "_selected_action": [order_id]}
    for _ in range(2):
        assert staff_client.post("/admin/orders/order/", action).status_code == 302
    account.refresh_from_db()
    product.refresh_from_db()
    assert Order.objects.get(pk=order_id).status == Order.Status.CANCELLED
    assert (account.balance, product.stock) == (10_000, 20)
    assert Payment.objects.filter(order_id=order_id, kind=Payment.Kind.REFUND).count() == 1


def test_staff_who_may_only_view_orders_cannot_cancel_and_refund(account, product, cache_redis):
    """Finding 4: the action had no permissions=, so view_order was enough to refund."""
    order_id = place(account, "mug", 4).body["id"]
    viewer = staff_with("viewer", "view_order")
    listing = viewer.get("/admin/orders/order/")
    assert listing.status_code == 200 and f"/admin/orders/order/{order_id}/change/" in listing.text
    assert 'value="cancel_and_refund"' not in listing.text
    # Posted by hand all the same: Django finds no such action for this user.
    action = {"action": "cancel_and_refund", "_selected_action": [order_id]}
    viewer.post("/admin/orders/order/", action)
    account.refresh_from_db()
    assert Order.objects.get(pk=order_id).status == Order.Status.PLACED
    assert account.balance == 10_000 - 1_200
    assert not Payment.objects.filter(kind=Payment.Kind.REFUND).exists()

    clerk = staff_with("clerk", "view_order", "change_order")
    assert 'value="cancel_and_refund"' in clerk.get("/admin/orders/order/").text
    assert clerk.post("/admin/orders/order/", action).status_code == 302
    assert Order.objects.get(pk=order_id).status == Order.Status.CANCELLED
    refund = Payment.objects.get(kind=Payment.Kind.REFUND)
    assert (refund.amount, refund.actor.username) == (1_200, "clerk")


def test_a_customer_cannot_pre_empt_the_admin_cancel_key(account, product, staff_client):
    """Finding 4: the admin's key admin-cancel:<id> was in the customer's scope, so a customer
    who used it first (here, for another order) made the action fail with a 500."""
    order_id = place(account, "mug", 1).body["id"]
    pre_empt = services.order_place(
        account_id=account.pk,
        lines=[{"sku": "mug", "qty": 1}],
        idempotency_key=f"admin-cancel:{order_id}",
        actor=account.owner,  # what alice's POST /api/orders with that key does
    )
    assert pre_empt.status == 201
    action = {"action": "cancel_and_refund", "_selected_action": [order_id]}
    done = staff_client.post("/admin/orders/order/", action, follow=True)
    assert done.status_code == 200 and "1 cancelled and refunded; 0 already" in done.text
    assert Order.objects.get(pk=order_id).status == Order.Status.CANCELLED
    assert Order.objects.get(pk=pre_empt.body["id"]).status == Order.Status.PLACED


def test_an_idempotency_conflict_in_the_admin_action_is_reported_per_order_not_a_500(
    account, product, staff_client
):
    first, second = (place(account, "mug", 1).body["id"] for _ in range(2))
    boss = get_user_model().objects.get(username="boss")
    # The staff key already answered another request (what the old scope let a customer do).
    IdempotencyRecord.objects.create(
        scope=f"staff:{boss.pk}:account:{account.pk}",
        key=f"admin-cancel:{first}",
        fingerprint="0" * 64,
        status_code=201,
        response={},
    )
    action = {"action": "cancel_and_refund", "_selected_action": [first, second]}
    done = staff_client.post("/admin/orders/order/", action, follow=True)
    assert done.status_code == 200
    assert f"Order {first} was not cancelled: this Idempotency-Key was already used" in done.text
    assert "1 cancelled and refunded; 0 already cancelled." in done.text
    statuses = dict(Order.objects.values_list("pk", "status"))
    assert (statuses[first], statuses[second]) == ("placed", "cancelled")


def test_staff_without_the_deposit_permission_get_no_deposit_field(account, alice, cache_redis):
    """Changing an account (its name, its owner) is not crediting it: a deposit posted by hand
    by staff without orders.deposit is ignored."""
    clerk = staff_with("clerk", "view_account", "change_account")
    url = f"/admin/orders/account/{account.pk}/change/"
    assert 'name="deposit"' not in clerk.get(url).text
    form = {
        "owner": alice.pk,
        "name": "renamed",
        "deposit": 1_000_000,
        "deposit_key": "by-hand",
        "payments-TOTAL_FORMS": 0,
        "payments-INITIAL_FORMS": 0,
    }
    assert clerk.post(url, form).status_code == 302
    account.refresh_from_db()
    assert (account.name, account.balance) == ("renamed", 10_000)
    assert Payment.objects.filter(account=account).count() == 1

    cashier = staff_with("cashier", "view_account", "change_account", "deposit")
    assert 'name="deposit"' in cashier.get(url).text
    assert cashier.post(url, {**form, "deposit_key": "cashier"}).status_code == 302
    account.refresh_from_db()
    assert account.balance == 10_000 + 1_000_000
    assert Payment.objects.filter(account=account).last().actor.username == "cashier"


def test_the_admin_offers_no_delete_for_ledger_counter_products_or_accounts(
    account, product, staff_client
):
    Counter.objects.create(key="article_views:x", value=1, version=1)
    delta = AppliedDelta.objects.create(
        delta_id=uuid.uuid4(), key="article_views:x", amount=1, applied_at="2026-01-01T00:00Z"
    )
    for url in (
        "/admin/counters/counter/article_views:x/delete/",
        f"/admin/counters/applieddelta/{delta.pk}/delete/",
        f"/admin/orders/product/{product.pk}/delete/",
        f"/admin/orders/account/{account.pk}/delete/",
    ):
        assert staff_client.get(url).status_code == 403, url
    changelist = staff_client.get("/admin/counters/applieddelta/").content.decode()
    assert "delete_selected" not in changelist
    assert Counter.objects.count() == 1 and AppliedDelta.objects.count() == 1


def test_any_sku_is_orderable(account):
    mug = Product.objects.create(sku="Blue Mug #2", name="Blue mug", price=250, stock=5)
    outcome = place(account, "Blue Mug #2", 2)
    assert outcome.status == 201, outcome.body
    mug.refresh_from_db()
    assert mug.stock == 3


def test_a_sku_renamed_between_the_check_and_the_lock_refuses_the_order(account, product):
    """Another transaction holds the product row and renames its SKU; the order, past its check,
    waits for the row lock, then finds the SKU gone: a 4xx and no order, never an order without
    that line."""
    import psycopg

    db = connection.settings_dict
    other = psycopg.connect(host=db["HOST"], port=db["PORT"], user=db["USER"], dbname=db["NAME"])
    result = {}

    def place_and_close():
        try:
            result["outcome"] = place(account, "mug")
        finally:
            connection.close()  # this thread's own connection

    try:
        other.execute("UPDATE orders_product SET sku = 'mug-renamed' WHERE id = %s", [product.pk])
        placing = threading.Thread(target=place_and_close)
        placing.start()
        deadline = time.monotonic() + 20
        waiting = (
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND datname = current_database() AND query LIKE %s"
        )
        # pg_stat_activity is a snapshot kept for the rest of a transaction: ask it afresh.
        while (
            not other.execute("SELECT pg_stat_clear_snapshot()")
            or not other.execute(waiting, ["%orders_product%"]).fetchone()[0]
        ):
            assert time.monotonic() < deadline, "the order never waited for the row lock"
            time.sleep(0.05)
        other.commit()
    finally:
        other.close()
    placing.join(20)
    assert result["outcome"].status == 409
    assert "no longer available: mug" in result["outcome"].body["error"]
    assert not Order.objects.exists()


def test_staff_cannot_move_an_account_to_themselves_and_spend_it(account, alice, cache_redis):
    """The owner may spend the balance: change_account must not be a way to become the owner."""
    clerk = staff_with("clerk", "view_account", "change_account")
    url = f"/admin/orders/account/{account.pk}/change/"
    clerk_user = get_user_model().objects.get(username="clerk")
    form = {
        "owner": clerk_user.pk,
        "name": "taken",
        "payments-TOTAL_FORMS": 0,
        "payments-INITIAL_FORMS": 0,
    }
    assert clerk.post(url, form).status_code == 302
    account.refresh_from_db()
    assert (account.owner_id, account.name) == (alice.pk, "taken")  # renamed, not moved
