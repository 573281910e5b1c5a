"""Every fault of issue 5, on each broker: real servers and processes, a load that logs each
operation's outcome, the fault, a drain, and the checker (tests/faults/checker.py)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from ..helpers import BASE_DIR, wait_for
from .checker import Verdict, check, read_history
from .cluster import Cluster

PG_DOWN_S = 60  # the figure: longer than any retry countdown, so deltas wait and retry
PG_HUNG_S = 10
WARM_OPS = 30  # operations logged before the fault is injected


@dataclass
class Run:
    """What a scenario's fault function can use."""

    cluster: Cluster
    keys: list[str]
    special: str  # a key of the scenario's own (poison, ...), not in the load's keys
    log: object
    checks: list[Callable[[Verdict], None]] = field(default_factory=list)

    def incr(self, key: str, amount: int = 1) -> None:
        """An increment sent by the harness itself, logged like the load's."""
        status, body = self.cluster.http("POST", f"/api/counters/{key}/incr", {"amount": amount},
                                         timeout=20)  # fmt: skip
        outcome = (
            "ok" if status == 200 else ("failed" if body.get("counted") is False else "unknown")
        )
        self.log.write(json.dumps({"op": "incr", "via": "harness", "key": key, "amount": amount,
                                   "outcome": outcome, "delta_id": body.get("delta_id"),
                                   "status": status, "t": time.time()}) + "\n")  # fmt: skip
        self.log.flush()


def wait_ok_ops(path, count: int, *, after: float = 0.0, timeout: float = 90) -> None:
    def enough():
        history = read_history(path)
        return sum(1 for e in history if e.get("outcome") == "ok" and e["t"] > after) >= count

    wait_for(enough, timeout=timeout, interval=0.25, what=f"{count} successful operations")


# --- faults ---------------------------------------------------------------------------------


def budget_spent(run: Run, point: str) -> None:
    client = run.cluster.cache_client()
    wait_for(lambda: int(client.get(f"fault:budget:{point}") or 0) <= 0, timeout=60,
             what=f"the {point} injections")  # fmt: skip


def child_kill_before_commit(run: Run) -> None:
    budget_spent(run, "kill_before_commit")


def kill_after_commit(run: Run) -> None:
    budget_spent(run, "kill_after_commit")


def worker_main_kill(run: Run) -> None:
    run.cluster.procs["counters-worker"].kill()
    time.sleep(1)
    # A second worker takes over (on Redis, the first one's messages come back after the
    # visibility timeout).
    run.cluster.start_worker("counters-worker", as_name="counters-worker-2")


def cache_flushall(run: Run) -> None:
    client = run.cluster.cache_client()
    for _ in range(4):
        client.flushall()
        time.sleep(0.5)


def cache_restart_empty(run: Run) -> None:
    run.cluster.servers["cache"].process.kill()
    run.cluster.servers["cache"].process.wait()
    time.sleep(2)
    run.cluster.start_cache()


def cache_eviction(run: Run) -> None:
    client = run.cluster.cache_client()
    filler = "x" * 20_000
    for i in range(400):
        client.set(f"filler:{i}", filler)
        time.sleep(0.005)
    evicted = int(client.info("stats")["evicted_keys"])
    assert evicted > 0, "the cache evicted nothing: the scenario did not happen"


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=120)


def broker_restart(run: Run) -> None:
    if run.cluster.broker == "amqp":
        rabbitmqctl("stop_app")
        try:
            time.sleep(3)
        finally:
            rabbitmqctl("start_app")
            rabbitmqctl("await_startup")
    else:
        server = run.cluster.servers["broker"]
        server.process.kill()  # SIGKILL: what it has confirmed is in its AOF (fsync always)
        server.process.wait()
        time.sleep(2)
        run.cluster.start_broker_redis()


