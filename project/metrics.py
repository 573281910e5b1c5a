"""Prometheus metrics (prometheus-client, the official library): each app defines its own
(counters/metrics.py, tasks/metrics.py); here, the gauges read at scrape time.

Web and worker processes are several processes (gunicorn workers, Celery pool children), so when
``PROMETHEUS_MULTIPROC_DIR`` is set (``make run`` sets it) the metrics are written there and
``/metrics`` aggregates all processes; otherwise each process reports its own.
"""

from prometheus_client.core import GaugeMetricFamily

from counters.selectors import pending_messages_count
from tasks.outbox import outbox_stats


class PendingCollector:
    """``deltas_pending``: delta messages the broker still holds, read from the broker at scrape
    time (a gauge kept by one process would be wrong as soon as another published)."""

    def collect(self):
        gauge = GaugeMetricFamily("deltas_pending", "Delta messages not yet applied (broker).")
        try:
            gauge.add_metric([], pending_messages_count())
        except Exception:  # noqa: S110 (an unreachable broker shows as a missing sample)
            pass
        yield gauge

        # The outbox, read from PostgreSQL at scrape time (tasks/outbox.py): a growing age means
        # no relay runs, or the broker refuses what it publishes.
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
