"""Prometheus metrics of task delivery (prometheus-client). How the processes' metrics are
aggregated: project/metrics.py."""

import os

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


def worker_metrics_serve(*, port: int) -> None:
    """Serve this worker's metrics on ``http://0.0.0.0:<port>/metrics`` from a thread of its main
    process: with ``PROMETHEUS_MULTIPROC_DIR``, what every process of the container wrote there
    (the pool's children apply the deltas); otherwise the main process's own. Unauthenticated,
    like a Prometheus exporter: for the internal network only (compose does not publish it)."""
    from prometheus_client import REGISTRY, CollectorRegistry, multiprocess, start_http_server

    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    start_http_server(port, registry=registry)
