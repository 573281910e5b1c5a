"""Queue topology: named work queues, the dead-letter exchange and queue, and task routes.

RabbitMQ: every work queue is a *quorum* queue (replicated, durable, fsynced before the publisher
confirm) declared with its dead-letter settings as queue **arguments**, not a policy. Arguments
travel with the code, so a fresh broker is right the first time a worker or web process declares
the queue, with no ``rabbitmqctl set_policy`` step to forget; the price is that changing one later
means migrating the queue (a policy could be changed in place). They are therefore constants here,
not settings. The application's own delivery limit (``TASK_MAX_DELIVERIES``, checked by the base
task, which also records the ``DeadLetter`` row) is below the queue's ``x-delivery-limit``, which
is only a backstop for a message that crashes its worker before any of our code runs.

Dead-lettering is ``at-least-once`` (RabbitMQ >= 3.10): the source queue keeps a rejected message
until the dead-letter queue has confirmed it, instead of the default fire-and-forget. Celery's
native delayed delivery (used for retry countdowns on quorum queues) needs topic exchanges, so the
task exchange is a topic exchange with one routing key per queue.

Redis broker: kombu's Redis transport ignores the queue arguments and silently drops a rejected
message, so the base task publishes the dead letter to the ``dead_letter`` list itself.

The dead-letter queue is deliberately **not** in ``task_queues``: a worker started without ``-Q``
must never consume (and so re-run) dead letters.
"""

from kombu import Exchange, Queue

COUNTERS_QUEUE = "counters"
ORDERS_QUEUE = "orders"
DEFAULT_QUEUE = "default"
WORK_QUEUES = (COUNTERS_QUEUE, ORDERS_QUEUE, DEFAULT_QUEUE)
TASK_EXCHANGE = Exchange("tasks", type="topic", durable=True)
DEAD_LETTER_EXCHANGE = Exchange("dead_letter", type="topic", durable=True)
DEAD_LETTER_QUEUE_NAME = "dead_letter"
# Backstop only; RabbitMQ 4 uses 20 as its default delivery limit for quorum queues too.
QUEUE_DELIVERY_LIMIT = 20


def work_queue_arguments() -> dict:
    return {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE.name,
        "x-dead-letter-routing-key": DEAD_LETTER_QUEUE_NAME,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",  # required by at-least-once dead-lettering
        "x-delivery-limit": QUEUE_DELIVERY_LIMIT,
    }


def task_queues(*, max_deliveries: int) -> tuple[Queue, ...]:
    if not 1 <= max_deliveries < QUEUE_DELIVERY_LIMIT:
        raise ValueError(f"TASK_MAX_DELIVERIES must be between 1 and {QUEUE_DELIVERY_LIMIT - 1}")
    return tuple(
        Queue(name, TASK_EXCHANGE, routing_key=name, queue_arguments=work_queue_arguments())
        for name in WORK_QUEUES
    )


def dead_letter_queue() -> Queue:
    return Queue(
        DEAD_LETTER_QUEUE_NAME,
        DEAD_LETTER_EXCHANGE,
        routing_key=DEAD_LETTER_QUEUE_NAME,
        queue_arguments={"x-queue-type": "quorum"},
    )


def task_routes() -> dict:
    # Task names are explicit ("<app>.<action>"); the app prefix picks the queue.
    return {
        "counters.*": {"queue": COUNTERS_QUEUE},
        "orders.*": {"queue": ORDERS_QUEUE},
    }
