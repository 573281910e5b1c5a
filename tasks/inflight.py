"""The Redis broker's record of messages published and not yet done, kept where the broker keeps
its messages (AOF, noeviction), so a message the broker lost can be found and published again.

Why: kombu's Redis transport takes a message off its list (BRPOP) and records it as
unacknowledged in a second command; a worker (or the broker) that dies in between loses it, with
nothing left in the broker to restore it from. RabbitMQ has no such window, so there the record is
not kept.

The record is a hash ``inflight:<queue>``: field = message id (for an envelope, each delta's own
id: deltas are recorded, re-published and forgotten one by one, whatever message carried them),
value = JSON of what is needed to publish it again plus the time it was recorded. It is written
BEFORE the message is pushed, so no pushed message lacks a record: a record whose push then failed
belongs to a publish its caller saw fail (for a counter delta: cancelled in the ledger, so a
re-publish is a no-op). The consumer
forgets ids once they are done (applied, or recorded as dead letters); whatever else is older than
the redelivery window (``COUNTER_REPUBLISH_AFTER_S``) is stranded and published again.
"""

from __future__ import annotations

import json

PREFIX = "inflight:"


def _key(queue: str) -> str:
    return PREFIX + queue


def _client(app):
    # A connection of the app's broker pool: the record lives in the broker Redis itself.
    return app.pool.acquire(block=True)


def inflight_record(*, app, queue: str, message_id: str, payload: dict, now: float) -> None:
    inflight_record_many(app=app, queue=queue, records={message_id: payload}, now=now)


def inflight_record_many(*, app, queue: str, records: dict[str, dict], now: float) -> None:
    """Record several messages' items at once (an envelope's deltas, each under its own id)."""
    mapping = {
        item_id: json.dumps({**payload, "recorded_at": now}) for item_id, payload in records.items()
    }
    with _client(app) as conn:
        conn.default_channel.client.hset(_key(queue), mapping=mapping)


def inflight_forget(*, app, queue: str, message_ids: list[str]) -> None:
    if not message_ids:
        return
    with _client(app) as conn:
        conn.default_channel.client.hdel(_key(queue), *message_ids)


def inflight_older_than(*, app, queue: str, age_s: float, now: float) -> list[tuple[str, dict]]:
    """``(message id, payload)`` of the records older than ``age_s`` seconds."""
    old = []
    with _client(app) as conn:
        for raw_id, raw in conn.default_channel.client.hscan_iter(_key(queue), count=1000):
            payload = json.loads(raw)
            if now - float(payload.get("recorded_at", 0)) >= age_s:
                old.append((raw_id.decode() if isinstance(raw_id, bytes) else raw_id, payload))
    return old


def inflight_count(*, app, queue: str) -> int:
    with _client(app) as conn:
        return int(conn.default_channel.client.hlen(_key(queue)))
