"""The faults of the suite (the scenarios that use them: tests/faults/test_scenarios.py).

A fault function injects its fault into a running cluster and proves that it bit (the process
really died, the broker really restarted, the killed worker really held deltas, ...): each proof
is a note in the verdict, and a fault that did not bite is a problem, so the checker cannot pass
a scenario in which nothing happened.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.parse
from typing import TYPE_CHECKING

import psutil
import redis

from tasks.broker import rabbitmq_api

from ..helpers import wait_for
from .checker import Verdict, read_history

if TYPE_CHECKING:
    from .cluster import Proc
    from .test_scenarios import Run

PG_DOWN_S = 60  # the figure: longer than any retry countdown, so deltas wait and retry
PG_HUNG_S = 10
PG_READ_ONLY_S = 30
BROKER_FROZEN_S = 30
PRODUCTION_VISIBILITY_TIMEOUT_S = 3600  # REDIS_BROKER_VISIBILITY_TIMEOUT's default
RABBITMQ_STATS_INTERVAL_S = 5  # collect_statistics_interval: the management API's counts age
# "broker down at commit": the broker stays down at least this long, and until this many orders
# and in-transaction increments have committed; the relay (which published nothing before: the
# load's orders and those increments start with the outage) is SIGKILLed at its RELAY_KILL_AFTER-th
# publish, inside its first pass over the backlog, between a publish and marking the rows sent.
BROKER_DOWN_MIN_S = 8
DOWN_ORDERS = 10
DOWN_TX_INCREMENTS = 50
RELAY_KILL_AFTER = 20


# --- proofs -----------------------------------------------------------------------------------


def freeze(pids: list[int], sig: int = signal.SIGSTOP) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def hold_deltas(run: Run, pool: list[int]) -> int:
    """Freeze the counters worker's pool processes, so nothing it has taken can be acknowledged,
    and wait until the broker shows it holds deltas; return how many. (The caller thaws.)"""
    freeze(pool)
    try:
        if run.cluster.broker == "amqp":  # wait for a sample of the counts taken after the freeze
            time.sleep(RABBITMQ_STATS_INTERVAL_S + 1)
        what = "the counters worker to hold unacknowledged deltas"
        return wait_for(run.held_deltas, timeout=60, interval=0.2, what=what)
    except BaseException:
        freeze(pool, signal.SIGCONT)
        raise


def dead(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def server_identity(client: redis.Redis) -> tuple[int, str]:
    info = client.info("server")
    return info["process_id"], info["run_id"]


# --- faults -----------------------------------------------------------------------------------


def budget_spent(run: Run, point: str) -> None:
    client = run.cluster.cache_client()

    def spent() -> bool:
        return int(client.get(f"fault:budget:{point}") or 0) <= 0

    wait_for(spent, timeout=60, what=f"the {point} injections")


def child_kill_before_commit(run: Run) -> None:
    budget_spent(run, "kill_before_commit")
    run.prove_sigkills(3, "worker pool processes")


def kill_after_commit(run: Run) -> None:
    budget_spent(run, "kill_after_commit")
    run.prove_sigkills(3, "worker pool processes")
    run.prove_redelivered("the committed, unacknowledged batches came back")


def worker_main_kill(run: Run, *, flush_cache: bool = False) -> None:
    """SIGKILL the counters worker's process group while it holds unacknowledged deltas (and
    flush the cache in the same second); a second worker takes over (on Redis, the first one's
    messages come back after the visibility timeout)."""
    proc = run.cluster.procs["counters-worker"]
    pool = proc.children()
    held = hold_deltas(run, pool)
    main_pid, killed_at = proc.process.pid, time.monotonic()
    proc.kill()
    if flush_cache:
        client = run.cluster.cache_client()
        keys = client.dbsize()
        flushed = client.flushall() and keys > 0
        after = time.monotonic() - killed_at
        run.prove(flushed and after < 1, f"cache FLUSHALL of {keys} keys {after:.2f} s after")
    with contextlib.suppress(AssertionError):  # a stopped pool process dies a moment later
        wait_for(lambda: all(map(dead, pool)), timeout=5)
    gone = all(dead(p) for p in [main_pid, *pool])
    run.prove(gone, f"counters worker {main_pid} and its pool {pool} killed")
    run.prove(held > 0, f"the broker showed {held} unacknowledged deltas held by it before")
    if run.cluster.broker == "redis":
        left = run.held_deltas()
        run.prove(left > 0, f"{left} deltas left unacknowledged in the broker by the dead worker")
    time.sleep(1)
    run.cluster.start_worker("counters-worker", as_name="counters-worker-2")


def worker_kill_cache_flush(run: Run) -> None:
    worker_main_kill(run, flush_cache=True)


def cache_flushall(run: Run) -> None:
    client = run.cluster.cache_client()
    keys = client.dbsize()
    for _ in range(4):
        client.flushall()
        time.sleep(0.5)
    run.prove(keys > 0, f"cache FLUSHALL of {keys} keys")


def cache_restart_empty(run: Run) -> None:
    before = server_identity(run.cluster.cache_client())
    run.cluster.servers["cache"].process.kill()
    run.cluster.servers["cache"].process.wait()
    time.sleep(2)
    run.cluster.start_cache()
    after = server_identity(run.cluster.cache_client())
    run.prove(after != before, f"cache Redis restarted: pid, run id {before} -> {after}")


def cache_eviction(run: Run) -> None:
    client = run.cluster.cache_client()
    filler = "x" * 20_000
    for i in range(400):
        client.set(f"filler:{i}", filler)
        time.sleep(0.005)
    evicted = int(client.info("stats")["evicted_keys"])
    run.prove(evicted > 0, f"the cache evicted {evicted} keys")


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=120)


def broker_restart(run: Run) -> None:
    if run.cluster.broker == "amqp":
        rabbitmqctl("stop_app")
        try:
            time.sleep(3)
            run.prove(not run.answers("amqp"), "RabbitMQ refused connections, stopped")
        finally:
            rabbitmqctl("start_app")
            rabbitmqctl("await_startup")
        run.prove(run.answers("amqp"), "RabbitMQ accepts connections again")
    else:
        before = server_identity(run.cluster.broker_client())
        server = run.cluster.servers["broker"]
        server.process.kill()  # SIGKILL: what it has confirmed is in its AOF (fsync always)
        server.process.wait()
        time.sleep(2)
        run.cluster.start_broker_redis()
        after = server_identity(run.cluster.broker_client())
        restarted = after[0] != before[0] and after[1] != before[1]
        run.prove(restarted, f"broker Redis restarted: pid, run id {before} -> {after}")


def broker_restart_holding(run: Run) -> None:
    """The broker restarts while the counters worker is alive and holds deltas it has taken."""
    pool = run.cluster.procs["counters-worker"].children()
    try:
        held = hold_deltas(run, pool)
        run.prove(held > 0, f"the counters worker held {held} unacknowledged deltas")
        broker_restart(run)
        if run.cluster.broker == "redis":
            left = run.held_deltas()
            run.prove(left > 0, f"{left} unacknowledged deltas in the restarted broker's AOF")
    finally:
        freeze(pool, signal.SIGCONT)


def memory_alarm(run: Run) -> None:
    """Publishing must fail loudly (a 503 saying not counted), never drop silently."""
    if run.cluster.broker == "amqp":
        out = subprocess.run(
            ["rabbitmqctl", "-q", "eval", "vm_memory_monitor:get_vm_memory_high_watermark()."],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.strip()
        previous = out if out.replace(".", "", 1).isdigit() else "0.4"
        rabbitmqctl("set_vm_memory_high_watermark", "0.0000001")
        try:
            time.sleep(8)
            run.incr(run.special)  # must come back 503 within the publish timeout
        finally:
            rabbitmqctl("set_vm_memory_high_watermark", previous)
    else:
        client = run.cluster.broker_client()
        client.config_set("maxmemory", "1")  # noeviction: every write is refused with OOM
        try:
            time.sleep(8)
            run.incr(run.special)
        finally:
            client.config_set("maxmemory", "0")
    history = read_history(run.cluster.root / "harness.jsonl")
    answers = [(e["outcome"], e["status"]) for e in history if e["key"] == run.special]
    run.prove(answers == [("failed", 503)], f"an increment during the alarm answered {answers}")


def postgres_down(run: Run) -> None:
    run.cluster.servers["postgres"].stop()
    run.prove(not run.answers("postgres"), "PostgreSQL refused connections")
    time.sleep(PG_DOWN_S)
    run.cluster.start_postgres()


def postgres_hung(run: Run) -> None:
    process = run.cluster.servers["postgres"].process
    os.killpg(process.pid, signal.SIGSTOP)  # the postmaster and every backend
    try:
        started = time.monotonic()
        run.prove(not run.answers("postgres"), "PostgreSQL did not answer within 5 s")
        time.sleep(max(0.0, PG_HUNG_S - (time.monotonic() - started)))
    finally:
        os.killpg(process.pid, signal.SIGCONT)


def _write_refused(conn) -> bool:
    import psycopg

    try:
        conn.execute("INSERT INTO fault_scratch VALUES (1)")
        return False
    except psycopg.errors.ReadOnlySqlTransaction:
        return True


def postgres_read_only(run: Run) -> None:
    """A failover's read-only primary: every session, the open ones too, becomes read-only."""
    with run.cluster.db() as before, run.cluster.db() as admin:
        before.execute("CREATE TABLE IF NOT EXISTS fault_scratch (x int)")  # before the fault
        admin.execute("ALTER SYSTEM SET default_transaction_read_only = on")
        admin.execute("SELECT pg_reload_conf()")
        try:
            refused = wait_for(lambda: _write_refused(before), timeout=10, what="read-only")
            run.prove(refused, "a write through a session opened before was refused (read-only)")
            time.sleep(PG_READ_ONLY_S)
        finally:
            admin.execute("ALTER SYSTEM RESET default_transaction_read_only")
            admin.execute("SELECT pg_reload_conf()")
        wait_for(lambda: not _write_refused(before), timeout=10, what="PostgreSQL writable")


