"""Who may move whose money through the API and the shop pages (issue 26, findings 2, 3 and the
token half of 10): the owner reads, orders and cancels; anyone else needs the model permission,
as in the admin; a deposit always needs ``orders.deposit``; a token's scopes narrow what it may
do; the payment records who acted when it was not the owner. Each test sends the request that
worked before the fix and shows it refused with nothing changed, then the legitimate use."""

import json

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client

from orders.models import Account, IdempotencyRecord, Order, Payment
from orders.tokens import api_token_create

pytestmark = pytest.mark.django_db(transaction=True)


def user_with(username: str, *codenames: str, is_staff: bool = True):
    user = get_user_model().objects.create_user(username, f"{username}@example.com", "pw")
    user.is_staff = is_staff
    user.save(update_fields=["is_staff"])
    user.user_permissions.add(
        *Permission.objects.filter(content_type__app_label="orders", codename__in=codenames)
    )
    return user


def grant(user, *codenames: str) -> None:
    user.user_permissions.add(
        *Permission.objects.filter(content_type__app_label="orders", codename__in=codenames)
    )


def token_client(user, *scopes: str) -> Client:
    secret, _ = api_token_create(username=user.username, scopes=list(scopes) or None)
    return Client(HTTP_AUTHORIZATION=f"Bearer {secret}")


def session_client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def post(client, path, body, key):
    return client.post(
        path, data=json.dumps(body), content_type="application/json", HTTP_IDEMPOTENCY_KEY=key
    )


def money_state(account) -> tuple:
    """Everything a refused request must leave alone."""
    account.refresh_from_db()
    return (
        account.balance,
        account.version,
        Payment.objects.count(),
        Order.objects.count(),
        IdempotencyRecord.objects.count(),
    )


@pytest.fixture
def order(account, product):
    """One order of alice's, placed by alice through the API."""
    created = post(
        token_client(account.owner),
        "/api/orders",
        {"account": account.pk, "lines": [{"sku": "mug", "qty": 1}]},
        "alice-1",
    )
    assert created.status_code == 201
    return Order.objects.get(pk=created.json()["id"])


def test_an_owner_cannot_deposit_into_their_own_account(account, alice):
    """Finding 2: alice credited herself 1,000,000,000 with her own token or session."""
    before = money_state(account)
    url = f"/api/accounts/{account.pk}/deposit"
    session = post(session_client(alice), url, {"amount": 10**9}, "mint-1")
    assert (session.status_code, session.json()) == (
        403,
        {"error": "this needs the orders.deposit permission"},
    )
    default_token = post(token_client(alice), url, {"amount": 10**9}, "mint-2")
    assert (default_token.status_code, default_token.json()) == (
        403,
        {"error": "this token lacks the scope accounts:deposit"},
    )
    # A token's scope grants nothing the user lacks.
    scoped = post(token_client(alice, "accounts:deposit"), url, {"amount": 10**9}, "mint-3")
    assert (scoped.status_code, scoped.json()) == (
        403,
        {"error": "this needs the orders.deposit permission"},
    )
    assert money_state(account) == before


def test_staff_with_the_deposit_permission_deposit_and_are_recorded(account, alice, bob):
    cashier = user_with("cashier", "deposit")
    url = f"/api/accounts/{account.pk}/deposit"
    done = post(token_client(cashier, "accounts:deposit"), url, {"amount": 250}, "d-1")
    assert (done.status_code, done.json()["balance"]) == (200, 10_250)
    root = get_user_model().objects.create_superuser("root", "root@example.com", "pw")
    by_root = post(session_client(root), url, {"amount": 50}, "d-1")  # root's own key scope
    assert (by_root.status_code, by_root.json()["balance"]) == (200, 10_300)
    deposits = Payment.objects.filter(account=account, kind=Payment.Kind.DEPOSIT).order_by("pk")
    assert [(p.amount, p.actor_id) for p in deposits] == [
        (10_000, None),  # the fixture's, made by a script
        (250, cashier.pk),
        (50, root.pk),
    ]
    # The cashier's key lives in the staff scope: alice cannot pre-empt or replay it.
    assert IdempotencyRecord.objects.get(key="d-1", scope__startswith=f"staff:{cashier.pk}:")


