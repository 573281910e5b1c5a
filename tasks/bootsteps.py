from celery import bootsteps

from .topology import dead_letter_queue


class DeclareDeadLetterQueue(bootsteps.StartStopStep):
    """Declare the dead-letter exchange and queue when the worker connects, before it consumes:
    RabbitMQ drops a dead-lettered message whose exchange routes to no queue."""

    requires = ("celery.worker.consumer.connection:Connection",)

    def start(self, c) -> None:
        dead_letter_queue().bind(c.connection.default_channel).declare()