def broker_frozen(run: Run) -> None:
    pid = run.cluster.servers["broker"].process.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        with contextlib.closing(run.cluster.broker_client(timeout=1)) as client:
            try:
                frozen = not client.ping()
            except redis.exceptions.TimeoutError:
                frozen = True
        run.prove(frozen, "the broker Redis did not answer a PING within 1 s")
        time.sleep(BROKER_FROZEN_S)
    finally:
        os.kill(pid, signal.SIGCONT)


def poison_raise(run: Run) -> None:
    for _ in range(3):
        run.incr(run.special, 2)
    wait_for(lambda: dead_letters(run) >= 3, timeout=60, what="the poison deltas dead-lettered")


def poison_kill(run: Run) -> None:
    for _ in range(2):
        run.incr(run.special, 2)
    wait_for(lambda: dead_letters(run) >= 2, timeout=120, what="the poison deltas dead-lettered")
    run.prove_sigkills(2, "worker pool processes")

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
    run.prove_redelivered("the second copies of the duplicated deltas")


def web_kill_after_publish(run: Run) -> None:
    budget_spent(run, "kill_after_publish")
    run.prove_sigkills(3, "web worker processes", logs="web.log")


def _broker_refuses(run: Run) -> bool:
    if run.cluster.broker == "amqp":
        return not run.answers("amqp")
    with contextlib.closing(run.cluster.broker_client(timeout=1)) as client:
        try:
            client.ping()
            return False
        except redis.exceptions.ConnectionError:
            return True


