"""`make bench`: each path beside its baseline, in one run, interleaved, medians and ratios.

Starts what it needs (embedded PostgreSQL and Redis unless the *_URL variables are set; RabbitMQ
at BENCH_AMQP_URL), records the box, then measures:

1. increments over HTTP (wrk, 32 connections, one hot key, one gunicorn 4x8 for all cases): our
   path vs a naive per-request UPDATE vs the same view without counting; requests/s, p50/p99, and
   PostgreSQL commits per 1000 increments; afterwards durable count == 2xx responses;
2. apply throughput from a backlog (50,000 deltas over 100 Zipf-skewed keys), batched vs one
   transaction per delta, in the database, and end to end through a worker on each broker;
3. the cost of the idempotency ledger (batched apply with vs without it);
4. counter reads for a list page of 100 counters: one batch read vs 100 single reads vs
   PostgreSQL;
5. end-to-end lag (publish to commit) at a steady half of the measured increment throughput.

Writes bench/results/latest.json and latest.png. `--quick` shrinks every case (for a smoke run).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
RESULTS = BASE_DIR / "bench" / "results"
DEFAULT_AMQP = "amqp://guest:guest@127.0.0.1:5672//"


def say(message: str) -> None:
    print(f"bench | {message}", flush=True)


def median(values):
    return statistics.median(values) if values else None


# --- the box ------------------------------------------------------------------------------------


def box(redis_url: str) -> dict:
    port = redis_url.rsplit(":", 1)[1].split("/")[0]
    out = {}
    for pipeline in ("1", "16"):
        run = subprocess.run(
            ["redis-benchmark", "-p", port, "-t", "incr", "-n", "100000", "-c", "1", "-P",
             pipeline, "-q"], capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        match = re.search(r"([\d.]+) requests per second", run.stdout)
        out[f"redis_incr_c1_P{pipeline}_rps"] = float(match.group(1)) if match else None
    from project.devservers import _postgres_bin

    with tempfile.TemporaryDirectory() as tmp:
        run = subprocess.run(
            [str(_postgres_bin() / "pg_test_fsync"), "-s", "2", "-f", f"{tmp}/f"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    match = re.search(r"fdatasync\s+([\d,.]+) ops/sec", run.stdout)
    out["pg_fdatasync_ops_per_s"] = float(match.group(1).replace(",", "")) if match else None
    return out


# --- processes ----------------------------------------------------------------------------------


def start(argv: list[str], env: dict, log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(argv, cwd=BASE_DIR, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def wait_ready(log: Path, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{log.name}: no {text!r} after {timeout}s")
        time.sleep(0.2)


def counters_worker(env: dict, tmp: Path, name: str, batch_size: int | None = None):
    worker_env = dict(env)
    if batch_size:
        worker_env["COUNTER_BATCH_SIZE"] = str(batch_size)
    log = tmp / f"{name}.log"
    process = start([sys.executable, "-m", "celery", "-A", "project", "worker", "-Q", "counters",
                     "--prefetch-multiplier", "500", "-c", "2", "-l", "WARNING",
                     "--without-gossip", "--without-mingle", "-n", f"{name}@%h"],
                    worker_env, log)  # fmt: skip
    time.sleep(4)  # WARNING level does not log "ready"; the consumer is up well within this
    return process


# --- 1. HTTP ------------------------------------------------------------------------------------


def pg_commits() -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        )
        return cursor.fetchone()[0]


def wrk(url: str, seconds: int, connections: int = 32) -> dict:
    script = BASE_DIR / "bench" / "post.lua"
    run = subprocess.run(
        ["wrk", "-t", "4", "-c", str(connections), "-d", f"{seconds}s", "--latency", "-s",
         str(script), url], capture_output=True, text=True, timeout=seconds + 60,
    )  # fmt: skip
    out = run.stdout

    def latency(pct: str) -> float | None:
        match = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)", out)
        if not match:
            return None
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    requests = int(re.search(r"(\d+) requests in", out).group(1))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = int(non_2xx.group(1)) if non_2xx else 0
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_ms": latency("50"), "p99_ms": latency("99"),
        "requests": requests, "ok": requests - errors,
    }  # fmt: skip


def http_cases(env: dict, tmp: Path, *, seconds: int, repeats: int) -> dict:
    from django.core.management import call_command

    from counters.models import Counter

    port = free_port()
    web_env = {**env, "BENCH_VIEWS": "true"}
    web = start(["gunicorn", "project.wsgi:application", "--bind", f"127.0.0.1:{port}",
                 "--workers", "4", "--threads", "8", "--no-control-socket", "--log-level",
                 "warning"], web_env, tmp / "web.log")  # fmt: skip
    worker = counters_worker(env, tmp, "http-apply")
    base = f"http://127.0.0.1:{port}"
    Counter.objects.update_or_create(key="article_views:naive", defaults={"value": 0})
    cases = {
        "ours": f"{base}/api/counters/article_views:hot/incr",
        "naive": f"{base}/bench/naive/article_views:naive/incr",
        "no_counting": f"{base}/bench/nocount/article_views:none/incr",
    }
    results: dict[str, list] = {name: [] for name in cases}
    ok_ours = 0
    try:
        time.sleep(2)
        for url in cases.values():  # warm-up
            wrk(url, 2)
        call_command("counters", "drain", "--timeout", "120", stdout=open(os.devnull, "w"))
        start_value = Counter.objects.filter(key="article_views:hot").values_list(
            "value", flat=True
        )
        start_value = start_value[0] if start_value else 0
        for repeat in range(repeats):
            for name, url in cases.items():  # interleaved: each repeat runs every case once
                before = pg_commits()
                result = wrk(url, seconds)
                result["pg_commits_per_1000"] = (
                    (pg_commits() - before) * 1000 / max(result["ok"], 1)
                )
                results[name].append(result)
                if name == "ours":
                    ok_ours += result["ok"]
                say(f"http {name} repeat {repeat + 1}/{repeats}: {result['rps']:.0f} req/s, "
                    f"p99 {result['p99_ms']} ms")  # fmt: skip
        say("http: draining the queue to check durable == 2xx responses")
        call_command("counters", "drain", "--timeout", "300", stdout=open(os.devnull, "w"))
        durable = Counter.objects.get(key="article_views:hot").value - start_value
    finally:
        stop(web)
        stop(worker)
    summary = {
        name: {
            "rps": median([r["rps"] for r in runs]),
            "p50_ms": median([r["p50_ms"] for r in runs]),
            "p99_ms": median([r["p99_ms"] for r in runs]),
            "pg_commits_per_1000": median([r["pg_commits_per_1000"] for r in runs]),
        }
        for name, runs in results.items()
    }
    # wrk stops with up to one request in flight per connection: the server counts those, wrk
    # does not. So durable may exceed the 2xx count by at most connections x runs, never trail it.
    slack = 32 * repeats
    summary["durable_equals_2xx"] = {"durable": durable, "ok_responses": ok_ours,
                                     "cut_off_allowance": slack,
                                     "holds": ok_ours <= durable <= ok_ours + slack}  # fmt: skip
    return summary


def free_port() -> int:
    from project.devservers import free_port as free

    return free()


# --- 2 + 3. apply ------------------------------------------------------------------------------


def zipf_keys(n: int, keys: int = 100) -> list[str]:
    weights = [1 / (rank + 1) for rank in range(keys)]
    names = [f"article_views:z{rank}" for rank in range(keys)]
    return random.choices(names, weights, k=n)  # noqa: S311 (a workload, not a secret)


def apply_in_database(n: int) -> dict:
    """The database side alone: the same deltas applied in batches of 500, one per transaction,
    and in batches without the ledger."""
    from django.db import connection, transaction

    from counters.services import COUNTER_UPSERT, delta_group_apply

    def deltas(count):
        return [(str(uuid.uuid4()), key, 1) for key in zipf_keys(count)]

    def batched(items, size):
        started = time.perf_counter()
        for i in range(0, len(items), size):
            delta_group_apply(deltas=items[i : i + size])
        return len(items) / (time.perf_counter() - started)

    def without_ledger(items, size):
        started = time.perf_counter()
        for i in range(0, len(items), size):
            sums: dict[str, int] = {}
            for _, key, amount in items[i : i + size]:
                sums[key] = sums.get(key, 0) + amount
            ordered = sorted(sums.items())
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(COUNTER_UPSERT, [[k for k, _ in ordered], [t for _, t in ordered]])
        return len(items) / (time.perf_counter() - started)

    per_delta_n = max(n // 10, 500)
    results = {"batched": [], "per_delta": [], "no_ledger": []}
    for _ in range(3):  # interleaved repeats
        results["batched"].append(batched(deltas(n), 500))
        results["per_delta"].append(batched(deltas(per_delta_n), 1))
        results["no_ledger"].append(without_ledger(deltas(n), 500))
    return {name: {"deltas_per_s": median(rates)} for name, rates in results.items()}


def use_broker(broker_url: str) -> None:
    """Publish from this process to ``broker_url`` (Celery prefers the environment variable, and
    caches its connection pools)."""
    from kombu import pools

    from project.celery import app

    os.environ["CELERY_BROKER_URL"] = broker_url
    pools.reset()
    app._pool = None
    app.amqp._producer_pool = None


def prefill(broker_url: str, n: int) -> None:
    """Put a backlog of n deltas in the counters queue as the web would (Celery messages)."""
    from project.celery import app

    use_broker(broker_url)
    with app.connection_for_write() as conn:
        producer = app.amqp.Producer(conn)
        for key in zipf_keys(n):
            delta_id = str(uuid.uuid4())
            app.send_task("counters.apply_deltas", args=[delta_id, key, 1], task_id=delta_id,
                          kwargs={"published_at": time.time()}, producer=producer)  # fmt: skip


def apply_through_worker(env: dict, tmp: Path, broker_url: str, n: int, batch_size: int) -> dict:
    """Throughput from the ledger's own clock: deltas applied between the first and the last
    commit (so the worker's start-up time is not counted)."""
    from django.db.models import Max, Min

    from counters.models import AppliedDelta

    AppliedDelta.objects.all().delete()
    prefill(broker_url, n)
    commits = pg_commits()
    worker = counters_worker({**env, "CELERY_BROKER_URL": broker_url}, tmp,
                             f"apply-{batch_size}", batch_size)  # fmt: skip
    try:
        deadline = time.monotonic() + 900
        while AppliedDelta.objects.count() < n and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        stop(worker)
    applied = AppliedDelta.objects.count()
    span = AppliedDelta.objects.aggregate(first=Min("applied_at"), last=Max("applied_at"))
    seconds = max((span["last"] - span["first"]).total_seconds(), 1e-3)
    return {"deltas": applied, "deltas_per_s": applied / seconds,
            "commits_per_delta": (pg_commits() - commits) / max(applied, 1)}  # fmt: skip


# --- 4. reads -----------------------------------------------------------------------------------


def reads(repeats: int = 200) -> dict:
    from counters.models import Counter
    from counters.services import counter_get, counter_get_many

    keys = [f"article_views:z{rank}" for rank in range(100)]
    counter_get_many(keys=keys)  # warm
    cases = {
        "batch_read": lambda: counter_get_many(keys=keys),
        "single_reads": lambda: [counter_get(key=k) for k in keys],
        "postgresql": lambda: list(
            Counter.objects.filter(key__in=keys).values_list("key", "value")
        ),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, read in cases.items():
            started = time.perf_counter()
            read()
            times[name].append((time.perf_counter() - started) * 1000)
    return {name: {"ms_per_page": median(values)} for name, values in times.items()}


# --- 5. lag -------------------------------------------------------------------------------------


def lag(env: dict, tmp: Path, rate: float, seconds: int) -> dict:
    from django_redis import get_redis_connection

    from counters.services import counter_incr
    from tasks.selectors import LAG_SAMPLES_KEY

    get_redis_connection("default").delete(LAG_SAMPLES_KEY)
    worker = counters_worker(env, tmp, "lag")
    try:
        interval = 1 / rate
        deadline = time.monotonic() + seconds
        next_at = time.monotonic()
        while time.monotonic() < deadline:
            counter_incr(key="article_views:lag")
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))
        time.sleep(3)
    finally:
        stop(worker)
    samples = sorted(json.loads(s)[1] for s in
                     get_redis_connection("default").lrange(LAG_SAMPLES_KEY, 0, -1))  # fmt: skip
    if not samples:
        return {"rate": rate, "p50_ms": None, "p99_ms": None}
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    return {"rate_per_s": rate, "batches": len(samples), "p50_ms": median(samples) * 1000,
            "p99_ms": p99 * 1000}  # fmt: skip