def memory_alarm(run: Run) -> None:
    """Publishing must fail loudly (a 503 saying not counted), never drop silently."""
    if run.cluster.broker == "amqp":
        out = subprocess.run(
            ["rabbitmqctl", "-q", "eval", "vm_memory_monitor:get_vm_memory_high_watermark()."],
            capture_output=True, text=True, check=True, timeout=60,
        ).stdout.strip()  # fmt: skip
        previous = out if out.replace(".", "", 1).isdigit() else "0.4"
        rabbitmqctl("set_vm_memory_high_watermark", "0.0000001")
        try:
            time.sleep(8)
            run.incr(run.special)  # must come back 503 within the publish timeout
        finally:
            rabbitmqctl("set_vm_memory_high_watermark", previous)
    else:
        import redis

        client = redis.Redis.from_url(run.cluster.broker_url)
        client.config_set("maxmemory", "1")  # noeviction: every write is refused with OOM
        try:
            time.sleep(8)
            run.incr(run.special)
        finally:
            client.config_set("maxmemory", "0")

    def alarm_answered_503(verdict: Verdict) -> None:
        history = read_history(run.cluster.root / "harness.jsonl")
        if [e["outcome"] for e in history if e["key"] == run.special] != ["failed"]:
            verdict.problems.append(f"an increment during the alarm was not a clear 503: {history}")

    run.checks.append(alarm_answered_503)


def postgres_down(run: Run) -> None:
    run.cluster.servers["postgres"].stop()
    time.sleep(PG_DOWN_S)
    run.cluster.start_postgres()


def postgres_hung(run: Run) -> None:
    process = run.cluster.servers["postgres"].process
    os.killpg(process.pid, signal.SIGSTOP)  # the postmaster and every backend
    try:
        time.sleep(PG_HUNG_S)
    finally:
        os.killpg(process.pid, signal.SIGCONT)


def poison_raise(run: Run) -> None:
    for _ in range(3):
        run.incr(run.special, 2)
    wait_for(lambda: dead_letters(run) >= 3, timeout=60, what="the poison deltas dead-lettered")


def poison_kill(run: Run) -> None:
    for _ in range(2):
        run.incr(run.special, 2)
    wait_for(lambda: dead_letters(run) >= 2, timeout=120, what="the poison deltas dead-lettered")

    def reason_is_delivery_limit(verdict: Verdict) -> None:
        with run.cluster.db() as db:
            reasons = {r for (r,) in db.execute("SELECT reason FROM tasks_deadletter")}
        if reasons != {"delivery_limit"}:
            verdict.problems.append(f"dead-letter reasons {reasons}, expected delivery_limit")

    run.checks.append(reason_is_delivery_limit)


def dead_letters(run: Run) -> int:
    try:
        with run.cluster.db() as db:
            return db.execute("SELECT count(*) FROM tasks_deadletter").fetchone()[0]
    except Exception:
        return 0


def publish_twice(run: Run) -> None:
    time.sleep(4)  # every delta of the first key is published twice, all along


def web_kill_after_publish(run: Run) -> None:
    budget_spent(run, "kill_after_publish")


@dataclass(frozen=True)
class Scenario:
    name: str
    fault: Callable[[Run], None]
    faults: str = ""  # COUNTER_FAULTS; {key} is the load's first key, {special} the scenario's
    budget: tuple[str, int] | None = None
    cache_extra: tuple[str, ...] = ()


SCENARIOS = [
    Scenario("worker child SIGKILL before commit", child_kill_before_commit,
             "kill_before_commit={key}", ("kill_before_commit", 3)),
    Scenario("worker killed after commit, before ack", kill_after_commit,
             "kill_after_commit={key}", ("kill_after_commit", 3)),
    Scenario("worker main process SIGKILL", worker_main_kill),
    Scenario("cache FLUSHALL", cache_flushall),
    Scenario("cache restarted empty", cache_restart_empty),
    Scenario("cache evicting (maxmemory 2mb)", cache_eviction,
             cache_extra=("--maxmemory", "2mb", "--maxmemory-samples", "3")),
    Scenario("broker restart", broker_restart),
    Scenario("broker memory alarm", memory_alarm),
    Scenario(f"PostgreSQL stopped {PG_DOWN_S} s", postgres_down),
    Scenario(f"PostgreSQL hung (SIGSTOP {PG_HUNG_S} s)", postgres_hung),
    Scenario("poison delta that raises", poison_raise, "raise={special}"),
    Scenario("poison delta that kills its worker", poison_kill, "kill_before_commit={special}"),
    Scenario("same delta published twice", publish_twice, "publish_twice={key}"),
    Scenario("web killed between publish and cache update", web_kill_after_publish,
             "kill_after_publish={key}", ("kill_after_publish", 3)),
]  # fmt: skip


