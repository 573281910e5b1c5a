"""What the broker holds, asked the same way on both brokers: its kind, and the messages in each
queue (ready, delivered but unacknowledged, delayed). The one place that reads queue depths."""

from __future__ import annotations

import base64
import http.client
import json
import urllib.error
import urllib.parse
import urllib.request

from django.conf import settings
from kombu import Connection

from .topology import DEAD_LETTER_QUEUE_NAME, WORK_QUEUES

QUEUE_NAMES = (*WORK_QUEUES, DEAD_LETTER_QUEUE_NAME)


def broker_kind(app) -> str:
    """``"redis"`` or ``"amqp"`` (RabbitMQ)."""
    scheme = app.conf.broker_url.split(":", 1)[0]
    return "redis" if scheme.startswith("redis") else "amqp"


def rabbitmq_api(path: str, *, method: str = "GET", body: dict | None = None):
    """Call RabbitMQ's management HTTP API; the decoded JSON answer (None if it has no body).

    ``RABBITMQ_MANAGEMENT_URL`` may list several nodes of a cluster, comma-separated: each is
    asked in turn until one answers (any node serves the whole cluster's figures), so the
    operations page and ``counters drain`` outlive the loss of a node."""
    urls = [u.strip() for u in settings.RABBITMQ_MANAGEMENT_URL.split(",") if u.strip()]
    for index, url in enumerate(urls):
        try:
            return _management_call(url, path, method=method, body=body)
        except urllib.error.HTTPError as exc:
            if exc.code < 500 or index == len(urls) - 1:
                raise  # the node answered (a missing vhost is missing on every node)
        except (OSError, http.client.HTTPException):  # refused, timed out, cut: the next node
            if index == len(urls) - 1:
                raise
    raise ValueError("RABBITMQ_MANAGEMENT_URL is empty")


def _management_call(url: str, path: str, *, method: str, body: dict | None):
    base = urllib.parse.urlsplit(url)
    if base.scheme not in ("http", "https"):
        raise ValueError("RABBITMQ_MANAGEMENT_URL must be an http(s) URL")
    request = urllib.request.Request(  # noqa: S310 (scheme checked above)
        f"{base.scheme}://{base.hostname}:{base.port or 15672}/api/{path}",
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"content-type": "application/json"},
    )
    if base.username:
        token = base64.b64encode(f"{base.username}:{base.password or ''}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    # Shorter than a frozen node would take, so the next node is asked in time.
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
        content = response.read()
    return json.loads(content) if content else None


def queue_stats(*, app) -> dict[str, dict[str, int]]:
    """Ready and unacknowledged messages per queue, on either broker."""
    url = app.conf.broker_url
    stats = {name: {"ready": 0, "unacked": 0} for name in QUEUE_NAMES}
    if url.startswith("redis"):
        with Connection(url) as conn:
            channel = conn.default_channel
            for name in QUEUE_NAMES:
                stats[name]["ready"] = channel._size(name)
            for raw in channel.client.hvals(channel.unacked_key):
                routing_key = json.loads(raw)[2]
                if routing_key in stats:
                    stats[routing_key]["unacked"] += 1
        return stats
    vhost = urllib.parse.unquote(Connection(url).virtual_host or "/")
    columns = "name,messages_ready,messages_unacknowledged,messages"
    for queue in rabbitmq_api(f"queues/{urllib.parse.quote(vhost, safe='')}?columns={columns}"):
        name = queue["name"]
        if name in stats:
            stats[name] = {
                "ready": int(queue.get("messages_ready") or 0),
                "unacked": int(queue.get("messages_unacknowledged") or 0),
            }
        elif name.startswith("celery_delayed_"):  # retries waiting out their countdown
            stats.setdefault("delayed", {"ready": 0, "unacked": 0})
            stats["delayed"]["ready"] += int(queue.get("messages") or 0)
    return stats


def queue_pending(*, app, queue: str) -> int:
    """Messages of ``queue`` the broker still holds: ready, delivered but unacknowledged, or
    delayed (a retry waiting out its countdown; RabbitMQ keeps those in shared delay queues, so
    every delayed message counts). RabbitMQ's figures come from the management API and lag by its
    statistics interval (5 s by default): a caller that needs "nothing left" must see zero for
    longer than that (``counters drain`` does)."""
    stats = queue_stats(app=app)
    held = stats.get(queue, {"ready": 0, "unacked": 0})
    return held["ready"] + held["unacked"] + stats.get("delayed", {"ready": 0})["ready"]
