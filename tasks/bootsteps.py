"""Worker bootsteps: delivery machinery that runs when a worker's consumer (re)connects."""

import logging

from celery import bootsteps
from kombu.transport import redis as kombu_redis
from kombu.transport.virtual import base as kombu_virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads

from .topology import dead_letter_queue

logger = logging.getLogger(__name__)

# Queues whose consumers are idempotent, so a message that may still be running elsewhere can be
# put back without harm: the counters' ledger applies a delta id once; the orders' tasks are the
# confirmation mail (its claim marker, orders/mail.py: a concurrent run waits, then finds it) and
# the pruning of old keys. Left out, a mail taken just before a broker restart waited for the
# visibility timeout (an hour in production; found by "broker restart, production timeouts").
# Other tasks (the default queue) wait for the visibility timeout.
RESTORABLE_QUEUES = frozenset({"counters", "orders"})


class DeclareDeadLetterQueue(bootsteps.StartStopStep):
    """Declare the dead-letter exchange and queue when the worker connects, before it consumes:
    RabbitMQ drops a dead-lettered message whose exchange routes to no queue."""

    requires = ("celery.worker.consumer.connection:Connection",)

    def start(self, c) -> None:
        dead_letter_queue().bind(c.connection.default_channel).declare()


class RestoreLostDeliveries(bootsteps.StartStopStep):
    """Redis broker: at every consumer (re)start, give back what the previous connection's task
    channel held unacknowledged.

    When the connection to the broker Redis drops (a broker restart), the worker abandons what it
    holds: celery-batches' buffer, batch jobs the pool discards on close, acknowledgements that
    failed. kombu restores a closed channel's deliveries once, at close, i.e. against the broker
    that just died; that fails and is never retried, and the records wait in ``unacked`` for the
    visibility timeout (an hour in production). Here they go back to their queue through the new
    connection; a delivery that is also still running is absorbed by the ledger.
    """

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c, **kwargs):
        super().__init__(c, **kwargs)
        self.previous: list = []

    def start(self, c) -> None:
        channel = c.task_consumer.channel
        if not isinstance(channel, kombu_redis.Channel):
            return
        for old_qos in [q for q in self.previous if q is not channel.qos]:
            count = restore_deliveries(old_qos=old_qos, channel=channel)  # raises: next start
            self.previous.remove(old_qos)
            if count:
                logger.warning("restored %d deliveries of the lost broker connection", count)
        self.previous = [channel.qos]

    def shutdown(self, c) -> None:
        self.previous = []


def restore_deliveries(*, old_qos, channel) -> int:
    """Put back on their queue, through ``channel`` (the new connection), the restorable messages
    a lost connection's channel was handed and never acknowledged; return how many."""
    old_qos._flush()  # tags acknowledged since then are not restored
    old_qos._on_collect.cancel()
    old_qos._delivered.restored = True  # kombu's own restore must not run later on top of this
    restored: set = set()
    # Installed first, so a restore that fails halfway still protects the copies it made: a
    # late ack or reject of an old message must not remove its copy's unacked record.
    ack, reject = old_qos.ack, old_qos.reject
    old_qos.ack = lambda delivery_tag: None if delivery_tag in restored else ack(delivery_tag)
    old_qos.reject = lambda delivery_tag, requeue=False: (
        None if delivery_tag in restored else reject(delivery_tag, requeue=requeue)
    )
    # A delivery whose unacked record failed never ran anywhere: restored whatever its queue.
    lost = getattr(old_qos, "_lost_tags", set())
    with channel.conn_or_acquire() as client:
        for tag, message in list(old_qos._delivered.items()):
            routing_key = message.delivery_info.get("routing_key")
            if routing_key not in RESTORABLE_QUEUES and tag not in lost:
                continue
            fallback = (message._raw, message.delivery_info["exchange"], routing_key)
            try:
                client.transaction(
                    lambda pipe, tag=tag, fallback=fallback: _requeue(pipe, channel, tag, fallback),
                    channel.unacked_key,
                )
            except LookupError:
                logger.error(
                    "delivery %s: no route to restore it; left to the visibility timeout", tag
                )
                continue
            old_qos._delivered.pop(tag, None)
            restored.add(tag)
    return len(restored)


def _requeue(pipe, channel, tag, fallback) -> None:
    """In one MULTI: drop the unacked record and push the message back (RPUSH: taken next)."""
    raw = pipe.hget(channel.unacked_key, tag)
    payload, exchange, routing_key = loads(bytes_to_str(raw)) if raw else fallback
    queues = channel._lookup(exchange, routing_key)
    if not queues:
        raise LookupError(f"no queue for {exchange!r}/{routing_key!r}")
    payload = loads(dumps(payload))
    payload.setdefault("headers", {})["redelivered"] = True
    payload.setdefault("properties", {}).setdefault("delivery_info", {})["redelivered"] = True
    pipe.multi()
    pipe.zrem(channel.unacked_index_key, tag)
    pipe.hdel(channel.unacked_key, tag)
    priority = channel._get_message_priority(payload, reverse=False)
    for queue in queues:
        pipe.rpush(channel._q_for_pri(queue, priority), dumps(payload))


_kombu_append = kombu_redis.QoS.append


def _append_keeping_lost(self, message, delivery_tag):
    """kombu's Redis ``QoS.append``, except that a message whose unacked record could not be
    written (BRPOP took it off the list, then the record's pipeline hit the dead broker) stays
    in the channel's ``_delivered``, the only place it still exists, for RestoreLostDeliveries."""
    try:
        _kombu_append(self, message, delivery_tag)
    except self.channel.connection_errors:
        kombu_virtual.QoS.append(self, message, delivery_tag)
        if not hasattr(self, "_lost_tags"):
            self._lost_tags = set()
        self._lost_tags.add(delivery_tag)
        logger.warning("delivery %s taken from the queue but not recorded as unacked", delivery_tag)
        raise


def install_redis_restore(app) -> None:
    kombu_redis.QoS.append = _append_keeping_lost
    app.steps["consumer"].add(RestoreLostDeliveries)
