"""Repairs: the cached counters against PostgreSQL and the ledger (``counter_reconcile``), and the
deltas the Redis broker lost (``delta_republish_stranded``). Run by beat.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass

import redis.exceptions
from django.conf import settings
from django.db import connection

from tasks.app import app
from tasks.broker import broker_kind
from tasks.inflight import inflight_forget, inflight_older_than
from tasks.models import DeadLetter

from .. import cache
from ..models import AppliedDelta
from .common import COUNTERS_QUEUE, valid_uuids
from .publish import delta_publish_single
from .sql import RECONCILE_SNAPSHOT

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Repair:
    key: str
    before: int
    after: int
    detail: str


def counter_reconcile(
    *, tombstone_age_s: float = 600.0, republish_after_s: float | None = None
) -> list[Repair]:
    """Compare each cached counter with PostgreSQL + its pending deltas and repair the drift, then
    re-publish stranded deltas (``delta_republish_stranded``).

    Repairs: a ``durable``/``version`` older than the database (an ``apply`` that never reached
    Redis); pending entries whose delta the ledger shows as applied (counted twice); tombstones
    older than ``tombstone_age_s`` (left by a web process killed between its publish and its
    Redis update: the delta was counted by the worker, the bump never came). Optimistic: a hash
    that changes while it is being checked is checked again.
    """
    client = cache.client()
    repairs = []
    now = time.time()
    for raw_key in client.scan_iter(match=cache.PREFIX + "*", count=500):
        hash_key = raw_key.decode()
        key = hash_key[len(cache.PREFIX) :]
        for _ in range(10):
            with client.pipeline() as pipe:
                try:
                    pipe.watch(hash_key)
                    repair = _reconcile_one(pipe, hash_key, key, now, tombstone_age_s)
                except redis.exceptions.WatchError:
                    continue
            if repair:
                repairs.append(repair)
            break
    return repairs + delta_republish_stranded(republish_after_s=republish_after_s)


def delta_republish_stranded(*, republish_after_s: float | None = None) -> list[Repair]:
    """Publish again, under their own ids, the deltas the Redis broker recorded as published
    (tasks/inflight.py) more than ``republish_after_s`` ago (default ``COUNTER_REPUBLISH_AFTER_S``)
    that are neither in the ledger nor dead-lettered (a replayed dead letter is live again);
    forget those applied, cancelled or discarded.

    Such a delta was acknowledged, so its message must exist; on the Redis broker it can be gone
    (lost between kombu's BRPOP and its unacknowledged record when a worker or the broker dies).
    A copy of a delta that still exists is absorbed by the ledger. RabbitMQ keeps no record: a
    message it confirmed stays in its queue until it is acknowledged or dead-lettered.
    """
    if broker_kind(app) != "redis":
        return []
    if republish_after_s is None:
        republish_after_s = settings.COUNTER_REPUBLISH_AFTER_S
    now = time.time()
    old = dict(inflight_older_than(app=app, queue=COUNTERS_QUEUE, age_s=republish_after_s, now=now))
    stranded: dict[str, list[tuple[str, int]]] = defaultdict(list)
    ids = list(old)
    for start in range(0, len(ids), 1000):
        chunk = ids[start : start + 1000]
        done = {
            str(i)
            for i in AppliedDelta.objects.filter(delta_id__in=valid_uuids(chunk)).values_list(
                "delta_id", flat=True
            )
        }
        letters = dict(
            DeadLetter.objects.filter(task_id__in=chunk).values_list("task_id", "status")
        )
        done |= {i for i, status in letters.items() if status == DeadLetter.Status.DISCARDED}
        dead = {i for i, status in letters.items() if status == DeadLetter.Status.DEAD}
        inflight_forget(app=app, queue=COUNTERS_QUEUE, message_ids=[i for i in chunk if i in done])
        for delta_id in chunk:
            if delta_id not in done and delta_id not in dead:  # a replayed one is live again
                payload = old[delta_id]
                delta_publish_single(
                    delta_id=delta_id,
                    key=payload["key"],
                    amount=payload["amount"],
                    published_at=payload.get("published_at"),
                )
                logger.warning(
                    "delta %s %s %+d re-published: recorded %.0fs ago, not applied",
                    delta_id,
                    payload["key"],
                    payload["amount"],
                    now - payload["recorded_at"],
                )
                stranded[payload["key"]].append((delta_id, payload["amount"]))
    repairs = []
    for key, entries in stranded.items():
        total = sum(amount for _, amount in entries)
        detail = f"re-published {len(entries)} stranded deltas"
        repairs.append(Repair(key=key, before=total, after=total, detail=detail))
    return repairs


def _reconcile_one(
    pipe, hash_key: str, key: str, now: float, tombstone_age_s: float
) -> Repair | None:
    fields = {k.decode(): v.decode() for k, v in pipe.hgetall(hash_key).items()}
    if "durable" not in fields:
        return None
    durable, version = int(fields["durable"]), int(fields["version"])
    pending_sum = int(fields.get("pending", 0))
    entries = {f[2:]: cache.pending_entry(v)[0] for f, v in fields.items() if f.startswith("d:")}
    old_tombstones = [
        f for f, v in fields.items() if f.startswith("a:") and now - float(v) > tombstone_age_s
    ]
    ids = [str(i) for i in valid_uuids(list(entries))]
    with connection.cursor() as cursor:
        cursor.execute(RECONCILE_SNAPSHOT, [ids, ids, key])
        db_value, db_version, applied_ids, dead_ids = cursor.fetchone()
    db_value, db_version = db_value or 0, db_version or 0
    applied = set(applied_ids) | set(dead_ids)  # no longer pending, either way
    new_durable, new_version = (
        (db_value, db_version) if db_version >= version else (durable, version)
    )
    still_pending = {i: a for i, a in entries.items() if i not in applied}
    new_pending = sum(still_pending.values())
    before, after = durable + pending_sum, new_durable + new_pending
    # Out-of-order applies kept for versions the hash now has (cache.py): never to be replayed.
    kept = [f for f in fields if f.startswith("v:")]
    passed = [f for f in kept if int(f[2:]) <= new_version]
    if (new_durable, new_version, new_pending) == (durable, version, pending_sum) and not (
        applied or old_tombstones or passed
    ):
        return None
    pipe.multi()
    pipe.hset(
        hash_key, mapping={"durable": new_durable, "version": new_version, "pending": new_pending}
    )
    stale = [f"d:{i}" for i in applied] + old_tombstones + passed
    if passed and len(passed) == len(kept):
        stale += ["stashed", "stashed_at"]
    elif passed:
        pipe.hset(hash_key, "stashed", len(kept) - len(passed))
    if stale:
        pipe.hdel(hash_key, *stale)
    pipe.execute()
    detail = (
        f"database {db_value} (v{db_version}) + {len(still_pending)} pending ({new_pending}); "
        f"dropped {len(applied)} applied pending entries, {len(old_tombstones)} old tombstones"
    )
    return Repair(key=key, before=before, after=after, detail=detail)
