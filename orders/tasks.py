from celery import shared_task
from django.core.mail import send_mail

from .models import Order


@shared_task(name="orders.send_confirmation")
def send_order_confirmation(order_id: int) -> None:
    """E-mail the account owner that the order is placed. An unknown order is a permanent error
    (dead-lettered at once); a mail server that is down is transient (retried)."""
    order = Order.objects.select_related("account__owner").get(pk=order_id)
    owner = order.account.owner
    send_mail(
        subject=f"Order {order.pk} placed",
        message=f"Your order {order.pk} of {order.total} (minor units) is placed.",
        from_email=None,
        recipient_list=[owner.email or f"{owner.username}@example.invalid"],
    )


@shared_task(name="orders.prune_idempotency_keys")
def prune_idempotency_keys() -> int:
    from .services import idempotency_prune

    return idempotency_prune()
