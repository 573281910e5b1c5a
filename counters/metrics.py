"""Prometheus metrics of the counters (prometheus-client). How the processes' metrics are
aggregated: project/metrics.py."""

from prometheus_client import Counter, Histogram

increments = Counter("counter_increments", "Increments acknowledged to callers.", ["namespace"])
publish_failures = Counter(
    "counter_publish_failures", "Increments refused because the broker did not confirm them."
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
cache_reads = Counter("counter_cache_reads", "Counter reads from Redis.", ["result"])
