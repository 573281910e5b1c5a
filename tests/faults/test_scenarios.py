"""Every scenario of the suite, on each broker it exists on (``SCENARIOS``, ``CASES``): real
servers and processes, a load that logs each operation's outcome, the fault (its functions are in
tests/faults/scenarios.py), a drain, and the checker (tests/faults/checker.py)."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from project.rabbitcluster import RabbitCluster
from tasks.broker import rabbitmq_api

from ..helpers import BASE_DIR, wait_for
from . import scenarios as sc
from .checker import RECOVERY_GRACE_S, RECOVERY_OKS, Expect, Verdict, history_since
from .cluster import Cluster
from .load import SERVICE_AUTH, incr_outcome
from .settle import DRAIN_TIMEOUT_S, settle_and_check

WARM_OPS = 30  # ok increments logged before the fault is injected (half by HTTP, half by API)
POOL_SIGKILL = r"exited with 'signal 9 \(SIGKILL\)'"  # billiard, of a pool process
WEB_SIGKILL = r"was sent SIGKILL"  # gunicorn, of a worker


@dataclass
class Run:
    """What a scenario's fault function can use."""

    cluster: Cluster
    keys: list[str]
    special: str  # a key of the scenario's own (poison, ...), not in the load's keys
    log: object
    verdict: Verdict
    checks: list[Callable[[Verdict], None]] = field(default_factory=list)
    tx_keys: list[str] = field(default_factory=list)  # the load's in-transaction increments
    hold_file: Path | None = None  # the load's orders and tx increments start when it exists

    @property
    def history_path(self) -> Path:
        return self.cluster.root / "ops.jsonl"

    def incr(self, key: str, amount: int = 1) -> None:
        """An increment sent by the harness itself, logged like the load's."""
        t0 = time.time()
        status, body = self.cluster.http(
            "POST",
            f"/api/counters/{key}/incr",
            {"amount": amount},
            headers=SERVICE_AUTH,
            timeout=20,
        )
        t = time.time()
        outcome, cause = incr_outcome(status, body)
        entry = {"op": "incr", "via": "harness", "key": key, "amount": amount, "status": status}
        entry.update(outcome=outcome, cause=cause, delta_id=body.get("delta_id"), t0=t0, t=t)
        self.log.write(json.dumps({**entry, "dur": round(t - t0, 3)}) + "\n")
        self.log.flush()

    def wait_oks(self, count: int, *, after: float, timeout: float = 60) -> None:
        """Until the load has ``count`` ok increments of each kind started after ``after``."""
        wait_ok_increments(self.history_path, count, after=after, timeout=timeout)

    def prove(self, bit: bool, what: str) -> None:
        """Record that the fault bit (a note), or that it did not (a problem)."""
        if bit:
            self.verdict.notes.append(f"fault bit: {what}")
        else:
            self.verdict.problems.append(f"the fault did not bite: {what}")

    def log_matches(self, pattern: str, logs: str = "counters-worker*.log") -> list[str]:
        paths = sorted(self.cluster.root.glob(logs))
        return [m for p in paths for m in re.findall(pattern, p.read_text(errors="replace"))]

    def prove_sigkills(self, count: int, what: str, logs: str = "counters-worker*.log") -> None:
        """That ``count`` processes were SIGKILLed, from the logs of their parents (the Celery
        pool's, or gunicorn's for ``web.log``)."""
        sigkill = WEB_SIGKILL if logs == "web.log" else POOL_SIGKILL
        deadline = time.monotonic() + 30  # a parent notices and logs a dead child a bit later
        while (killed := len(self.log_matches(sigkill, logs))) < count:
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
        self.prove(killed >= count, f"{killed} {what} SIGKILLed (logged), expected {count}")

    def prove_redelivered(self, why: str) -> None:
        """After the run: that copies of deltas reached the ledger in a later transaction than
        the first (the sum of K over the counters workers' lines ``batch committed: N deltas, M
        new, K already applied, C counters``, and of D in ``redelivered: D deltas found in the
        ledger``: a redelivered envelope's deltas are looked up before anything runs)."""

        def check(verdict: Verdict) -> None:
            found = self.log_matches(r"batch committed: \d+ deltas, \d+ new, (\d+) already applied")
            # A redelivered envelope's deltas are looked up in the ledger before it runs.
            found += self.log_matches(r"redelivered: (\d+) deltas found in the ledger")
            k = sum(int(n) for n in found)
            what = f"{k} deltas reached the ledger again in a later transaction ({why})"
            self.prove(k > 0, what if found else "no 'K already applied' in the worker logs")

        self.checks.append(check)

    def held_deltas(self) -> int:
        """Counter deltas delivered to a worker and not acknowledged, as the broker sees them (on
        RabbitMQ, as of the management API's last sample)."""
        if self.cluster.broker == "redis":
            with contextlib.closing(self.cluster.broker_client()) as client:
                return sum(json.loads(raw)[2] == "counters" for raw in client.hvals("unacked"))
        queue = rabbitmq_api(f"queues/{urllib.parse.quote(self.cluster.vhost, safe='')}/counters")
        return int(queue.get("messages_unacknowledged") or 0)

    def answers(self, server: str) -> bool:
        """Whether RabbitMQ accepts a connection, or PostgreSQL answers one (within 5 s)."""
        try:
            if server == "amqp":
                url = urllib.parse.urlparse(self.cluster.amqp_base)
                socket.create_connection((url.hostname, url.port or 5672), timeout=2).close()
            else:
                self.cluster.db().close()
            return True
        except Exception:
            return False


