"""Read-only questions about the counters pipeline: what is still in flight."""

import json
import urllib.parse

from kombu import Connection

from project.celery import app

from .models import AppliedDelta

COUNTERS_QUEUE = "counters"


def pending_messages_count() -> int:
    """Delta messages the broker still holds: ready, delivered but unacknowledged, or delayed
    (a retry waiting out its countdown)."""
    url = app.conf.broker_url
    if url.startswith("redis"):
        return _redis_pending(url)
    return _rabbitmq_pending(url)


def _redis_pending(url: str) -> int:
    with Connection(url) as conn:
        channel = conn.default_channel
        ready = channel._size(COUNTERS_QUEUE)
        unacked = 0
        for raw in channel.client.hvals(channel.unacked_key):
            _, _, routing_key = json.loads(raw)
            unacked += routing_key == COUNTERS_QUEUE
        return ready + unacked


def _rabbitmq_pending(url: str) -> int:
    """Ready + unacknowledged per the management API (AMQP itself cannot see unacknowledged).

    The management API's figures lag by its statistics interval (5 s by default); callers that
    need "nothing left" must see zero for longer than that (``counters drain`` does)."""
    from tasks.selectors import rabbitmq_api

    vhost = urllib.parse.unquote(Connection(url).virtual_host or "/")
    queues = rabbitmq_api(f"queues/{urllib.parse.quote(vhost, safe='')}?columns=name,messages")
    return sum(
        int(queue.get("messages") or 0)
        for queue in queues
        if queue["name"] == COUNTERS_QUEUE or queue["name"].startswith("celery_delayed_")
    )


def applied_count() -> int:
    return AppliedDelta.objects.count()
