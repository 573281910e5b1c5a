"""The counters' SQL, in one place: each statement is one round trip over arrays, so its text is
the same for every batch size (one prepared plan).
"""

from __future__ import annotations

LEDGER_INSERT = """
INSERT INTO counters_applieddelta (delta_id, key, amount, applied_at)
SELECT delta_id, key, amount, now() FROM unnest(%s::uuid[], %s::text[], %s::bigint[])
    AS batch(delta_id, key, amount)
ON CONFLICT (delta_id) DO NOTHING
RETURNING delta_id::text, key, amount
"""


# One upsert for the batch; rows in key order so concurrent batches lock them in the same order
# and cannot deadlock.
COUNTER_UPSERT = """
INSERT INTO counters_counter (key, value, version, updated_at)
SELECT key, total, 1, now() FROM unnest(%s::text[], %s::bigint[]) AS sums(key, total)
ORDER BY key
ON CONFLICT (key) DO UPDATE SET value = counters_counter.value + EXCLUDED.value,
    version = counters_counter.version + 1, updated_at = now()
RETURNING key, value, version
"""


# One statement, so one snapshot: the row and the ledger as of the same instant. Two queries
# would let a batch commit in between, and its deltas would then count both in the row and as
# still pending. Dead-lettered deltas (unless replayed) are no longer pending either.
RECONCILE_SNAPSHOT = """
SELECT c.value, c.version,
       ARRAY(SELECT delta_id::text FROM counters_applieddelta WHERE delta_id = ANY(%s::uuid[])),
       ARRAY(SELECT task_id FROM tasks_deadletter WHERE task_id = ANY(%s::text[])
             AND status <> 'replayed')
FROM (SELECT 1) AS one LEFT JOIN counters_counter c ON c.key = %s
"""
