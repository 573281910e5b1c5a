"""Orders, payments and balances: PostgreSQL first, then the cache and the follow-up tasks.

Each service runs in ONE transaction that locks what it changes in a fixed order (the account,
then the products by primary key, then the order), so concurrent calls serialize instead of
deadlocking, and a balance or a stock never goes below zero (also a CHECK constraint). Only after
the commit (``transaction.on_commit``) are the cached copies written through; the follow-up tasks
(the confirmation mail, the counters) are outbox rows written in the transaction itself
(tasks/outbox.py): a transaction that rolls back caches and dispatches nothing, and one that
commits dispatches them at least once, whatever the broker was doing at the commit.

Every call carries an idempotency key (orders/idempotency.py). Its scope is the account's
(``account:<id>``) when the owner acts, or no actor is named (scripts); a staff action, and a
request on someone else's account, keys in ``staff:<actor id>:account:<id>``, which no customer
request can write into: a customer cannot pre-empt a staff action's key (issue 26).

Who may call these is decided by the callers (orders/auth.py for the API and the pages, model
permissions in the admin); ``actor`` only records who moved the money on the payment.
"""

from __future__ import annotations

import logging

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction

from counters.keys import InvalidCounter
from counters.services import counter_incr

from . import cache

# Re-exported: callers catch these as services.OrderInputError and services.IdempotencyConflict.
from .idempotency import IdempotencyConflict as IdempotencyConflict
from .idempotency import OrderInputError, Outcome, idempotent_run
from .models import Account, Order, OrderLine, Payment, Product
from .serializers import account_data, order_data
from .tasks import send_order_confirmation

logger = logging.getLogger(__name__)

MAX_QTY = 1000
MAX_LINES = 50


def _account_cache_after_commit(account: Account) -> None:
    data = account_data(account)
    transaction.on_commit(
        lambda: cache.write_through_quietly(
            kind="account", obj_id=account.pk, version=account.version, data=data
        )
    )


def _order_cache_after_commit(order: Order) -> None:
    data = order_data(order)
    transaction.on_commit(
        lambda: cache.write_through_quietly(
            kind="order", obj_id=order.pk, version=order.version, data=data
        )
    )


def _parse_lines(lines: object) -> dict[str, int]:
    if not isinstance(lines, list) or not 1 <= len(lines) <= MAX_LINES:
        raise OrderInputError(f"lines must be a list of 1 to {MAX_LINES} items")
    wanted: dict[str, int] = {}
    for line in lines:
        if not isinstance(line, dict) or set(line) != {"sku", "qty"}:
            raise OrderInputError('each line must be {"sku": ..., "qty": ...}')
        sku, qty = line["sku"], line["qty"]
        if not isinstance(sku, str) or not sku:
            raise OrderInputError("sku must be a non-empty string")
        if isinstance(qty, bool) or not isinstance(qty, int) or not 1 <= qty <= MAX_QTY:
            raise OrderInputError(f"qty must be an integer from 1 to {MAX_QTY}")
        wanted[sku] = wanted.get(sku, 0) + qty
    return wanted


def _account_owner(account_id: object) -> int:
    """The owner's id of an existing account (its id checked first)."""
    if isinstance(account_id, bool) or not isinstance(account_id, int):
        raise OrderInputError("account must be an integer id")
    owner_id = Account.objects.filter(pk=account_id).values_list("owner_id", flat=True).first()
    if owner_id is None:
        raise Account.DoesNotExist(f"no account {account_id}")
    return owner_id


def _acting_for_other(*, actor: AbstractBaseUser | None, owner_id: int) -> bool:
    return actor is not None and actor.pk != owner_id


def _idempotency_scope(*, account_id: int, actor: AbstractBaseUser | None, staff: bool) -> str:
    if actor is not None and staff:
        return f"staff:{actor.pk}:account:{account_id}"
    return f"account:{account_id}"


def order_place(
    *,
    account_id: int,
    lines: list[dict],
    idempotency_key: str,
    actor: AbstractBaseUser | None = None,
    staff_action: bool = False,
) -> Outcome:
    """Debit the account, take the stock, create the order and its payment: all or nothing.

    ``actor``: who places it; recorded on the payment when it is not the owner. ``staff_action``:
    key in the staff scope even if the actor owns the account (the admin's actions)."""
    for_other = _acting_for_other(actor=actor, owner_id=_account_owner(account_id))
    wanted = _parse_lines(lines)
    products = {p.sku: p for p in Product.objects.filter(sku__in=wanted)}
    unknown = sorted(set(wanted) - set(products))
    if unknown:
        raise OrderInputError(f"unknown sku: {', '.join(unknown)}")

    def run() -> tuple[int, dict]:
        account = Account.objects.select_for_update().get(pk=account_id)
        locked = list(
            Product.objects.select_for_update().filter(sku__in=wanted).order_by("pk")
        )  # lock order: account, then products by primary key
        gone = sorted(set(wanted) - {p.sku for p in locked})
        if gone:  # deleted or renamed since the check above: never place the order without it
            return 409, {"error": f"no longer available: {', '.join(gone)}"}
        total = sum(p.price * wanted[p.sku] for p in locked)
        if account.balance < total:
            return 409, {"error": f"insufficient balance: {account.balance} < {total}"}
        short = [p.sku for p in locked if p.stock < wanted[p.sku]]
        if short:
            return 409, {"error": f"insufficient stock: {', '.join(short)}"}
        account.balance -= total
        account.version += 1
        account.save(update_fields=["balance", "version"])
        for product in locked:
            product.stock -= wanted[product.sku]
            product.version += 1
        Product.objects.bulk_update(locked, ["stock", "version"])
        order = Order.objects.create(account=account, total=total)
        OrderLine.objects.bulk_create(
            OrderLine(order=order, product=p, qty=wanted[p.sku], unit_price=p.price) for p in locked
        )
        Payment.objects.create(
            account=account,
            order=order,
            kind=Payment.Kind.ORDER_DEBIT,
            amount=-total,
            actor=actor if for_other else None,
        )
        _after_commit_order(
            order=order, account=account, sold={p.pk: wanted[p.sku] for p in locked}
        )
        return 201, order_data(order)

    return idempotent_run(
        scope=_idempotency_scope(
            account_id=account_id, actor=actor, staff=staff_action or for_other
        ),
        key=idempotency_key,
        operation="order_place",
        payload={"account": account_id, "lines": wanted},
        run=run,
    )