def _committed_during(run: Run, since: float, until: float | None = None) -> tuple[list, list]:
    """(ok orders, ok in-transaction increments) that started after ``since`` (and answered
    before ``until``)."""
    history = read_history(run.history_path)
    during = [e for e in history if e.get("t0", 0) >= since and (until is None or e["t"] <= until)]
    orders = [e for e in during if e["op"] == "order" and e["outcome"] == "ok"]
    tx = [e for e in during if e["op"] == "incr" and e["via"] == "tx" and e["outcome"] == "ok"]
    return orders, tx


def _relay_starts(relay: Proc) -> int:
    return relay.output().count(" started")


def broker_down_at_commit(run: Run) -> None:
    """The broker is down while orders and in-transaction increments commit (outbox rows); the
    relay keeps failing to publish; the broker comes back and the relay, publishing the backlog,
    is SIGKILLed once (the supervisor restarts it; the new one publishes the killed pass's rows
    again, under the same message ids)."""
    cluster = run.cluster
    relay = cluster.procs["outbox-relay"]
    with cluster.db() as db:
        before = db.execute("SELECT count(*) FROM tasks_outboxmessage").fetchone()[0]
    if before:
        run.verdict.problems.append(
            f"{before} outbox rows before the outage: the relay's kill "
            "would not land in the backlog"
        )
    cluster.cache_client().set("fault:budget:relay_kill", 1)
    if cluster.broker == "amqp":
        rabbitmqctl("stop_app")
    else:
        identity = server_identity(cluster.broker_client())
        cluster.servers["broker"].stop()  # SIGTERM: a clean stop (its AOF is fsynced anyway)
    try:
        run.prove(_broker_refuses(run), f"the {cluster.broker} broker refused connections")
        down_at, relay_offset = time.time(), len(relay.output())
        run.hold_file.touch()  # the load's orders and in-transaction increments start now

        def enough() -> bool:
            orders, tx = _committed_during(run, down_at)
            failed = "not published" in relay.output()[relay_offset:]
            return (
                failed
                and len(orders) >= DOWN_ORDERS
                and len(tx) >= DOWN_TX_INCREMENTS
                and time.time() - down_at >= BROKER_DOWN_MIN_S
            )

        what = f"{DOWN_ORDERS} orders and {DOWN_TX_INCREMENTS} tx increments with the broker down"
        wait_for(enough, timeout=120, interval=0.25, what=what)
        up_at = time.time()
        failures = relay.output()[relay_offset:].count("not published")
        run.prove(failures > 0, f"the relay failed {failures} publishes while the broker was down")
    finally:
        if cluster.broker == "amqp":
            rabbitmqctl("start_app")
            rabbitmqctl("await_startup")
        else:
            cluster.start_broker_redis()
    if cluster.broker == "amqp":
        run.prove(run.answers("amqp"), "RabbitMQ accepts connections again")
    else:
        after = server_identity(cluster.broker_client())
        restarted = after[0] != identity[0] and after[1] != identity[1]
        run.prove(restarted, f"broker Redis stopped and started: pid, run id {identity} -> {after}")
    # The relay's next pass (after its backoff, OUTBOX_RETRY_MAX_S at most) publishes the backlog
    # and dies at its RELAY_KILL_AFTER-th publish; the supervisor starts it again.
    with contextlib.suppress(AssertionError):
        wait_for(lambda: relay.exits and _relay_starts(relay) >= 2, timeout=60, interval=0.25)
    budget = int(cluster.cache_client().get("fault:budget:relay_kill") or 0)
    run.prove(
        relay.exits == [-signal.SIGKILL] and budget <= 0,
        f"the outbox relay SIGKILLed at its {RELAY_KILL_AFTER}th publish of the backlog "
        f"(exits {relay.exits}; fault:budget:relay_kill {budget}, spent)",
    )
    run.prove(_relay_starts(relay) == 2, f"the relay started again ({_relay_starts(relay)} starts)")
    run.prove_redelivered("the rows of the killed relay's pass, published again")

    def committed_while_down(verdict: Verdict) -> None:
        orders, tx = _committed_during(run, down_at, up_at)
        mails = cluster.mails()
        once = sum(1 for e in orders if mails[e["order_id"]] == 1)
        with cluster.db() as db:
            in_ledger = {
                delta_id
                for (delta_id,) in db.execute(
                    "SELECT delta_id::text FROM counters_applieddelta WHERE delta_id::text = "
                    "ANY(%s) AND amount <> 0",
                    [[e["delta_id"] for e in tx]],
                ).fetchall()
            }
        counted = sum(1 for e in tx if e["delta_id"] in in_ledger)
        verdict.notes.append(
            f"committed with the broker down ({up_at - down_at:.1f} s): {len(orders)} orders, "
            f"{once} of them with exactly one mail; {len(tx)} in-transaction increments, "
            f"{counted} of them in the ledger"
        )
        if len(orders) < DOWN_ORDERS or len(tx) < DOWN_TX_INCREMENTS:
            verdict.problems.append(
                f"the fault did not bite: {len(orders)} orders and {len(tx)} tx increments "
                f"committed with the broker down, expected {DOWN_ORDERS} and {DOWN_TX_INCREMENTS}"
            )
        if once != len(orders) or counted != len(tx):
            verdict.problems.append(
                f"of what committed with the broker down, {len(orders) - once} orders without "
                f"exactly one mail, {len(tx) - counted} increments not counted"
            )

    run.checks.append(committed_while_down)


