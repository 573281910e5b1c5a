"""A worker container's metrics endpoint (``WORKER_METRICS_PORT``, tasks/metrics.py): what the
pool's processes counted, summed, served by the main process."""

import re
import urllib.request

from counters.models import Counter
from counters.services import counter_incr
from project.devservers import free_port

from ..helpers import counters_worker, publishing_to, wait_for


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def applied(text: str) -> float:
    found = re.search(r"^deltas_applied_total (\S+)$", text, flags=re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_a_counters_worker_serves_the_deltas_its_pool_applied(
    broker_url, database_url, cache_redis, worker_log_dir, tmp_path
):
    key, port = "article_views:worker-metrics", free_port()
    env = {"WORKER_METRICS_PORT": str(port), "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    with (
        publishing_to(broker_url),
        counters_worker(
            broker_url=broker_url, database_url=database_url, log_dir=worker_log_dir, env=env
        ),
    ):
        for _ in range(3):
            counter_incr(key=key)
        wait_for(lambda: Counter.objects.filter(key=key, value=3).exists(), what="the deltas")
        # Applied in the pool's children, served by the main process from the shared directory.
        wait_for(lambda: applied(scrape(port)) == 3, what="deltas_applied_total 3")
        assert "delta_apply_seconds_bucket" in scrape(port)