def test_is_staff_alone_cannot_read_or_move_another_users_money(account, order):
    """Finding 3: any is_staff user listed, ordered, cancelled and deposited on every account."""
    clerk = session_client(user_with("clerk"))
    before = money_state(account)
    refused = [
        clerk.get(f"/api/accounts/{account.pk}"),
        clerk.get(f"/api/orders/{order.pk}"),
        post(
            clerk,
            "/api/orders",
            {"account": account.pk, "lines": [{"sku": "mug", "qty": 1}]},
            "s-1",
        ),
        post(clerk, f"/api/orders/{order.pk}/cancel", {}, "s-2"),
        post(clerk, f"/api/accounts/{account.pk}/deposit", {"amount": 5}, "s-3"),
    ]
    assert [r.status_code for r in refused] == [403] * 5
    assert [r.json()["error"] for r in refused] == ["this account is not yours"] * 4 + [
        "this needs the orders.deposit permission"
    ]
    assert money_state(account) == before
    order.refresh_from_db()
    assert order.status == Order.Status.PLACED


def test_each_permission_grants_its_own_action_and_the_payment_records_the_actor(account, order):
    clerk = user_with("clerk", "view_account", "view_order")
    client = session_client(clerk)
    lines = {"account": account.pk, "lines": [{"sku": "mug", "qty": 2}]}
    assert client.get(f"/api/accounts/{account.pk}").json()["balance"] == 10_000 - 300
    assert client.get(f"/api/orders/{order.pk}").json()["status"] == "placed"
    before = money_state(account)
    assert post(client, "/api/orders", lines, "c-1").status_code == 403
    assert post(client, f"/api/orders/{order.pk}/cancel", {}, "c-2").status_code == 403
    assert money_state(account) == before

    grant(clerk, "add_order")
    # alice's key "alice-1" names her own order; the clerk's same key is the clerk's own.
    placed = post(client, "/api/orders", lines, "alice-1")
    assert placed.status_code == 201 and placed.json()["id"] != order.pk
    assert post(client, f"/api/orders/{order.pk}/cancel", {}, "c-2").status_code == 403

    grant(clerk, "change_order")
    cancelled = post(client, f"/api/orders/{order.pk}/cancel", {}, "c-2")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    moves = Payment.objects.filter(order__isnull=False).order_by("pk")
    assert [(p.kind, p.amount, p.actor_id) for p in moves] == [
        ("order_debit", -300, None),  # alice's own order: the owner acted
        ("order_debit", -600, clerk.pk),
        ("refund", 300, clerk.pk),
    ]


def test_a_token_scope_narrows_what_it_may_do(account, alice, product):
    reader = token_client(alice, "orders:read")
    lines = {"account": account.pk, "lines": [{"sku": "mug", "qty": 1}]}
    before = money_state(account)
    assert reader.get(f"/api/accounts/{account.pk}").status_code == 200
    refused = post(reader, "/api/orders", lines, "r-1")
    assert (refused.status_code, refused.json()) == (
        403,
        {"error": "this token lacks the scope orders:write"},
    )
    assert money_state(account) == before
    writer = token_client(alice, "orders:write")
    placed = post(writer, "/api/orders", lines, "w-1")
    assert placed.status_code == 201
    unreadable = writer.get(f"/api/orders/{placed.json()['id']}")
    assert (unreadable.status_code, unreadable.json()) == (
        403,
        {"error": "this token lacks the scope orders:read"},
    )


def test_the_order_page_follows_the_same_rule(account, order):
    """shop_order_detail showed any order to any is_staff user."""
    url = f"/shop/orders/{order.pk}/"
    clerk = user_with("clerk")
    client = session_client(clerk)
    assert client.get(url)["Location"] == "/shop/"
    before = money_state(account)
    cancel = {"cancel_key": "page-1"}
    assert client.post(f"/shop/orders/{order.pk}/cancel", cancel).status_code == 404
    assert money_state(account) == before

    grant(clerk, "view_order")
    page = client.get(url)
    assert page.status_code == 200 and 'id="status">placed<' in page.text
    assert "Cancel order" not in page.text  # seen, not cancellable: no button
    assert client.post(f"/shop/orders/{order.pk}/cancel", cancel).status_code == 404

    grant(clerk, "change_order")
    assert "Cancel order" in client.get(url).text
    assert client.post(f"/shop/orders/{order.pk}/cancel", cancel).status_code == 302
    order.refresh_from_db()
    assert order.status == Order.Status.CANCELLED
    assert Payment.objects.get(order=order, kind=Payment.Kind.REFUND).actor_id == clerk.pk
    # The owner still sees their order, with no permission at all.
    owner_page = session_client(Account.objects.get(pk=account.pk).owner).get(url)
    assert 'id="status">cancelled<' in owner_page.text
