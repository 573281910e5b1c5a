"""Prometheus metrics (prometheus-client, the official library).

Web and worker processes are several processes (gunicorn workers, Celery pool children), so when
``PROMETHEUS_MULTIPROC_DIR`` is set (``make run`` sets it) the metrics are written there and
``/metrics`` aggregates all processes; otherwise each process reports its own.
"""

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

increments = Counter("counter_increments", "Increments acknowledged to callers.", ["namespace"])
publish_failures = Counter(
    "counter_publish_failures", "Increments refused because the broker did not confirm them."
)
publish_group_size = Histogram(
    "publish_group_size",
    "Messages published together before one wait for the broker's confirms (group commit).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
deltas_applied = Counter("deltas_applied", "Deltas newly applied to PostgreSQL.")
batch_size = Histogram(
    "delta_batch_size", "Deltas per applied batch.", buckets=(1, 5, 10, 50, 100, 250, 500, 1000)
)
apply_seconds = Histogram("delta_apply_seconds", "Time to apply one batch (one transaction).")
apply_lag_seconds = Histogram(
    "delta_apply_lag_seconds",
    "From a delta's publish to its commit in PostgreSQL.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
dead_letters = Counter("dead_letters", "Messages dead-lettered.", ["reason"])
cache_reads = Counter("counter_cache_reads", "Counter reads from Redis.", ["result"])


class PendingCollector:
    """``deltas_pending``: delta messages the broker still holds, read from the broker at scrape
    time (a gauge kept by one process would be wrong as soon as another published)."""

    def collect(self):
        from counters.selectors import pending_messages_count

        gauge = GaugeMetricFamily("deltas_pending", "Delta messages not yet applied (broker).")
        try:
            gauge.add_metric([], pending_messages_count())
        except Exception:  # noqa: S110 (an unreachable broker shows as a missing sample)
            pass
        yield gauge

        # The outbox, read from PostgreSQL at scrape time (tasks/outbox.py): a growing age means
        # no relay runs, or the broker refuses what it publishes.
        from tasks.outbox import outbox_stats

        waiting = GaugeMetricFamily("outbox_rows_waiting", "Outbox rows not yet published.")
        oldest = GaugeMetricFamily(
            "outbox_oldest_age_seconds", "Age of the oldest outbox row not yet published."
        )
        relays = GaugeMetricFamily("outbox_relays_alive", "Outbox relays that reported lately.")
        try:
            stats = outbox_stats()
            waiting.add_metric([], stats["waiting"])
            oldest.add_metric([], stats["oldest_age_s"] or 0)
            relays.add_metric([], len(stats["relays_alive"]))
        except Exception:  # noqa: S110 (an unreachable database shows as missing samples)
            pass
        yield waiting
        yield oldest
        yield relays
