"""G1 with a real fault: the counters' PostgreSQL is stopped while increments keep coming, then
started again; every acknowledged delta is applied exactly once. (The worker's database is an
embedded PostgreSQL of this test's own, so the shared test database is never stopped.)"""

import os
import subprocess
import sys
import time
import uuid

import psycopg
import pytest
from django.core.management import call_command

from counters import services
from project import devservers

from ..helpers import BASE_DIR, counters_worker, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def durable(url: str, key: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT value FROM counters_counter WHERE key = %s", [key]).fetchone()
        return row[0] if row else 0


def applied(url: str, key: str) -> int:
    with psycopg.connect(url) as conn:
        query = "SELECT count(*) FROM counters_applieddelta WHERE key = %s"
        return conn.execute(query, [key]).fetchone()[0]


def test_postgresql_stopped_and_started_again_loses_and_doubles_nothing(
    broker, cache_redis, worker_log_dir, tmp_path
):
    root = tmp_path / "pg"
    server = devservers.start_postgres(root=root)
    port = int(server.url.rsplit(":", 1)[1].split("/")[0])
    env = {
        **os.environ,
        "DATABASE_URL": server.url,
        "DJANGO_SETTINGS_MODULE": "project.settings.test",
    }
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=BASE_DIR, env=env,
                   check=True, timeout=120)  # fmt: skip
    key = f"article_views:pg-down-{uuid.uuid4().hex[:6]}"
    try:
        with counters_worker(
            broker_url=broker, database_url=server.url, log_dir=worker_log_dir,
            env={"TASK_RETRY_BACKOFF_BASE": "0.5", "DATABASE_CONNECT_TIMEOUT": "2"},
        ) as worker:  # fmt: skip
            for _ in range(10):
                services.counter_incr(key=key)
            wait_for(lambda: durable(server.url, key) == 10, what="the first deltas")
            server.stop()  # PostgreSQL is down
            for _ in range(20):
                services.counter_incr(key=key, amount=2)  # acknowledged while it is down
            wait_for(lambda: " retry " in worker.output(), timeout=60,
                     what="the worker to re-publish deltas it could not apply")  # fmt: skip
            time.sleep(3)  # let it fail and retry a while longer
            server = devservers.start_postgres(root=root, port=port)  # back, same data
            call_command("counters", "drain", "--timeout", "120")
            wait_for(lambda: durable(server.url, key) == 50, timeout=60, what="every delta")
        assert durable(server.url, key) == 50
        assert applied(server.url, key) == 30
    finally:
        server.stop()
