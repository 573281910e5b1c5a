"""Flower shows the counters pipeline: each batch of delta messages (envelopes) is a task in
Flower's own HTTP API, with its state and how many deltas it held, on both brokers."""

import ast
import base64
import json
import urllib.request

import pytest

from counters.models import Counter
from counters.services import counter_incr

from ..helpers import FLOWER_CREDENTIALS, counters_worker, flower_server, publishing_to, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def flower_tasks(base_url: str, name: str) -> list[dict]:
    request = urllib.request.Request(f"{base_url}api/tasks?taskname={name}")
    token = base64.b64encode(":".join(FLOWER_CREDENTIALS).encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return list(json.loads(response.read()).values())


def test_each_counters_batch_is_a_task_in_flower_with_its_state_and_delta_count(
    broker_url, database_url, cache_redis, worker_log_dir
):
    key = "article_views:flower"
    # Flower first, so that it hears the worker's events from the first batch on.
    with (
        publishing_to(broker_url),
        flower_server(broker_url=broker_url) as flower,
        counters_worker(broker_url=broker_url, database_url=database_url, log_dir=worker_log_dir),
    ):
        for _ in range(5):
            counter_incr(key=key)
        wait_for(lambda: Counter.objects.filter(key=key, value=5).exists(), what="the deltas")

        def succeeded() -> list[dict]:
            tasks = flower_tasks(flower, "counters.apply_deltas")
            done = [t for t in tasks if t["state"] == "SUCCESS"]
            counted = sum(ast.literal_eval(t["kwargs"])["items"] for t in done)
            return done if counted == 5 else []

        batches = wait_for(succeeded, what="Flower to show the batches as succeeded")
    for batch in batches:
        messages = ast.literal_eval(batch["kwargs"])["messages"]
        assert ast.literal_eval(batch["result"]) == {
            "done": messages,
            "dead_lettered": 0,
            "given_back": 0,
        }
        assert batch["received"] and batch["started"] and batch["succeeded"]
        assert batch["worker"].startswith("test-")
