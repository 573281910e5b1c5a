"""Read-only questions about the counters pipeline: what is still in flight."""

import base64
import json
import urllib.parse
import urllib.request

from django.conf import settings
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
    vhost = urllib.parse.unquote(Connection(url).virtual_host or "/")
    base = urllib.parse.urlsplit(settings.RABBITMQ_MANAGEMENT_URL)
    if base.scheme not in ("http", "https"):
        raise ValueError("RABBITMQ_MANAGEMENT_URL must be an http(s) URL")
    request = urllib.request.Request(  # noqa: S310 (scheme checked above)
        f"{base.scheme}://{base.hostname}:{base.port or 15672}/api/queues/"
        f"{urllib.parse.quote(vhost, safe='')}?columns=name,messages"
    )
    if base.username:
        token = base64.b64encode(f"{base.username}:{base.password or ''}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (configured URL)
        queues = json.load(response)
    return sum(
        int(queue.get("messages") or 0)
        for queue in queues
        if queue["name"] == COUNTERS_QUEUE or queue["name"].startswith("celery_delayed_")
    )


def applied_count() -> int:
    return AppliedDelta.objects.count()