@dataclass(frozen=True)
class Scenario:
    name: str
    fault: Callable[[Run], None]
    faults: str = ""  # COUNTER_FAULTS; {key} is the load's first key, {special} the scenario's
    budget: tuple[str, int] | None = None
    cache_extra: tuple[str, ...] = ()
    brokers: tuple[str, ...] = ("amqp", "redis")  # where the fault exists
    poison: bool = False  # the dead letters are exactly the special key's deltas
    visibility_timeout: int | None = None  # the Redis broker's, if not the suite's short one
    answer_bound: bool = False  # every increment answers ok/failed within the documented bound
    apply_within_s: float | None = None  # every ok delta applied (and the drain done) this soon
    relay_kill_after: int | None = None  # OUTBOX_FAULT_KILL_AFTER of the outbox relay
    # The load also increments inside transactions, and its orders and those increments start
    # only when the fault function creates the hold file.
    outbox_load: bool = False
    rabbit_nodes: int = 0  # a RabbitMQ cluster of this many new nodes instead of the machine's
    # Web servers and counters workers (each its own process group, as on separate machines):
    # the scenario runs once per layout.
    layouts: tuple[int, ...] = (1,)


# The cluster scenarios: RabbitMQ only, on a three-node cluster of their own
# (project/rabbitcluster.py), every process given all three nodes as failover URLs.
CLUSTER = {"brokers": ("amqp",), "rabbit_nodes": 3, "layouts": (1, 2)}