# --- report -------------------------------------------------------------------------------------


def ratio(a, b):
    return round(a / b, 2) if a and b else None


def report(results: dict) -> list[str]:
    http, db, reads_ = results["http"], results["apply_db"], results["reads"]
    lines = [
        "| measurement | ours | baseline | ratio | target |",
        "|---|---|---|---|---|",
        f"| HTTP increments req/s | {http['ours']['rps']:.0f} | naive {http['naive']['rps']:.0f} "
        f"| {ratio(http['ours']['rps'], http['naive']['rps'])}x | >= 3x |",
        f"| HTTP p99 ms | {http['ours']['p99_ms']} | naive {http['naive']['p99_ms']} | "
        f"{ratio(http['ours']['p99_ms'], http['naive']['p99_ms'])}x | <= 0.5x |",
        f"| HTTP req/s vs no counting | {http['ours']['rps']:.0f} | "
        f"{http['no_counting']['rps']:.0f} | "
        f"{ratio(http['ours']['rps'], http['no_counting']['rps'])}x | stretch >= 0.5x |",
        f"| PostgreSQL commits per 1000 increments | {http['ours']['pg_commits_per_1000']:.1f} | "
        f"naive {http['naive']['pg_commits_per_1000']:.1f} | | <= 10 |",
        f"| apply in DB, deltas/s: batched vs per delta | {db['batched']['deltas_per_s']:.0f} | "
        f"{db['per_delta']['deltas_per_s']:.0f} | "
        f"{ratio(db['batched']['deltas_per_s'], db['per_delta']['deltas_per_s'])}x | >= 10x |",
        f"| apply with vs without ledger, deltas/s | {db['batched']['deltas_per_s']:.0f} | "
        f"{db['no_ledger']['deltas_per_s']:.0f} | "
        f"{ratio(db['batched']['deltas_per_s'], db['no_ledger']['deltas_per_s'])}x | >= 0.5x |",
        f"| read 100 counters, ms | batch {reads_['batch_read']['ms_per_page']:.2f} | singles "
        f"{reads_['single_reads']['ms_per_page']:.2f}, PostgreSQL "
        f"{reads_['postgresql']['ms_per_page']:.2f} | "
        f"{ratio(reads_['single_reads']['ms_per_page'], reads_['batch_read']['ms_per_page'])}x "
        f"| >= 10x |",
    ]
    for broker, runs in results.get("apply_worker", {}).items():
        lines.append(
            f"| worker apply on {broker}, deltas/s: batched vs per delta | "
            f"{runs['batched']['deltas_per_s']:.0f} | {runs['per_delta']['deltas_per_s']:.0f} | "
            f"{ratio(runs['batched']['deltas_per_s'], runs['per_delta']['deltas_per_s'])}x | "
            f">= 10x |"
        )
    lag_ = results.get("lag") or {}
    if lag_.get("p50_ms") is not None:
        lines.append(f"| lag publish->commit at {lag_['rate_per_s']:.0f}/s | p50 "
                     f"{lag_['p50_ms']:.0f} ms, p99 {lag_['p99_ms']:.0f} ms | | | |")  # fmt: skip
    check = http["durable_equals_2xx"]
    lines.append(f"| durable count vs 2xx responses | {check['durable']} | {check['ok_responses']} "
                 f"(+ up to {check['cut_off_allowance']} cut off by wrk) | | "
                 f"{'holds' if check['holds'] else 'VIOLATED'} |")  # fmt: skip
    return lines


