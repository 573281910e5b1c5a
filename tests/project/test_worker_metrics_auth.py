"""Issue 26 (10): a worker's metrics endpoint (WORKER_METRICS_PORT, tasks/metrics.py) asks for
the METRICS_TOKEN bearer, as the web's /metrics does; without a token it listens on the loopback
only. A real counters worker with the production settings and its compose environment (no
DJANGO_SECRET_KEY: it signs nothing)."""

import json
import urllib.error
import urllib.request

import psutil
import pytest

from project.devservers import free_port

from ..helpers import counters_worker


def scrape(port: int, token: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def listening_on(pid: int, port: int) -> set[str]:
    processes = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    return {
        c.laddr.ip
        for p in processes
        for c in p.net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    }


def production_env(port: int, tmp_path, token: str) -> dict[str, str]:
    return {
        "DJANGO_SETTINGS_MODULE": "project.settings.production",
        "DJANGO_ALLOWED_HOSTS": "shop.example.com",
        "DJANGO_SECRET_KEY": "",
        "WORKER_METRICS_PORT": str(port),
        "METRICS_TOKEN": token,
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
    }


@pytest.mark.django_db(transaction=True)
def test_the_workers_metrics_need_the_token(one_broker_url, database_url, worker_log_dir, tmp_path):
    port = free_port()
    env = production_env(port, tmp_path, token="scrape-me")
    with counters_worker(
        broker_url=one_broker_url, database_url=database_url, log_dir=worker_log_dir, env=env
    ):
        status, body = scrape(port)  # what anyone on the network did
        assert (status, json.loads(body)) == (401, {"error": "authentication required"})
        assert scrape(port, token="scrape-you")[0] == 401
        assert scrape(port, token="")[0] == 401
        status, body = scrape(port, token="scrape-me")  # Prometheus, with the token
        assert status == 200 and "delta_apply_seconds" in body


@pytest.mark.django_db(transaction=True)
def test_without_a_token_the_workers_metrics_stay_on_the_loopback(
    one_broker_url, database_url, worker_log_dir, tmp_path
):
    port = free_port()
    env = production_env(port, tmp_path, token="")
    with counters_worker(
        broker_url=one_broker_url, database_url=database_url, log_dir=worker_log_dir, env=env
    ) as worker:
        assert scrape(port)[0] == 200  # from the container itself
        assert listening_on(worker.process.pid, port) == {"127.0.0.1"}
