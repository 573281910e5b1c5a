"""Durable hot counters, by path: write.py (``counter_incr``), publish.py (envelopes or single
messages, confirmed), read.py (``counter_get``, ``counter_get_many``, read repair),
partition.py (the batch partition, envelope unpacking: pure), apply.py (the batch task's ledger
+ upsert), reconcile.py (cache drift, stranded deltas); their SQL in sql.py.

The stable API (README) is imported from here: ``from counters.services import counter_incr``.
"""

from .apply import (
    BatchOutcome,
    counters_add,
    delta_batch_apply,
    delta_group_apply,
    ledger_prune,
)
from .common import APPLY_TASK, COUNTERS_QUEUE, DURABLE, EPHEMERAL
from .partition import IncomingDelta, deltas_partition, envelope_unpack, float_or_none
from .publish import (
    CounterUnavailable,
    delta_publish,
    delta_publish_from_outbox,
    delta_publish_single,
)
from .read import CounterReading, counter_fill, counter_get, counter_get_many
from .reconcile import Repair, counter_reconcile, delta_republish_stranded
from .sql import COUNTER_UPSERT, LEDGER_INSERT, RECONCILE_SNAPSHOT
from .write import Increment, counter_incr

__all__ = [
    "APPLY_TASK",
    "COUNTERS_QUEUE",
    "COUNTER_UPSERT",
    "DURABLE",
    "EPHEMERAL",
    "LEDGER_INSERT",
    "RECONCILE_SNAPSHOT",
    "BatchOutcome",
    "CounterReading",
    "CounterUnavailable",
    "IncomingDelta",
    "Increment",
    "Repair",
    "counter_fill",
    "counter_get",
    "counter_get_many",
    "counter_incr",
    "counter_reconcile",
    "counters_add",
    "delta_batch_apply",
    "delta_group_apply",
    "delta_publish",
    "delta_publish_from_outbox",
    "delta_publish_single",
    "delta_republish_stranded",
    "deltas_partition",
    "envelope_unpack",
    "float_or_none",
    "ledger_prune",
]
