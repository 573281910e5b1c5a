from celery import shared_task

from .idempotency import idempotency_prune
from .mail import order_confirmation_send


@shared_task(name="orders.send_confirmation")
def send_order_confirmation(order_id: int) -> None:
    """E-mail the account owner that the order is placed, once (orders/mail.py). An unknown order
    is a permanent error (dead-lettered at once); a mail server that is down is transient
    (retried)."""
    order_confirmation_send(order_id=order_id)


@shared_task(name="orders.prune_idempotency_keys")
def prune_idempotency_keys() -> int:
    return idempotency_prune()
