"""The soak (``make soak``): a million increments over a three-node RabbitMQ cluster, two web
servers and two counters workers, with a random fault from the suite every ~30 s, then the drain
and the same checker as every fault scenario.

The load is the suite's (tests/faults/load.py) at full speed in several processes: increments
over HTTP and through the Python API on Zipf-distributed keys, half of them with signed amounts
(never read-checked: their durable value is no floor), orders interleaved, reads of the others
checked against G5. The faults are drawn from ``FAULTS``: the suite's fault functions, and the
kills a soak can repeat (a process SIGKILLed and restarted by the supervisor, as compose's restart
policy would). A line of progress every few seconds; at the end ``docs/soak.md``, ``soak.png``
and ``soak.json`` (tests/faults/soak_report.py).

    python -m tests.faults.soak [--increments N] [--fault-every S] [--seed N] [--out DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings.test")
django.setup()

from django.conf import settings  # noqa: E402

from project.rabbitcluster import RabbitCluster  # noqa: E402
from tasks.broker import rabbitmq_api  # noqa: E402

from ..conftest import _amqp_base_url  # noqa: E402
from ..helpers import BASE_DIR, wait_for  # noqa: E402
from . import scenarios as sc  # noqa: E402
from .checker import RECOVERY_GRACE_S, Expect, Verdict  # noqa: E402
from .cluster import Cluster  # noqa: E402
from .settle import settle_and_check  # noqa: E402
from .soak_report import write_report  # noqa: E402
from .template import seeded_template  # noqa: E402
from .test_scenarios import Run, wait_ok_increments  # noqa: E402

KEYS = 200  # half views (only grow, read-checked), half likes (signed amounts)
ZIPF_S = 1.1  # key k (from 1) is drawn with weight 1/k^s: a few hot keys and a long tail
LOADS = 2  # load processes (one Python process's GIL cannot keep the system busy)
# Threads per load process: an HTTP increment costs the box several times what one through the
# Python API does, so more API threads keep the rate up while HTTP stays a real share (chosen with
# `python -m tests.faults.soak --increments 25000 --fault-every 1000 --http-threads H
# --api-threads A`).
HTTP_THREADS = 6
API_THREADS = 12
ORDER_PAUSE_S = 0.25  # an order every ~quarter second per load process
PROGRESS_EVERY_S = 5.0
RECOVERED_OKS = 5  # ok increments of each kind after a fault before the next one is drawn
# The production values of what the test settings shorten: the soak runs as deployed (retry
# backoff up to 300 s, 5 s publish and socket timeouts, 200 ms batch interval).
PRODUCTION_ENV = {
    "TASK_RETRY_BACKOFF_BASE": "1.0",
    "TASK_RETRY_BACKOFF_MAX": "300",
    "TASK_MAX_RETRIES": "8",
    "COUNTER_BATCH_INTERVAL_MS": "200",
    "COUNTER_PUBLISH_TIMEOUT_S": "5",
    "BROKER_SOCKET_TIMEOUT_S": "5",
}


def _signal_group(proc, sig: int = signal.SIGKILL) -> int:
    """SIGKILL a process group and leave it ``wanted``: the supervisor restarts it."""
    pid = proc.process.pid
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)
    return pid


def _restarted(run: Run, name: str, pid: int, what: str) -> None:
    proc = run.cluster.procs[name]
    with contextlib.suppress(AssertionError):
        wait_for(lambda: sc.dead(pid), timeout=10)
    run.prove(sc.dead(pid), f"{what} {name} (pid {pid}) SIGKILLed")
    wait_for(
        lambda: proc.process.pid != pid and not proc.exited(),
        timeout=120,
        what=f"{name} restarted by the supervisor",
    )


def counters_worker_kill(run: Run) -> None:
    """A counters worker's whole process group SIGKILLed mid-batch; it comes back (restart
    policy), its unacknowledged envelopes are redelivered to it or to the other worker."""
    name = random.choice([n for n in run.cluster.procs if n.startswith("counters-worker")])
    _restarted(run, name, _signal_group(run.cluster.procs[name]), "counters worker")


def general_worker_kill(run: Run) -> None:
    """The general worker (mail, order counters) SIGKILLed: its follow-ups come back."""
    _restarted(run, "worker", _signal_group(run.cluster.procs["worker"]), "general worker")


def relay_kill(run: Run) -> None:
    """The outbox relay SIGKILLed between passes or mid-publish; its rows stay unsent until the
    restarted relay publishes them (the ledger and the mail markers absorb a copy)."""
    relay = run.cluster.procs["outbox-relay"]
    _restarted(run, "outbox-relay", _signal_group(relay), "outbox relay")


def web_worker_kill(run: Run) -> None:
    """One gunicorn worker of a web server SIGKILLed under load: its requests in flight get no
    answer (unknown), gunicorn starts a new one."""
    name = random.choice([n for n in run.cluster.procs if n.startswith("web")])
    proc = run.cluster.procs[name]
    children = proc.children()
    victim = random.choice(children)
    os.kill(victim, signal.SIGKILL)
    with contextlib.suppress(AssertionError):
        wait_for(lambda: sc.dead(victim), timeout=10)
    run.prove(sc.dead(victim), f"gunicorn worker {victim} of {name} SIGKILLed")
    wait_for(
        lambda: len(set(proc.children()) - {victim}) >= len(children),
        timeout=60,
        what=f"{name} to replace its worker",
    )


def one_node_restart(run: Run) -> None:
    """One cluster node (not chosen by role) stopped and started again under load."""
    rabbit = run.cluster.rabbit
    node = random.choice(rabbit.nodes)
    before = node.os_pid()
    rabbit.restart(node)
    wait_for(lambda: sc.all_members_online(run), timeout=120, what="all members online again")
    run.prove(before != node.os_pid(), f"{node.name} restarted: pid {before} -> {node.os_pid()}")


FAULTS = {
    "queue leader node SIGKILLed": sc.cluster_leader_kill,
    f"queue leader node paused {sc.CLUSTER_PAUSE_S} s": sc.cluster_node_paused,
    "rolling restart of the 3 nodes": sc.cluster_rolling_restart,
    "one node restarted": one_node_restart,
    "counters worker SIGKILLed": counters_worker_kill,
    "general worker SIGKILLed": general_worker_kill,
    "outbox relay SIGKILLed": relay_kill,
    "web worker SIGKILLed": web_worker_kill,
    "cache FLUSHALL": sc.cache_flushall,
    "cache restarted empty": sc.cache_restart_empty,
    f"PostgreSQL stopped {sc.PG_DOWN_S} s": sc.postgres_down,
    f"PostgreSQL hung {sc.PG_HUNG_S} s": sc.postgres_hung,
    f"PostgreSQL read-only {sc.PG_READ_ONLY_S} s": sc.postgres_read_only,
}


@dataclass
class Drawn:
    name: str
    started: float
    ended: float = 0.0
    recovered_s: float | None = None  # from the fault's end to RECOVERED_OKS of each kind
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


class Progress:
    """Counts the load's logged increments (reading only what was appended since the last look),
    asks the broker's management API for the queued messages and PostgreSQL for ledger inserts;
    prints a line and keeps a sample every PROGRESS_EVERY_S."""

    def __init__(self, cluster: Cluster, logs: list[Path], faults: list[Drawn], started: float):
        self.cluster, self.logs, self.faults = cluster, logs, faults
        self.offsets = dict.fromkeys(logs, 0)
        self.counts = {"sent": 0, "ok": 0, "failed": 0, "unknown": 0, "http": 0, "api": 0}
        self.samples: list[dict] = []
        self.started = started  # the soak's start: samples and faults share one clock
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.db = None

    def _tail(self) -> None:
        for path in self.logs:
            if not path.exists():
                continue
            with open(path, "rb") as f:
                f.seek(self.offsets[path])
                chunk = f.read()
            end = chunk.rfind(b"\n") + 1  # a line still being written is read next time
            self.offsets[path] += end
            for line in chunk[:end].splitlines():
                if b'"op": "incr"' in line:
                    self.counts["sent"] += 1
                    self.counts["http" if b'"via": "http"' in line else "api"] += 1
                    for outcome in ("ok", "failed", "unknown"):
                        if b'"outcome": "%s"' % outcome.encode() in line:
                            self.counts[outcome] += 1

    def _pending(self) -> int | None:
        try:
            vhost = urllib.parse.quote(self.cluster.vhost, safe="")
            queues = rabbitmq_api(f"queues/{vhost}")
            return sum(q.get("messages") or 0 for q in queues if q["name"] != "dead_letter")
        except Exception:
            return None

    def _ledger_rows(self) -> int | None:
        import psycopg

        try:
            if self.db is None:
                self.db = psycopg.connect(
                    self.cluster.database_url, autocommit=True, connect_timeout=2
                )
                self.db.execute("SET statement_timeout = 2000")
            return self.db.execute(
                "SELECT n_tup_ins FROM pg_stat_user_tables WHERE relname = 'counters_applieddelta'"
            ).fetchone()[0]
        except Exception:
            with contextlib.suppress(Exception):
                self.db.close()
            self.db = None
            return None

    def sample(self) -> dict:
        with self.lock:
            return self._sample()

    def _sample(self) -> dict:
        self._tail()
        now = time.time()
        row = {"t": round(now - self.started, 1), **self.counts}
        row.update(pending=self._pending(), ledger=self._ledger_rows(), faults=len(self.faults))
        last = self.samples[-1] if self.samples else None
        applied = "?"
        if last and row["ledger"] is not None and last["ledger"] is not None:
            applied = f"{(row['ledger'] - last['ledger']) / (row['t'] - last['t']):.0f}"
        self.samples.append(row)
        current = self.faults[-1] if self.faults and not self.faults[-1].ended else None
        print(
            f"{row['t']:7.0f} s  sent {row['sent']:>9,}  ok {row['ok']:>9,}  failed "
            f"{row['failed']:>6,}  unknown {row['unknown']:>5,}  pending {row['pending']}  "
            f"applied/s {applied}  faults {len(self.faults)}"
            + (f"  [now: {current.name}]" if current else ""),
            flush=True,
        )
        return row

    def run(self) -> None:
        while not self.stopped.wait(PROGRESS_EVERY_S):
            with contextlib.suppress(Exception):
                self.sample()


def keys_for(run_id: str) -> tuple[list[str], list[float], list[str]]:
    """The load's keys (views and likes alternating down the Zipf ranks), their weights, and the
    signed ones."""
    keys = [
        f"article_views:soak-{run_id}-{i}" if i % 2 == 0 else f"article_likes:soak-{run_id}-{i}"
        for i in range(KEYS)
    ]
    weights = [1 / (rank**ZIPF_S) for rank in range(1, KEYS + 1)]
    return keys, weights, [k for k in keys if k.startswith("article_likes:")]


def start_loads(cluster: Cluster, template: dict, keys, weights, signed, args) -> list:
    loads = []
    for n in range(LOADS):
        log = cluster.root / ("ops.jsonl" if n == 0 else f"ops-{n + 1}.jsonl")
        config = {
            "web": f"http://127.0.0.1:{cluster.web_port}",
            "webs": [f"http://127.0.0.1:{port}" for port in cluster.web_ports],
            "keys": keys,
            "weights": weights,
            "signed_keys": signed,
            "log": str(log),
            "stop_file": str(cluster.root / "stop"),
            "pause": 0.0,
            "order_pause": ORDER_PAUSE_S,
            "http_threads": args.http_threads,
            "api_threads": args.api_threads,
            "seed": args.seed * 10 + n,
            "account": template["account"],
            "token": template["token"],
            "skus": template["skus"],
            "database_url": cluster.database_url,
        }
        path = cluster.root / f"load-{n + 1}.json"
        path.write_text(json.dumps(config))
        out = open(cluster.root / f"load-{n + 1}.log", "wb")
        argv = [sys.executable, "-m", "tests.faults.load", str(path)]
        env = {**cluster.env(), "COUNTER_FAULTS": ""}
        loads.append(
            subprocess.Popen(argv, cwd=BASE_DIR, env=env, stdout=out, stderr=subprocess.STDOUT)
        )
    return loads


def heal(run: Run) -> None:
    """After a fault function failed half-way: every node and server running again, so the
    soak goes on (the failure itself is already a problem of the verdict)."""
    for node in run.cluster.rabbit.nodes:
        pid = node.os_pid()
        with contextlib.suppress(Exception):
            if pid is None or sc.dead(pid):
                run.cluster.rabbit.start_node(node)
            else:
                os.kill(pid, signal.SIGCONT)
    with contextlib.suppress(Exception):
        os.killpg(run.cluster.servers["postgres"].process.pid, signal.SIGCONT)
    if not run.answers("postgres"):
        with contextlib.suppress(Exception):
            run.cluster.start_postgres()


def inject(run: Run, rng: random.Random, faults: list[Drawn], previous: str) -> Drawn:
    name = rng.choice([n for n in FAULTS if n != previous])
    drawn = Drawn(name, time.time())
    faults.append(drawn)
    print(f"--- fault {len(faults)}: {name}", flush=True)
    notes, problems = len(run.verdict.notes), len(run.verdict.problems)
    try:
        FAULTS[name](run)
    except Exception as exc:  # the fault could not be injected or did not end: a problem
        run.verdict.problems.append(f"fault {name}: {type(exc).__name__}: {exc}")
        heal(run)
    drawn.ended = time.time()
    try:
        wait_ok_increments(run.history_path, RECOVERED_OKS, after=drawn.ended, timeout=180)
        drawn.recovered_s = round(time.time() - drawn.ended, 1)
    except AssertionError as exc:
        run.verdict.problems.append(f"after fault {name}: not recovered: {exc}")
    drawn.notes = run.verdict.notes[notes:]
    drawn.problems = run.verdict.problems[problems:]
    print(f"--- fault {len(faults)} over after {drawn.ended - drawn.started:.0f} s", flush=True)
    return drawn


def soak(args: argparse.Namespace) -> dict:
    rng = random.Random(args.seed)
    random.seed(args.seed)  # the faults' own choices (which worker, which node)
    root = Path(tempfile.mkdtemp(prefix="soak-"))
    print(f"soak: {args.increments:,} increments, a fault every ~{args.fault_every} s; in {root}")
    template = seeded_template(root / "template")
    rabbit = RabbitCluster(3)
    settings.RABBITMQ_MANAGEMENT_URL = rabbit.management_url
    run_id = uuid.uuid4().hex[:6]
    keys, weights, signed = keys_for(run_id)
    verdict = Verdict(scenario="soak", broker="amqp-cluster")
    cluster = Cluster(
        root=root / "run",
        broker="amqp",
        template=template["root"],
        amqp_base=_amqp_base_url(),
        rabbit=rabbit,
        copies=2,
        extra_env=PRODUCTION_ENV,
        visibility_timeout=sc.PRODUCTION_VISIBILITY_TIMEOUT_S,  # unused on RabbitMQ; checked
    )
    cluster.root.mkdir()
    faults: list[Drawn] = []
    loads: list[subprocess.Popen] = []
    progress = None
    started = time.time()
    try:
        rabbit.start()
        cluster.start_servers()
        cluster.start_processes()
        loads = start_loads(cluster, template, keys, weights, signed, args)
        logs = [
            cluster.root / ("ops.jsonl" if n == 0 else f"ops-{n + 1}.jsonl") for n in range(LOADS)
        ]
        progress = Progress(cluster, logs, faults, started)
        threading.Thread(target=progress.run, daemon=True).start()
        with open(cluster.root / "harness.jsonl", "a") as harness_log:
            run = Run(cluster, keys, f"article_likes:soak-{run_id}-special", harness_log, verdict)
            wait_ok_increments(run.history_path, 15)
            next_fault, previous = time.time() + args.fault_every, ""
            while progress.counts["ok"] < args.increments:
                if any(load.poll() is not None for load in loads):
                    raise RuntimeError("a load process exited: see its load-N.log")
                if time.time() >= next_fault:
                    previous = inject(run, rng, faults, previous).name
                    next_fault = time.time() + args.fault_every * rng.uniform(0.5, 1.5)
                time.sleep(1)
            fault_over = faults[-1].ended if faults else started
            # The checker's recovery rule: every increment ok from RECOVERY_GRACE_S after.
            time.sleep(max(0.0, fault_over + RECOVERY_GRACE_S + 5 - time.time()))
        (cluster.root / "stop").touch()
        load_stopped = time.time()
        for load in loads:
            load.wait(240)
        progress.sample()  # the load's last lines; the progress goes on through the drain
        expect = Expect(
            f"http://127.0.0.1:{cluster.web_port}", cluster.cache_url, template["stock"], fault_over
        )
        settle_and_check(
            cluster=cluster,
            verdict=verdict,
            histories=[*logs, cluster.root / "harness.jsonl"],
            expect=expect,
            drain_timeout=900,
        )
        progress.stopped.set()
        return {
            "started": started,
            "load_s": round(load_stopped - started, 1),
            "verdict": verdict.as_dict(),
            "faults": [vars(f) for f in faults],
            "samples": progress.samples,
            "counts": progress.counts,
            "root": str(root),
            "params": {
                "increments": args.increments,
                "fault_every_s": args.fault_every,
                "seed": args.seed,
                "keys": KEYS,
                "zipf_s": ZIPF_S,
                "load_processes": LOADS,
                "http_threads": args.http_threads,
                "api_threads": args.api_threads,
                "rabbit_nodes": 3,
                "webs": 2,
                "counters_workers": 2,
                "env": PRODUCTION_ENV,
            },
        }
    finally:
        if progress:
            progress.stopped.set()
        for load in loads:
            if load.poll() is None:
                load.kill()
        cluster.stop()
        rabbit.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--increments", type=int, default=1_000_000)
    parser.add_argument("--fault-every", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=BASE_DIR / "docs")
    parser.add_argument("--http-threads", type=int, default=HTTP_THREADS)
    parser.add_argument("--api-threads", type=int, default=API_THREADS)
    args = parser.parse_args()
    if args.increments < 1 or args.fault_every <= 0:
        parser.error("--increments must be at least 1 and --fault-every above 0")
    if args.http_threads < 1 or args.api_threads < 1:
        parser.error("--http-threads and --api-threads must be at least 1: the soak mixes both")
    try:
        result = soak(args)
    except Exception as exc:  # a process that would not start, a load that died: say so plainly
        print(f"soak failed before its verdict: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    write_report(result, out=args.out)
    verdict = result["verdict"]
    print(f"lost {verdict['lost']}, doubled {verdict['doubled']}, passed {verdict['passed']}")
    for problem in verdict["problems"]:
        print("problem:", problem)
    return 0 if verdict["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