SCENARIOS = [
    Scenario(
        "worker child SIGKILL before commit",
        sc.child_kill_before_commit,
        "kill_before_commit={key}",
        ("kill_before_commit", 3),
    ),
    Scenario(
        "worker killed after commit, before ack",
        sc.kill_after_commit,
        "kill_after_commit={key}",
        ("kill_after_commit", 3),
    ),
    Scenario("worker main process SIGKILL", sc.worker_main_kill),
    Scenario("cache FLUSHALL", sc.cache_flushall),
    Scenario("cache restarted empty", sc.cache_restart_empty),
    Scenario(
        "cache evicting (maxmemory 2mb)",
        sc.cache_eviction,
        cache_extra=("--maxmemory", "2mb", "--maxmemory-samples", "3"),
    ),
    Scenario("broker restart", sc.broker_restart),
    Scenario("broker memory alarm", sc.memory_alarm),
    Scenario(f"PostgreSQL stopped {sc.PG_DOWN_S} s", sc.postgres_down),
    Scenario(f"PostgreSQL hung (SIGSTOP {sc.PG_HUNG_S} s)", sc.postgres_hung),
    Scenario("poison delta that raises", sc.poison_raise, "raise={special}", poison=True),
    Scenario(
        "poison delta that kills its worker",
        sc.poison_kill,
        "kill_before_commit={special}",
        poison=True,
    ),
    Scenario("same delta published twice", sc.publish_twice, "publish_twice={key}"),
    Scenario(
        "web killed between publish and cache update",
        sc.web_kill_after_publish,
        "kill_after_publish={key}",
        ("kill_after_publish", 3),
    ),
    Scenario(f"PostgreSQL read-only {sc.PG_READ_ONLY_S} s", sc.postgres_read_only),
    Scenario(
        f"broker Redis frozen {sc.BROKER_FROZEN_S} s",
        sc.broker_frozen,
        brokers=("redis",),
        answer_bound=True,
    ),
    # The cache is flushed as the worker dies: recovery (on Redis, of a delta the broker lost
    # between its BRPOP and its unacked record too) must not come from the cache.
    Scenario("worker main process SIGKILL + cache FLUSHALL", sc.worker_kill_cache_flush),
    Scenario(
        "broker restart, production timeouts",
        sc.broker_restart_holding,
        visibility_timeout=sc.PRODUCTION_VISIBILITY_TIMEOUT_S,
        apply_within_s=60,
    ),
    # Orders and in-transaction increments commit while the broker is down (outbox rows); the
    # relay publishes the backlog when it is back and is SIGKILLed once in the middle of it.
    Scenario(
        "broker down at commit",
        sc.broker_down_at_commit,
        visibility_timeout=sc.PRODUCTION_VISIBILITY_TIMEOUT_S,
        apply_within_s=60,
        relay_kill_after=sc.RELAY_KILL_AFTER,
        outbox_load=True,
    ),
    Scenario(
        "cluster: the counters queue's leader node SIGKILLed", sc.cluster_leader_kill, **CLUSTER
    ),
    Scenario(
        f"cluster: a node paused (SIGSTOP {sc.CLUSTER_PAUSE_S} s) and back",
        sc.cluster_node_paused,
        **CLUSTER,
    ),
    Scenario("cluster: rolling restart of the three nodes", sc.cluster_rolling_restart, **CLUSTER),
]

# Which scenario runs on which broker: every one on both, except "broker Redis frozen" (Redis
# broker only: RabbitMQ's memory alarm is its blocked-broker case).
CASES = [
    (scenario, broker, copies)
    for scenario in SCENARIOS
    for broker in scenario.brokers
    for copies in scenario.layouts
]


def case_id(scenario: Scenario, broker: str, copies: int) -> str:
    return f"{scenario.name}-{broker}" + (f"-{copies}webs{copies}workers" if copies > 1 else "")


def wait_ok_increments(path, count: int, *, after: float = 0.0, timeout: float = 90) -> None:
    """Until ``count`` ok increments by HTTP and ``count`` by the Python API started after
    ``after``."""

    def enough():
        oks = {"http": 0, "api": 0}
        for e in history_since(path, after):
            if e["op"] == "incr" and e["outcome"] == "ok" and e.get("t0", e["t"]) >= after:
                oks[e["via"]] = oks.get(e["via"], 0) + 1
        return min(oks.values()) >= count

    wait_for(enough, timeout=timeout, interval=0.25, what=f"{count} ok increments of each kind")


def answer_bound_s(env: dict[str, str]) -> float:
    """The documented longest wait for an increment's answer: two publish attempts, each up to
    the confirm timeout, plus a socket timeout, plus 2 s."""
    publish_s = float(env["COUNTER_PUBLISH_TIMEOUT_S"])
    return 2 * publish_s + float(env["BROKER_SOCKET_TIMEOUT_S"]) + 2


@pytest.mark.parametrize(("scenario", "broker", "copies"), CASES, ids=[case_id(*c) for c in CASES])
def test_fault(scenario, broker, copies, template, amqp_base, tmp_path, record_result, settings):
    rabbit = RabbitCluster(scenario.rabbit_nodes) if scenario.rabbit_nodes else None
    if rabbit:
        # This process's management API calls (the vhost, the checks) go to the cluster too.
        settings.RABBITMQ_MANAGEMENT_URL = rabbit.management_url
    try:
        if rabbit:
            rabbit.start()
        run_scenario(scenario, broker, template, amqp_base, tmp_path, record_result, rabbit, copies)
    finally:
        if rabbit:
            rabbit.stop()