# --- a RabbitMQ cluster of three nodes (project/rabbitcluster.py) -----------------------------

CLUSTER_PAUSE_S = 20  # the figure: long enough for the peers to see the node vanish
CLUSTER_OKS = 5  # ok increments of each kind the load must get while the cluster is degraded


def counters_queue(run: Run) -> dict:
    """The counters queue as the management API of any live node sees it ({} if none answers)."""
    vhost = urllib.parse.quote(run.cluster.vhost, safe="")
    try:
        return rabbitmq_api(f"queues/{vhost}/counters") or {}
    except Exception:
        return {}


def all_members_online(run: Run) -> bool:
    queue = counters_queue(run)
    return (
        len(queue.get("online") or [])
        == len(run.cluster.rabbit.nodes)
        == len(queue.get("members") or [])
    )


OPS_QUEUES = (
    "import json; from project.ops import ops_status; s = ops_status(); "
    "print(json.dumps({'counters': s['queues'].get('counters'), 'errors': s['errors']}))"
)


def prove_ops_shows_queues(run: Run, when: str) -> None:
    """The operations page's figures (project/ops.py, as /ops/ renders them) still come: the
    counters queue listed and no error from the broker's management API."""
    import json

    done = run.cluster.manage("shell", "-c", OPS_QUEUES, timeout=120)
    try:
        shown = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        shown = {"counters": None, "errors": {"shell": done.stderr[-300:]}}
    ok = shown["counters"] is not None and "queues" not in shown["errors"]
    run.prove(ok, f"/ops/ shows the counters queue {when}: {shown}")


