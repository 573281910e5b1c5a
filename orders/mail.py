"""The order confirmation mail, sent once per order however often its task runs."""

from django.core.mail import send_mail
from django.db import connection, transaction

from .models import Order
from .money import money_format

CLAIM = """
INSERT INTO orders_orderconfirmation (order_id, sent_at) VALUES (%s, now())
ON CONFLICT (order_id) DO NOTHING RETURNING order_id
"""


def order_confirmation_send(*, order_id: int) -> bool:
    """Mail the account owner that the order is placed; False if it was mailed already.

    The marker is inserted, the mail sent, then the marker committed, in one transaction: a
    concurrent run waits on the marker's unique index and then finds it; a send that fails rolls
    the marker back, so a retry sends. (A commit that fails after a successful send makes the
    retry send again: at least once, never zero times.) An unknown order raises DoesNotExist.
    """
    order = Order.objects.select_related("account__owner").get(pk=order_id)
    owner = order.account.owner
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(CLAIM, [order.pk])
        if not cursor.fetchall():
            return False
        send_mail(
            subject=f"Order {order.pk} placed",
            message=f"Your order {order.pk} of {money_format(minor=order.total)} is placed.",
            from_email=None,
            recipient_list=[owner.email or f"{owner.username}@example.invalid"],
        )
    return True
