"""Reads of critical data: cached reads (read-through, versioned) and the rows views need."""

from . import cache
from .models import Account, Order, Product
from .serializers import account_data, order_data


def _load_order(order_id: int):
    order = Order.objects.filter(pk=order_id).first()
    return None if order is None else (order.version, order_data(order))


def _load_account(account_id: int):
    account = Account.objects.filter(pk=account_id).first()
    return None if account is None else (account.version, account_data(account))


def order_get_cached(*, order_id: int) -> dict | None:
    return cache.read_through(kind="order", obj_id=order_id, load=lambda: _load_order(order_id))


def account_get_cached(*, account_id: int) -> dict | None:
    return cache.read_through(
        kind="account", obj_id=account_id, load=lambda: _load_account(account_id)
    )


def account_get(*, account_id: object) -> Account | None:
    if isinstance(account_id, bool) or not isinstance(account_id, int):
        return None
    return Account.objects.filter(pk=account_id).first()


def order_get(*, order_id: int) -> Order | None:
    return Order.objects.filter(pk=order_id).first()


def accounts_of(*, user) -> list[dict]:
    """The user's accounts, each as cached."""
    ids = Account.objects.filter(owner=user).order_by("pk").values_list("pk", flat=True)
    return [account_get_cached(account_id=pk) for pk in ids]


def orders_of(*, user, limit: int = 20) -> list[Order]:
    return list(Order.objects.filter(account__owner=user).order_by("-pk")[:limit])


def products_list() -> list[Product]:
    return list(Product.objects.order_by("sku"))