@pytest.mark.parametrize("broker", ["amqp", "redis"])
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_fault(scenario, broker, template, amqp_base, tmp_path, record_result):
    run_id = uuid.uuid4().hex[:6]
    keys = [f"article_views:fault-{run_id}-{i}" for i in range(3)]
    special = f"article_likes:fault-{run_id}-special"
    cluster = Cluster(
        root=tmp_path, broker=broker, template=template["root"], amqp_base=amqp_base,
        faults=scenario.faults.format(key=keys[0], special=special),
        cache_extra=list(scenario.cache_extra),
    )  # fmt: skip
    verdict = Verdict(scenario=scenario.name, broker=broker)
    load = None
    try:
        cluster.start_servers()
        if scenario.budget:
            point, count = scenario.budget
            cluster.cache_client().set(f"fault:budget:{point}", count)
        cluster.start_processes()
        ops_log, stop_file = tmp_path / "ops.jsonl", tmp_path / "stop"
        config = {
            "web": f"http://127.0.0.1:{cluster.web_port}", "keys": keys, "log": str(ops_log),
            "stop_file": str(stop_file), "pause": 0.02, "account": template["account"],
            "token": template["token"], "skus": template["skus"],
            "database_url": cluster.database_url,
        }  # fmt: skip
        (tmp_path / "load.json").write_text(json.dumps(config))
        with open(tmp_path / "load.log", "wb") as out:
            argv = [sys.executable, "-m", "tests.faults.load", str(tmp_path / "load.json")]
            # The fault points are the servers' (web, workers), not the client's.
            env = {**cluster.env(), "COUNTER_FAULTS": ""}
            load = subprocess.Popen(argv, cwd=BASE_DIR, env=env, stdout=out,
                                    stderr=subprocess.STDOUT)  # fmt: skip
        wait_ok_ops(ops_log, WARM_OPS)
        with open(tmp_path / "harness.jsonl", "a") as harness_log:
            run = Run(cluster=cluster, keys=keys, special=special, log=harness_log)
            scenario.fault(run)
        recovered = time.time()
        wait_ok_ops(ops_log, 15, after=recovered, timeout=180)  # the system works again
        stop_file.touch()
        load.wait(180)
        verdict.drain_s = cluster.drain()
        # What operations run on a schedule (beat): reconcile the cache and re-publish pending
        # deltas that are neither applied nor dead-lettered (a message the broker lost).
        done = cluster.manage("counters", "reconcile", "--republish-after", "0")
        if done.returncode != 0:
            verdict.problems.append(f"counters reconcile failed: {done.stderr[-500:]}")
        verdict.republished = sum(
            int(m.group(1)) for m in re.finditer(r"re-published (\d+) stranded", done.stdout)
        )
        if verdict.republished:
            verdict.drain_s += cluster.drain()
        verdict.restarts = cluster.restarts
        for extra_check in run.checks:
            extra_check(verdict)
        history = read_history(ops_log, tmp_path / "harness.jsonl")
        with cluster.db() as db:
            check(verdict=verdict, history=history, db=db, initial_stock=template["stock"])
            durable = dict(db.execute("SELECT key, value FROM counters_counter").fetchall())
        for key in keys:  # after the drain the cache agrees with PostgreSQL (G5, exact)
            status, body = cluster.http("GET", f"/api/counters/{key}")
            if status != 200 or body["value"] != durable.get(key, 0):
                verdict.problems.append(f"{key}: read {body} after the drain, durable "
                                        f"{durable.get(key, 0)}")  # fmt: skip
    except Exception as exc:
        verdict.problems.append(f"harness: {type(exc).__name__}: {exc}")
        raise
    finally:
        if load is not None and load.poll() is None:
            load.kill()
            load.wait()
        cluster.stop()
        record_result(verdict.as_dict())
    assert verdict.passed, "\n".join(verdict.problems)
