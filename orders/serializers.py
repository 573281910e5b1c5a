"""The JSON shapes of orders and accounts: what the API answers and the cache stores."""

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