def chart(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    http, db = results["http"], results["apply_db"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    names = ["ours", "naive", "no_counting"]
    axes[0].bar(names, [http[n]["rps"] for n in names], color=["tab:blue", "tab:red", "tab:gray"])
    axes[0].set_title("HTTP increments, requests/s (32 connections)")
    names = ["batched", "per_delta", "no_ledger"]
    axes[1].bar(names, [db[n]["deltas_per_s"] for n in names],
                color=["tab:blue", "tab:red", "tab:gray"])  # fmt: skip
    axes[1].set_title("Apply throughput in PostgreSQL, deltas/s")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    args = parser.parse_args()
    seconds, repeats, backlog = (3, 1, 2000) if args.quick else (10, 3, 50_000)
    if shutil.which("wrk") is None:
        say("installing wrk (Debian package)")
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True)
    from project import devservers

    os.environ["DJANGO_SETTINGS_MODULE"] = "project.settings.base"
    amqp = os.environ.get("BENCH_AMQP_URL", DEFAULT_AMQP)
    with devservers.running(profile="bench", ephemeral=True) as servers:
        os.environ.update(servers.env)
        redis_broker = os.environ["CELERY_BROKER_URL"]
        http_broker = amqp if _reachable(amqp) else redis_broker
        use_broker(http_broker)
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PATH": path}
        tmp = Path(tempfile.mkdtemp(prefix="bench-"))
        results: dict = {"started": time.time(), "quick": args.quick}
        say("1/6 the box: redis-benchmark, pg_test_fsync")
        results["box"] = box(os.environ["REDIS_URL"])
        say(f"2/6 HTTP increments on {http_broker.split(':')[0]}: ours, naive, no counting")
        results["http"] = http_cases(env, tmp, seconds=seconds, repeats=repeats)
        say("3/6 apply in the database: batched, per delta, without ledger")
        results["apply_db"] = apply_in_database(backlog)
        say("4/6 apply through a worker, from a backlog, on each broker")
        results["apply_worker"] = {}
        for broker in [b for b in (amqp, redis_broker) if _reachable(b)]:
            kind = broker.split(":")[0]
            results["apply_worker"][kind] = {
                "batched": apply_through_worker(env, tmp, broker, backlog, 500),
                "per_delta": apply_through_worker(env, tmp, broker, max(backlog // 20, 500), 1),
            }
            say(f"   {kind}: {results['apply_worker'][kind]}")
        use_broker(http_broker)
        say("5/6 reads of a 100-counter page")
        results["reads"] = reads()
        say("6/6 end-to-end lag at half the measured HTTP rate")
        results["lag"] = lag(env, tmp, rate=max(results["http"]["ours"]["rps"] / 2, 10),
                             seconds=seconds)  # fmt: skip
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "latest.json").write_text(json.dumps(results, indent=2))
        chart(results, RESULTS / "latest.png")
        table = report(results)
        (RESULTS / "latest.md").write_text("\n".join(table) + "\n")
        print("\n".join(table))
        say(f"wrote {RESULTS / 'latest.json'}, latest.png, latest.md")
    return 0


def _reachable(url: str) -> bool:
    import socket
    from urllib.parse import urlparse

    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname, parsed.port or 5672), 2):
            return True
    except OSError:
        return False


if __name__ == "__main__":
    sys.exit(main())
