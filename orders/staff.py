"""What staff change through the admin, as services: each takes the row lock, changes only the
fields it names, bumps the version and writes the cache through after the commit. A form saved
as a whole would put back values that orders changed since it was opened (a lost update)."""

from __future__ import annotations

from django.db import transaction

from . import cache
from .models import Account, Product, StockChange
from .serializers import account_data
from .services import OrderInputError

PRODUCT_FIELDS = frozenset({"sku", "name", "price"})
ACCOUNT_FIELDS = frozenset({"name", "owner"})


def _locked_update(*, model, pk: int, changes: dict, allowed: frozenset):
    """Under the row lock: set only ``changes``, bump the version, save those fields."""
    unexpected = set(changes) - allowed
    if unexpected:
        raise OrderInputError(f"these fields are not changed here: {sorted(unexpected)}")
    row = model.objects.select_for_update().get(pk=pk)
    for field, value in changes.items():
        setattr(row, field, value)
    row.version += 1
    row.save(update_fields=[*changes, "version"])
    return row


def product_update(*, product_id: int, changes: dict) -> Product:
    """Change a product's name, SKU or price (never its stock: see product_stock_adjust)."""
    with transaction.atomic():
        return _locked_update(model=Product, pk=product_id, changes=changes, allowed=PRODUCT_FIELDS)


def product_stock_adjust(*, product_id: int, change: int, reason: str, actor=None) -> Product:
    """Add ``change`` (negative: remove) to the stock under the row lock, and record it."""
    if isinstance(change, bool) or not isinstance(change, int) or change == 0:
        raise OrderInputError("a stock change must be a non-zero whole number")
    if not reason or not reason.strip():
        raise OrderInputError("say why the stock changes")
    with transaction.atomic():
        product = Product.objects.select_for_update().get(pk=product_id)
        if product.stock + change < 0:
            raise OrderInputError(f"stock would fall below zero ({product.stock} {change:+d})")
        product.stock += change
        product.version += 1
        product.save(update_fields=["stock", "version"])
        StockChange.objects.create(
            product=product,
            change=change,
            stock_after=product.stock,
            reason=reason.strip(),
            actor=actor,
        )
    return product


def account_update(*, account_id: int, changes: dict) -> Account:
    """Change an account's name or owner (never its balance: deposits and refunds have their
    services); the cached copy is replaced by the new version after the commit."""
    with transaction.atomic():
        account = _locked_update(
            model=Account, pk=account_id, changes=changes, allowed=ACCOUNT_FIELDS
        )
        data = account_data(account)
        transaction.on_commit(
            lambda: cache.write_through_quietly(
                kind="account", obj_id=account.pk, version=account.version, data=data
            )
        )
    return account
