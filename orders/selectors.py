"""Reads of critical data: JSON shapes, and cached reads (read-through, versioned)."""

from . import cache
from .models import Account, Order


def order_data(order: Order) -> dict:
    return {
        "id": order.pk,
        "account": order.account_id,
        "status": order.status,
        "total": order.total,
        "version": order.version,
        "created_at": order.created_at.isoformat(),
        "lines": [
            {"sku": line.product.sku, "qty": line.qty, "unit_price": line.unit_price}
            for line in order.lines.select_related("product").order_by("pk")
        ],
    }


def account_data(account: Account) -> dict:
    return {
        "id": account.pk,
        "name": account.name,
        "owner": account.owner_id,
        "balance": account.balance,
        "version": account.version,
    }


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
