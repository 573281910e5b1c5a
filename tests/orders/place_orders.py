"""Run as a separate process by the concurrency test: place orders as fast as possible."""

import sys
import uuid

import django


def main(account_id: int, sku: str, count: int) -> None:
    django.setup()
    from orders.services import order_place

    placed = 0
    for _ in range(count):
        outcome = order_place(
            account_id=account_id, lines=[{"sku": sku, "qty": 1}], idempotency_key=uuid.uuid4().hex
        )
        placed += outcome.status == 201
    print(placed)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]))
