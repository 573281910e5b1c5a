"""Prometheus metrics of task delivery (prometheus-client). How the processes' metrics are
aggregated: project/metrics.py."""

from prometheus_client import Counter, Histogram

publish_group_size = Histogram(
    "publish_group_size",
    "Messages published together before one wait for the broker's confirms (group commit).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
dead_letters = Counter("dead_letters", "Messages dead-lettered.", ["reason"])
envelope_size = Histogram(
    "envelope_size",
    "Items (counter deltas) per envelope message, as published (tasks/envelopes.py).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 500),
)