def cluster_leader_kill(run: Run) -> None:
    """SIGKILL the node that leads the counters queue, under load; the load must be served by
    the two others (the publishers fail over, unconfirmed messages are published again), then
    the node comes back and rejoins."""
    rabbit = run.cluster.rabbit
    leader = wait_for(lambda: counters_queue(run).get("leader"), timeout=30, what="a leader")
    node = rabbit.node_named(leader)
    pid, killed_at = rabbit.kill(node), time.time()
    with contextlib.suppress(AssertionError):
        wait_for(lambda: dead(pid), timeout=10)
    run.prove(dead(pid), f"node {leader} (the counters queue's leader), pid {pid}, SIGKILLed")
    new = wait_for(
        lambda: (
            (queue := counters_queue(run)).get("leader") not in (None, leader) and queue["leader"]
        ),
        timeout=60,
        what="a new leader",
    )
    run.prove(new != leader, f"the queue elected a new leader: {new}")
    run.wait_oks(CLUSTER_OKS, after=killed_at)
    run.prove(True, f"{CLUSTER_OKS} ok increments of each kind with the old leader dead")
    prove_ops_shows_queues(run, f"with {leader} dead")
    rabbit.start_node(node)
    wait_for(lambda: all_members_online(run), timeout=90, what="all members online again")
    run.prove(True, f"{leader} restarted and its queue member back online")


def cluster_node_paused(run: Run) -> None:
    """SIGSTOP the counters queue's leader for CLUSTER_PAUSE_S, then SIGCONT: publishes to the
    cluster stall while the leader is frozen (RabbitMQ's peers notice a frozen node only after
    net_ticktime), so increments answer 503 "not counted" for a while, never a false 2xx."""
    rabbit = run.cluster.rabbit
    leader = wait_for(lambda: counters_queue(run).get("leader"), timeout=30, what="a leader")
    node = rabbit.node_named(leader)
    rabbit.freeze(node)
    try:
        process = psutil.Process(node.os_pid())
        with contextlib.suppress(AssertionError):  # the signal is delivered a moment later
            wait_for(lambda: process.status() == psutil.STATUS_STOPPED, timeout=5)
        frozen = process.status() == psutil.STATUS_STOPPED
        run.prove(frozen, f"node {leader} (the counters queue's leader) stopped (SIGSTOP)")
        time.sleep(CLUSTER_PAUSE_S)
    finally:
        rabbit.freeze(node, signal.SIGCONT)
    thawed = time.time()
    wait_for(lambda: all_members_online(run), timeout=120, what="all members online again")
    run.wait_oks(CLUSTER_OKS, after=thawed)
    run.prove(True, f"{leader} thawed after {CLUSTER_PAUSE_S} s; every member online again")
    prove_ops_shows_queues(run, "after the thaw")


def cluster_rolling_restart(run: Run) -> None:
    """Restart the nodes one by one (``rabbitmqctl stop``, start again), each after the queue
    has all its members back, as an operator upgrading the cluster would, under load."""
    rabbit = run.cluster.rabbit
    for node in rabbit.nodes:
        before = node.os_pid()
        restarted_at = time.time()
        rabbit.restart(node)
        after = node.os_pid()
        wait_for(lambda: all_members_online(run), timeout=120, what="all members online again")
        run.wait_oks(CLUSTER_OKS, after=restarted_at)
        run.prove(before != after, f"{node.name} restarted: pid {before} -> {after}")
    prove_ops_shows_queues(run, "after the rolling restart")