def _after_commit_order(*, order: Order, account: Account, sold: dict[int, int]) -> None:
    _account_cache_after_commit(account)
    _order_cache_after_commit(order)
    # The follow-ups are outbox rows of this transaction (tasks/outbox.py): they exist exactly
    # when the order does, and the relay publishes them even if the broker is down at the commit.
    send_order_confirmation.delay_on_commit(order.pk)
    # Keyed by the product's id, not its SKU: any SKU ("Blue Mug #2") is orderable, and a renamed
    # one keeps its count. A follow-up must never abort the order it follows (a key it cannot
    # count is logged); a database error writing its row does, as the order's own writes would.
    try:
        counter_incr(key="orders_placed:all")
        for product_id, qty in sold.items():
            counter_incr(key=f"product_units_sold:{product_id}", amount=qty)
    except InvalidCounter:
        logger.exception("order %s: a counter key was refused", order.pk)


def order_cancel(
    *,
    order_id: int,
    idempotency_key: str,
    actor: AbstractBaseUser | None = None,
    staff_action: bool = False,
) -> Outcome:
    """Refund the balance and restock, once. ``actor`` and ``staff_action`` as in order_place."""
    order = Order.objects.select_related("account").filter(pk=order_id).first()
    if order is None:
        raise Order.DoesNotExist(f"no order {order_id}")
    for_other = _acting_for_other(actor=actor, owner_id=order.account.owner_id)

    def run() -> tuple[int, dict]:
        account = Account.objects.select_for_update().get(pk=order.account_id)
        lines = list(order.lines.all())
        products = list(
            Product.objects.select_for_update()
            .filter(pk__in=[ln.product_id for ln in lines])
            .order_by("pk")
        )
        locked = Order.objects.select_for_update().get(pk=order_id)
        if locked.status == Order.Status.CANCELLED:
            return 409, {"error": f"order {order_id} is already cancelled"}
        qty = {ln.product_id: ln.qty for ln in lines}
        for product in products:
            product.stock += qty[product.pk]
            product.version += 1
        Product.objects.bulk_update(products, ["stock", "version"])
        account.balance += locked.total
        account.version += 1
        account.save(update_fields=["balance", "version"])
        locked.status = Order.Status.CANCELLED
        locked.version += 1
        locked.save(update_fields=["status", "version"])
        Payment.objects.create(
            account=account,
            order=locked,
            kind=Payment.Kind.REFUND,
            amount=locked.total,
            actor=actor if for_other else None,
        )
        _account_cache_after_commit(account)
        _order_cache_after_commit(locked)
        return 200, order_data(locked)

    return idempotent_run(
        scope=_idempotency_scope(
            account_id=order.account_id, actor=actor, staff=staff_action or for_other
        ),
        key=idempotency_key,
        operation="order_cancel",
        payload={"order": order_id},
        run=run,
    )


def account_deposit(
    *,
    account_id: int,
    amount: int,
    idempotency_key: str,
    actor: AbstractBaseUser | None = None,
) -> Outcome:
    """Credit the account. Only staff with ``orders.deposit`` may (checked by the callers);
    ``actor`` is recorded on the payment, and keys in the staff scope. None: a script
    (``seed_demo``, tests), keyed in the account's scope as before."""
    _account_owner(account_id)
    if isinstance(amount, bool) or not isinstance(amount, int) or not 1 <= amount <= 10**9:
        raise OrderInputError("amount must be an integer from 1 to 1000000000 (minor units)")

    def run() -> tuple[int, dict]:
        account = Account.objects.select_for_update().get(pk=account_id)
        account.balance += amount
        account.version += 1
        account.save(update_fields=["balance", "version"])
        Payment.objects.create(
            account=account, kind=Payment.Kind.DEPOSIT, amount=amount, actor=actor
        )
        _account_cache_after_commit(account)
        return 200, account_data(account)

    return idempotent_run(
        scope=_idempotency_scope(account_id=account_id, actor=actor, staff=True),
        key=idempotency_key,
        operation="account_deposit",
        payload={"amount": amount},
        run=run,
    )