def run_scenario(scenario, broker, template, amqp_base, tmp_path, record_result, rabbit, copies):
    run_id = uuid.uuid4().hex[:6]
    keys = [f"article_views:fault-{run_id}-{i}" for i in range(3)]
    special = f"article_likes:fault-{run_id}-special"
    cluster = Cluster(
        root=tmp_path,
        broker=broker,
        template=template["root"],
        amqp_base=amqp_base,
        faults=scenario.faults.format(key=keys[0], special=special),
        cache_extra=list(scenario.cache_extra),
        rabbit=rabbit,
        copies=copies,
    )
    if scenario.visibility_timeout:
        cluster.visibility_timeout = scenario.visibility_timeout
    if scenario.relay_kill_after:
        cluster.relay_env["OUTBOX_FAULT_KILL_AFTER"] = str(scenario.relay_kill_after)
    tx_keys = [f"article_views:fault-{run_id}-tx-{i}" for i in range(2)]
    hold_file = tmp_path / "hold"
    name = scenario.name + (f" ({copies} webs, {copies} counters workers)" if copies > 1 else "")
    verdict = Verdict(scenario=name, broker=f"{broker}-cluster" if rabbit else broker)
    load = None
    try:
        cluster.start_servers()
        if scenario.budget:
            point, count = scenario.budget
            cluster.cache_client().set(f"fault:budget:{point}", count)
        cluster.start_processes()
        ops_log, stop_file = tmp_path / "ops.jsonl", tmp_path / "stop"
        config = {
            "web": f"http://127.0.0.1:{cluster.web_port}",
            "webs": [f"http://127.0.0.1:{port}" for port in cluster.web_ports],
            "keys": keys,
            "log": str(ops_log),
            "stop_file": str(stop_file),
            "pause": 0.02,
            "account": template["account"],
            "token": template["token"],
            "skus": template["skus"],
            "database_url": cluster.database_url,
        }
        if scenario.outbox_load:
            config.update(tx_keys=tx_keys, hold_file=str(hold_file))
        (tmp_path / "load.json").write_text(json.dumps(config))
        with open(tmp_path / "load.log", "wb") as out:
            argv = [sys.executable, "-m", "tests.faults.load", str(tmp_path / "load.json")]
            # The fault points are the servers' (web, workers), not the client's.
            env = {**cluster.env(), "COUNTER_FAULTS": ""}
            load = subprocess.Popen(
                argv, cwd=BASE_DIR, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        wait_ok_increments(ops_log, WARM_OPS // 2)
        with open(tmp_path / "harness.jsonl", "a") as harness_log:
            run = Run(cluster, keys, special, harness_log, verdict)
            if scenario.outbox_load:
                run.tx_keys, run.hold_file = tx_keys, hold_file
            scenario.fault(run)
        fault_over = time.time()
        # The system works again: ok increments by both ways, then a few more seconds of load.
        wait_ok_increments(ops_log, RECOVERY_OKS, after=fault_over, timeout=180)
        time.sleep(max(0.0, fault_over + RECOVERY_GRACE_S + 1.5 - time.time()))
        stop_file.touch()
        load.wait(180)
        web_url = f"http://127.0.0.1:{cluster.web_port}"
        expect = Expect(web_url, cluster.cache_url, template["stock"], fault_over)
        expect.dead_key = special if scenario.poison else None
        expect.answer_bound_s = answer_bound_s(cluster.env()) if scenario.answer_bound else None
        expect.apply_within_s = scenario.apply_within_s
        settle_and_check(
            cluster=cluster,
            verdict=verdict,
            histories=[ops_log, tmp_path / "harness.jsonl"],
            expect=expect,
            drain_timeout=90 if scenario.apply_within_s else DRAIN_TIMEOUT_S,
            checks=run.checks,
        )
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
