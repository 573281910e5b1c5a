"""`make bench`: each path beside its baseline, in one run, interleaved, medians and ratios.

Starts what it needs (embedded PostgreSQL and Redis unless the *_URL variables are set; RabbitMQ
at BENCH_AMQP_URL), records the box, then measures:

1. increments over HTTP (wrk, 32 connections, one hot key, the same gunicorn 4x8 setup for all
   cases): our path (group commit of publisher confirms) vs our path with one confirm per request
   vs the lossy Redis buffer (bench/lossy.py) vs a naive per-request UPDATE vs the same view
   without counting; requests/s, p50/p99, PostgreSQL commits per 1000 increments and CPU time per
   request by process, and ours/lossy for requests/s and CPU; afterwards the durable count must
   equal the 2xx responses, ours and the lossy buffer's (nothing restarts here);
2. apply throughput from a backlog (100,000 deltas over 100 Zipf-skewed keys), batched vs one
   transaction per delta, in the database, and end to end through a worker on each broker;
3. the cost of the idempotency ledger: the batch SQL with vs without the ledger insert, and a
   real worker with vs without it (bench/worker_without_ledger.py);
4. counter reads for a list page of 100 counters: one batch read vs 100 single reads vs
   PostgreSQL;
5. end-to-end lag (publish to commit) at a steady half of the measured increment throughput.

Writes bench/results/latest.{json,md,png}. `--quick` shrinks every case (a smoke run); `--only
http|apply|reads|lag` runs a part and only prints its table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import secrets
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
# Deltas per envelope in the apply backlog: the HTTP case's gunicorn runs 8 threads a process, so
# its envelopes hold up to 8 (the envelope-size histogram of the HTTP case shows the real ones).
BACKLOG_ENVELOPE = 8


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
            [
                "redis-benchmark",
                "-p",
                port,
                "-t",
                "incr",
                "-n",
                "100000",
                "-c",
                "1",
                "-P",
                pipeline,
                "-q",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        match = re.search(r"([\d.]+) requests per second", run.stdout)
        out[f"redis_incr_c1_P{pipeline}_rps"] = float(match.group(1)) if match else None
    from project.devservers import _postgres_bin

    with tempfile.TemporaryDirectory() as tmp:
        run = subprocess.run(
            [str(_postgres_bin() / "pg_test_fsync"), "-s", "2", "-f", f"{tmp}/f"],
            capture_output=True,
            text=True,
            timeout=300,
        )
    match = re.search(r"fdatasync\s+([\d,.]+) ops/sec", run.stdout)
    out["pg_fdatasync_ops_per_s"] = float(match.group(1).replace(",", "")) if match else None
    return out


# --- processes ----------------------------------------------------------------------------------


def start(argv: list[str], env: dict, log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(
            argv,
            cwd=BASE_DIR,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


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


def counters_worker(
    env: dict, tmp: Path, name: str, batch_size: int | None = None, *, app: str = "project"
):
    worker_env = dict(env)
    if batch_size:
        worker_env["COUNTER_BATCH_SIZE"] = str(batch_size)
    log = tmp / f"{name}.log"
    process = start(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            app,
            "worker",
            "-Q",
            "counters",
            "--prefetch-multiplier",
            "500",
            "-c",
            "2",
            "-l",
            "WARNING",
            "--without-gossip",
            "--without-mingle",
            "-n",
            f"{name}@%h",
        ],
        worker_env,
        log,
    )
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


# The service path (counters/access.py): no object lookup, no rate limit; beside "ours" (the
# anonymous beacon, same web) it shows what the beacon's checks cost.
BENCH_SERVICE_TOKEN = secrets.token_urlsafe(32)
CASE_HEADERS = {"ours_service_token": [f"Authorization: Bearer {BENCH_SERVICE_TOKEN}"]}


def wrk(url: str, seconds: int, connections: int = 32, headers: list[str] = ()) -> dict:
    script = BASE_DIR / "bench" / "post.lua"
    run = subprocess.run(
        [
            "wrk",
            *(arg for header in headers for arg in ("-H", header)),
            "-t",
            "4",
            "-c",
            str(connections),
            "-d",
            f"{seconds}s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
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
        "p50_ms": latency("50"),
        "p99_ms": latency("99"),
        "requests": requests,
        "ok": requests - errors,
    }


# Where each case's CPU time goes: processes by kind (all of this box's, so the shared RabbitMQ
# and the idle system PostgreSQL and Redis are counted too; idle ones add ~0).
CPU_KINDS = {
    "gunicorn": "web",
    "celery": "worker",
    "bench.lossy": "flusher",
    "beam.smp": "rabbitmq",
    "postgres": "postgres",
    "redis-server": "redis",
}


def cpu_seconds() -> dict[str, float]:
    import resource

    import psutil

    # wrk has exited by the second reading: count it as this process's waited-for children.
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    totals = {
        **dict.fromkeys(CPU_KINDS.values(), 0.0),
        "wrk": children.ru_utime + children.ru_stime,
    }
    for proc in psutil.process_iter(["name", "cmdline", "cpu_times"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        kind = next(
            (
                k
                for n, k in CPU_KINDS.items()
                if n == proc.info["name"] or f"/{n} " in f"{cmdline} " or f" {n} " in f" {cmdline} "
            ),
            None,
        )
        times = proc.info["cpu_times"]
        if kind and times:
            totals[kind] += times.user + times.system
    return totals


def http_cases(env: dict, tmp: Path, *, seconds: int, repeats: int, redis_broker: str) -> dict:
    from django_redis import get_redis_connection

    from bench import lossy
    from counters.models import Counter

    def gunicorn(name: str, extra_env: dict) -> tuple[subprocess.Popen, str]:
        port = free_port()
        web = start(
            [
                "gunicorn",
                "project.wsgi:application",
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                "4",
                "--threads",
                "8",
                "--no-control-socket",
                "--log-level",
                "warning",
            ],
            {**env, "BENCH_VIEWS": "true", **extra_env},
            tmp / f"{name}.log",
        )
        return web, f"http://127.0.0.1:{port}"

    # Same gunicorn setup for every case; the second differs only in how it publishes. Ours
    # writes its envelope-size histogram where this process can read it after the run.
    metrics_dir = tmp / "metrics-web"
    metrics_dir.mkdir(exist_ok=True)
    digest = hashlib.sha256(BENCH_SERVICE_TOKEN.encode()).hexdigest()
    web, base = gunicorn(
        "web", {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "COUNTER_SERVICE_TOKENS": digest}
    )
    web_single, base_single = gunicorn("web-one-message-per-delta", {"COUNTER_ENVELOPES": "false"})
    web_envelope_bump, base_envelope_bump = gunicorn(
        "web-envelope-bump", {"COUNTER_ENVELOPE_BUMP": "true"}
    )
    # The beacon's per-client limit checked on every request (one Lua call), at a rate it never
    # refuses: what the check costs (counters/ratelimit.py).
    web_limited, base_limited = gunicorn("web-rate-limited", {"COUNTER_RATE_LIMIT": "1000000000/1"})
    on_redis = {"CELERY_BROKER_URL": redis_broker}
    web_redis, base_redis = gunicorn("web-redis-broker", on_redis)
    worker = counters_worker(env, tmp, "http-apply")
    worker_redis = counters_worker({**env, **on_redis}, tmp, "http-apply-redis")
    Counter.objects.update_or_create(key="article_views:naive", defaults={"value": 0})
    # The lossy case counts from zero, warm-up included (its flusher has no drain to wait for).
    Counter.objects.update_or_create(key="article_views:lossy", defaults={"value": 0})
    get_redis_connection("default").delete(
        lossy.PENDING_KEY, lossy.BUFFER_PREFIX + "article_views:lossy"
    )
    flusher = start([sys.executable, "-m", "bench.lossy"], env, tmp / "lossy-flusher.log")
    wait_ready(tmp / "lossy-flusher.log", "lossy flusher ready")
    cases = {
        "ours": f"{base}/api/counters/article_views:hot/incr",
        "ours_service_token": f"{base}/api/counters/article_views:hot/incr",
        "ours_one_message_per_delta": f"{base_single}/api/counters/article_views:hot/incr",
        "ours_envelope_bump": f"{base_envelope_bump}/api/counters/article_views:hot/incr",
        "ours_rate_limited": f"{base_limited}/api/counters/article_views:hot/incr",
        "ours_redis_broker": f"{base_redis}/api/counters/article_views:hot-redis/incr",
        "lossy": f"{base}/bench/lossy/article_views:lossy/incr",
        "naive": f"{base}/bench/naive/article_views:naive/incr",
        "no_counting": f"{base}/bench/nocount/article_views:none/incr",
    }
    # The counted cases by the key they count and the broker that carries it.
    counted = {
        "ours": ("article_views:hot", None),
        "ours_service_token": ("article_views:hot", None),
        "ours_one_message_per_delta": ("article_views:hot", None),
        "ours_envelope_bump": ("article_views:hot", None),
        "ours_rate_limited": ("article_views:hot", None),
        "ours_redis_broker": ("article_views:hot-redis", redis_broker),
    }
    results: dict[str, list] = {name: [] for name in cases}
    ok_counted = dict.fromkeys(counted, 0)
    ok_lossy = 0
    try:
        time.sleep(2)
        for name, url in cases.items():  # warm-up
            warm = wrk(url, 2, headers=CASE_HEADERS.get(name, ()))
            if name == "lossy":
                ok_lossy += warm["ok"]
        drain_all(redis_broker, timeout=120)
        start_values = {key: durable_of(key) for key, _ in counted.values()}
        for repeat in range(repeats):
            for name, url in cases.items():  # interleaved: each repeat runs every case once
                before, cpu_before = pg_commits(), cpu_seconds()
                result = wrk(url, seconds, headers=CASE_HEADERS.get(name, ()))
                cpu_after = cpu_seconds()
                ok = max(result["ok"], 1)
                result["pg_commits_per_1000"] = (pg_commits() - before) * 1000 / ok
                # A process that exits during the case takes its CPU time with it (a database
                # connection closed for age): never below zero, and a slight undercount.
                result["cpu_ms_per_request"] = {
                    kind: max(cpu_after[kind] - cpu_before[kind], 0) * 1000 / ok
                    for kind in cpu_after
                }
                results[name].append(result)
                if name in counted:
                    ok_counted[name] += result["ok"]
                if name == "lossy":
                    ok_lossy += result["ok"]
                say(
                    f"http {name} repeat {repeat + 1}/{repeats}: {result['rps']:.0f} req/s, "
                    f"p99 {result['p99_ms']} ms"
                )
        say("http: draining the queue to check durable == 2xx responses")
        drain_all(redis_broker, timeout=300)
        durable = {key: durable_of(key) - start for key, start in start_values.items()}
        stop(flusher)  # its last flush on the way out; then anything it left, from here
        lossy.flush()
        durable_lossy = Counter.objects.get(key="article_views:lossy").value
    finally:
        for process in (
            web,
            web_single,
            web_envelope_bump,
            web_limited,
            web_redis,
            worker,
            worker_redis,
        ):
            stop(process)
        stop(flusher)
    summary = {
        name: {
            "rps": median([r["rps"] for r in runs]),
            "p50_ms": median([r["p50_ms"] for r in runs]),
            "p99_ms": median([r["p99_ms"] for r in runs]),
            "pg_commits_per_1000": median([r["pg_commits_per_1000"] for r in runs]),
            "cpu_ms_per_request": {
                kind: median([r["cpu_ms_per_request"][kind] for r in runs])
                for kind in runs[0]["cpu_ms_per_request"]
            },
        }
        for name, runs in results.items()
    }
    # wrk stops with up to one request in flight per connection: the server counts those, wrk
    # does not. So durable may exceed the 2xx count by at most connections x runs, never trail it.
    for key in durable:
        names = [name for name, (k, _) in counted.items() if k == key]
        ok = sum(ok_counted[name] for name in names)
        slack = 32 * repeats * len(names)
        summary[f"durable_equals_2xx:{key}"] = {
            "durable": durable[key],
            "ok_responses": ok,
            "cut_off_allowance": slack,
            "holds": ok <= durable[key] <= ok + slack,
        }
    slack = 32 * (repeats + 1)  # the lossy case's warm-up counts too
    summary["lossy_durable_equals_2xx"] = {
        "durable": durable_lossy,
        "ok_responses": ok_lossy,
        "cut_off_allowance": slack,
        "holds": ok_lossy <= durable_lossy <= ok_lossy + slack,
    }
    summary["envelope_sizes"] = envelope_sizes(metrics_dir)
    cpu = {name: sum(summary[name]["cpu_ms_per_request"].values()) for name in ("ours", "lossy")}
    summary["ours_vs_lossy"] = {
        "rps": summary["ours"]["rps"] / summary["lossy"]["rps"],
        "cpu_ms_per_increment": cpu["ours"] / cpu["lossy"],
    }
    return summary


def durable_of(key: str) -> int:
    from counters.models import Counter

    row = Counter.objects.filter(key=key).first()
    return row.value if row else 0


def drain_all(redis_broker: str, *, timeout: int) -> None:
    """Drain the counters queue on the HTTP cases' broker, then on the Redis broker."""
    from django.core.management import call_command

    http_broker = os.environ["CELERY_BROKER_URL"]
    for broker in dict.fromkeys([http_broker, redis_broker]):
        use_broker(broker)
        call_command("counters", "drain", "--timeout", str(timeout), stdout=open(os.devnull, "w"))
    use_broker(http_broker)


def envelope_sizes(metrics_dir: Path) -> dict:
    """The envelope-size histogram the web processes wrote (tasks/metrics.py): count per bucket
    (cumulative, as Prometheus keeps it), envelopes, deltas and the mean size."""
    from prometheus_client import CollectorRegistry, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(metrics_dir))
    buckets, count, total = {}, 0.0, 0.0
    for metric in registry.collect():
        if metric.name != "envelope_size":
            continue
        for sample in metric.samples:
            if sample.name.endswith("_bucket"):
                buckets[sample.labels["le"]] = sample.value
            elif sample.name.endswith("_count"):
                count = sample.value
            elif sample.name.endswith("_sum"):
                total = sample.value
    return {
        "le_buckets": buckets,
        "envelopes": count,
        "deltas": total,
        "mean": total / count if count else None,
    }


def free_port() -> int:
    from project.devservers import free_port as free

    return free()


# --- 2 + 3. apply ------------------------------------------------------------------------------


def zipf_keys(n: int, keys: int = 100) -> list[str]:
    weights = [1 / (rank + 1) for rank in range(keys)]
    names = [f"article_views:z{rank}" for rank in range(keys)]
    return random.choices(names, weights, k=n)  # noqa: S311 (a workload, not a secret)


def apply_in_database(n: int) -> dict:
    """The database side alone, on the same kind of deltas:

    * ``batched`` / ``per_delta``: the worker's apply (``delta_group_apply``: ledger, counters,
      then the cache update) in batches of 500, and one delta per transaction;
    * ``ledger_sql`` / ``no_ledger_sql``: the batch transaction's SQL with and without the ledger
      insert, same batches, nothing else: the cost of the idempotency ledger alone.
    """
    from django.db import connection, transaction

    from counters.services import LEDGER_INSERT, counters_add, delta_group_apply

    def deltas(count):
        return [(str(uuid.uuid4()), key, 1) for key in zipf_keys(count)]

    def batched(items, size):
        started = time.perf_counter()
        for i in range(0, len(items), size):
            delta_group_apply(deltas=items[i : i + size])
        return len(items) / (time.perf_counter() - started)

    def sql(items, size, *, ledger: bool):
        started = time.perf_counter()
        for i in range(0, len(items), size):
            batch = items[i : i + size]
            with transaction.atomic(), connection.cursor() as cursor:
                if ledger:
                    columns = [list(column) for column in zip(*batch, strict=True)]
                    cursor.execute(LEDGER_INSERT, columns)
                    batch = cursor.fetchall()
                counters_add(cursor=cursor, deltas=batch)
        return len(items) / (time.perf_counter() - started)

    per_delta_n = max(n // 10, 500)
    results = {"batched": [], "per_delta": [], "ledger_sql": [], "no_ledger_sql": []}
    for _ in range(3):  # interleaved repeats
        results["batched"].append(batched(deltas(n), 500))
        results["per_delta"].append(batched(deltas(per_delta_n), 1))
        results["ledger_sql"].append(sql(deltas(n), 500, ledger=True))
        results["no_ledger_sql"].append(sql(deltas(n), 500, ledger=False))
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


def prefill(broker_url: str, n: int, envelope: int) -> None:
    """Put a backlog of n deltas in the counters queue as the web would: envelopes of
    ``envelope`` deltas (tasks/envelopes.py), or one message per delta if it is 1."""
    from project.celery import app
    from tasks.envelopes import ENVELOPE_KWARG

    use_broker(broker_url)
    keys = zipf_keys(n)
    with app.connection_for_write() as conn:
        producer = app.amqp.Producer(conn)
        for start in range(0, n, envelope):
            items = [
                [str(uuid.uuid4()), key, 1, time.time()] for key in keys[start : start + envelope]
            ]
            if envelope == 1:
                delta_id, key, amount, published_at = items[0]
                args, kwargs, task_id = (
                    [delta_id, key, amount],
                    {"published_at": published_at},
                    delta_id,
                )
            else:
                args, kwargs, task_id = [], {ENVELOPE_KWARG: items}, str(uuid.uuid4())
            app.send_task(
                "counters.apply_deltas",
                args=args,
                task_id=task_id,
                kwargs=kwargs,
                producer=producer,
            )


def purge_counters_queue(broker_url: str) -> None:
    """Drop what a stopped worker handed back: a batch committed just before the stop can be
    requeued unacknowledged, a no-op for the ledger but counted again by the worker without it
    (and then picked up, minutes old, by the lag measurement)."""
    from project.celery import app

    with app.connection_for_write(broker_url) as conn:
        conn.default_channel.queue_purge("counters")


def zipf_total() -> int:
    from django.db.models import Sum

    from counters.models import Counter

    return (
        Counter.objects.filter(key__startswith="article_views:z").aggregate(total=Sum("value"))[
            "total"
        ]
        or 0
    )


def apply_through_worker(
    env: dict,
    tmp: Path,
    broker_url: str,
    n: int,
    batch_size: int,
    *,
    envelope: int = 1,
    app: str = "project",
) -> dict:
    """Throughput from the counters' own progress: deltas applied between the first change and
    the last (so the worker's start-up time is not counted), polled every 20 ms."""
    purge_counters_queue(broker_url)
    total = zipf_total()
    prefill(broker_url, n, envelope)
    commits = pg_commits()
    worker = counters_worker(
        {**env, "CELERY_BROKER_URL": broker_url}, tmp, f"apply-{batch_size}", batch_size, app=app
    )
    first = last = None
    try:
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            applied = zipf_total() - total
            now = time.monotonic()
            if applied and first is None:
                first, cpu_first = (now, applied), cpu_seconds()
            if applied >= n:
                last, cpu_last = (now, applied), cpu_seconds()
                break
            time.sleep(0.02)
    finally:
        stop(worker)
    if first is None or last is None:
        raise RuntimeError(f"worker applied {zipf_total() - total} of {n} deltas in 900 s")
    # None when the whole backlog was applied between two polls (a --quick run's backlog).
    rate = (last[1] - first[1]) / (last[0] - first[0]) if last[0] > first[0] else None
    measured = max(last[1] - first[1], 1)
    return {
        "deltas": n,
        "envelope": envelope,
        "deltas_per_s": rate,
        "commits_per_delta": (pg_commits() - commits) / n,
        # Between the same two samples as the rate: the worker's start-up is not in it.
        "cpu_ms_per_delta": {
            kind: max(cpu_last[kind] - cpu_first[kind], 0) * 1000 / measured
            for kind in ("worker", "rabbitmq", "redis", "postgres")
        },
    }


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

    from counters.cache import LAG_SAMPLES_KEY
    from counters.services import counter_incr
    from project.celery import app

    purge_counters_queue(app.conf.broker_url)
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
    samples = sorted(
        json.loads(s)[1] for s in get_redis_connection("default").lrange(LAG_SAMPLES_KEY, 0, -1)
    )
    if not samples:
        return {"rate": rate, "p50_ms": None, "p99_ms": None}
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    return {
        "rate_per_s": rate,
        "batches": len(samples),
        "p50_ms": median(samples) * 1000,
        "p99_ms": p99 * 1000,
    }


# --- report -------------------------------------------------------------------------------------


HTTP_CASES = (
    "ours",
    "ours_service_token",
    "ours_envelope_bump",
    "ours_rate_limited",
    "ours_one_message_per_delta",
    "ours_redis_broker",
    "lossy",
    "naive",
    "no_counting",
)


def ratio(a, b) -> str:
    """``a / b`` as ``1.23x``; n/a when either was not measured (a --quick run's tiny backlog)."""
    return f"{round(a / b, 2)}x" if a and b else "n/a"


def rate(value) -> str:
    return f"{value:.0f}" if value is not None else "n/a"


def report(results: dict) -> list[str]:
    """The table of medians and ratios (sections a partial run did not measure are left out)."""
    lines = ["| measurement | ours | baseline | ratio | target |", "|---|---|---|---|---|"]
    http = results.get("http")
    if http:
        ours, single = http["ours"], http["ours_one_message_per_delta"]
        naive, none, lossy = http["naive"], http["no_counting"], http["lossy"]
        envelope_bump, on_redis = http["ours_envelope_bump"], http["ours_redis_broker"]
        limited = http.get("ours_rate_limited")
        service = http.get("ours_service_token")
        cpu_ours, cpu_lossy, cpu_redis = (
            sum(c["cpu_ms_per_request"].values()) for c in (ours, lossy, on_redis)
        )
        lines += [
            f"| HTTP increments req/s | {ours['rps']:.0f} | naive {naive['rps']:.0f} "
            f"| {ratio(ours['rps'], naive['rps'])} | >= 3x |",
            f"| HTTP p99 ms | {ours['p99_ms']} | naive {naive['p99_ms']} | "
            f"{ratio(ours['p99_ms'], naive['p99_ms'])} | <= 0.5x |",
            f"| HTTP req/s vs no counting | {ours['rps']:.0f} | {none['rps']:.0f} | "
            f"{ratio(ours['rps'], none['rps'])} | stretch >= 0.5x |",
            f"| HTTP req/s: envelopes vs one message per delta | {ours['rps']:.0f} | "
            f"{single['rps']:.0f} (p99 {single['p99_ms']} ms) | "
            f"{ratio(ours['rps'], single['rps'])} | |",
            f"| HTTP req/s vs the lossy Redis buffer | {ours['rps']:.0f} | lossy "
            f"{lossy['rps']:.0f} | {ratio(ours['rps'], lossy['rps'])} | >= 0.5x (stretch 0.7x) |",
            f"| HTTP req/s on the Redis broker vs the lossy Redis buffer | "
            f"{on_redis['rps']:.0f} | lossy {lossy['rps']:.0f} | "
            f"{ratio(on_redis['rps'], lossy['rps'])} | >= 0.5x (stretch 0.7x) |",
            f"| HTTP req/s: cache bump per envelope (experimental) vs per request | "
            f"{envelope_bump['rps']:.0f} (p99 {envelope_bump['p99_ms']} ms) | {ours['rps']:.0f} | "
            f"{ratio(envelope_bump['rps'], ours['rps'])} | |",
            *(
                [
                    f"| HTTP req/s: the beacon's rate limit checked vs not | "
                    f"{limited['rps']:.0f} (p99 {limited['p99_ms']} ms) | {ours['rps']:.0f} | "
                    f"{ratio(limited['rps'], ours['rps'])} | |"
                ]
                if limited
                else []
            ),
            *(
                [
                    f"| HTTP req/s: the anonymous beacon (checks) vs a service token (none) | "
                    f"{ours['rps']:.0f} (p99 {ours['p99_ms']} ms) | {service['rps']:.0f} "
                    f"(p99 {service['p99_ms']} ms) | {ratio(ours['rps'], service['rps'])} | "
                    f"~1x |"
                ]
                if service
                else []
            ),
            f"| CPU ms per increment (whole box) vs the lossy Redis buffer | {cpu_ours:.2f} | "
            f"lossy {cpu_lossy:.2f} | {ratio(cpu_ours, cpu_lossy)} | <= 2x |",
            f"| CPU ms per increment (whole box), Redis broker vs the lossy Redis buffer | "
            f"{cpu_redis:.2f} | lossy {cpu_lossy:.2f} | {ratio(cpu_redis, cpu_lossy)} | <= 2x |",
            f"| CPU ms per increment: RabbitMQ, counters worker | "
            f"{ours['cpu_ms_per_request'].get('rabbitmq', 0):.3f}, "
            f"{ours['cpu_ms_per_request'].get('worker', 0):.3f} | | | <= 0.05 each |",
            f"| PostgreSQL commits per 1000 increments | {ours['pg_commits_per_1000']:.1f} | "
            f"naive {naive['pg_commits_per_1000']:.1f}, lossy "
            f"{lossy['pg_commits_per_1000']:.1f} | | <= 5 |",
        ]
        sizes = http.get("envelope_sizes") or {}
        if sizes.get("envelopes"):
            cumulative = ", ".join(
                f"<={le}: {n:.0f}" for le, n in sizes["le_buckets"].items() if le != "+Inf"
            )
            lines.append(
                f"| envelope size under the HTTP load (mean; envelopes with at most n deltas) | "
                f"{sizes['mean']:.1f} | {cumulative} | | |"
            )
    db = results.get("apply_db")
    if db:
        lines += [
            f"| apply in DB, deltas/s: batched vs per delta | {db['batched']['deltas_per_s']:.0f} "
            f"| {db['per_delta']['deltas_per_s']:.0f} | "
            f"{ratio(db['batched']['deltas_per_s'], db['per_delta']['deltas_per_s'])} | >= 10x |",
            f"| apply SQL with vs without ledger, deltas/s | "
            f"{db['ledger_sql']['deltas_per_s']:.0f} | {db['no_ledger_sql']['deltas_per_s']:.0f} | "
            f"{ratio(db['ledger_sql']['deltas_per_s'], db['no_ledger_sql']['deltas_per_s'])} | "
            f">= 0.5x |",
        ]
    for broker, runs in results.get("apply_worker", {}).items():
        batched, per_delta = runs["batched"]["deltas_per_s"], runs["per_delta"]["deltas_per_s"]
        lines.append(
            f"| worker apply on {broker}, deltas/s: batched vs per delta | "
            f"{rate(batched)} | {rate(per_delta)} | {ratio(batched, per_delta)} | >= 10x |"
        )
        if "batched_one_message_per_delta" in runs:
            singles = runs["batched_one_message_per_delta"]["deltas_per_s"]
            lines.append(
                f"| worker apply on {broker}, deltas/s: envelopes of {BACKLOG_ENVELOPE} vs one "
                f"message per delta | {rate(batched)} | {rate(singles)} | "
                f"{ratio(batched, singles)} | >= 30,000/s |"
            )
        cpu = runs["batched"].get("cpu_ms_per_delta")
        if cpu:
            lines.append(
                f"| worker apply on {broker}, CPU ms per delta (envelopes of {BACKLOG_ENVELOPE}): "
                f"counters worker, broker | {cpu['worker']:.3f} | "
                f"{cpu['rabbitmq' if broker == 'amqp' else 'redis']:.3f} | | <= 0.05 worker |"
            )
        if "no_ledger" in runs:
            without = runs["no_ledger"]["deltas_per_s"]
            lines.append(
                f"| worker apply on {broker}, deltas/s: with vs without ledger | "
                f"{rate(batched)} | {rate(without)} | {ratio(batched, without)} | >= 0.5x |"
            )
    reads_ = results.get("reads")
    if reads_:
        batch, singles = reads_["batch_read"]["ms_per_page"], reads_["single_reads"]["ms_per_page"]
        lines.append(
            f"| read 100 counters, ms | batch {batch:.2f} | singles {singles:.2f}, "
            f"PostgreSQL {reads_['postgresql']['ms_per_page']:.2f} | "
            f"{ratio(singles, batch)} | >= 10x |"
        )
    lag_ = results.get("lag") or {}
    if lag_.get("p50_ms") is not None:
        lines.append(
            f"| lag publish->commit at {lag_['rate_per_s']:.0f}/s | p50 "
            f"{lag_['p50_ms']:.0f} ms, p99 {lag_['p99_ms']:.0f} ms | | | |"
        )
    if http:
        checks = [(n.split(":", 1)[1], n) for n in http if n.startswith("durable_equals_2xx:")]
        for label, check_name in [*checks, ("lossy", "lossy_durable_equals_2xx")]:
            check = http[check_name]
            lines.append(
                f"| durable count vs 2xx responses, {label} | {check['durable']} | "
                f"{check['ok_responses']} (+ up to {check['cut_off_allowance']} cut off by "
                f"wrk) | | {'holds' if check['holds'] else 'VIOLATED'} |"
            )
        lines += [
            "",
            "HTTP cases (medians): requests/s, latency, PostgreSQL commits per 1000 increments, "
            "CPU time per request in ms by process (the whole box):",
            "",
        ]
        kinds = [*CPU_KINDS.values(), "wrk"]
        head = ["case", "req/s", "p50 ms", "p99 ms", "PG commits /1000", *kinds, "CPU total"]
        lines += ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
        for name in HTTP_CASES:
            case = http[name]
            cpu = case["cpu_ms_per_request"]
            cells = [
                name,
                f"{case['rps']:.0f}",
                f"{case['p50_ms']}",
                f"{case['p99_ms']}",
                f"{case['pg_commits_per_1000']:.1f}",
                *(f"{cpu[k]:.2f}" for k in kinds),
                f"{sum(cpu.values()):.2f}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def chart(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    http, db = results["http"], results["apply_db"]
    fig, axes = plt.subplots(1, 3, figsize=(18, 4.5))
    case_labels = {
        "ours": "ours\n(group commit)",
        "ours_one_message_per_delta": "ours, one\nmessage per\ndelta",
        "ours_envelope_bump": "ours, cache\nbump per\nenvelope",
        "ours_rate_limited": "ours, rate\nlimit\nchecked",
        "ours_service_token": "ours, service\ntoken (no\nchecks)",
        "ours_redis_broker": "ours on the\nRedis broker",
        "lossy": "lossy\nRedis buffer",
        "naive": "naive\nUPDATE",
        "no_counting": "no counting",
    }
    axes[0].bar(
        [case_labels[n] for n in HTTP_CASES],
        [http[n]["rps"] for n in HTTP_CASES],
        color=[
            "tab:blue",
            "tab:purple",
            "tab:brown",
            "tab:cyan",
            "tab:green",
            "tab:olive",
            "tab:red",
            "tab:gray",
        ],
    )
    axes[0].set_title("HTTP increments, requests/s (32 connections)")
    # Where each request's CPU goes: ours against what users would otherwise pick, and no counting.
    names, bottom = ["ours", "lossy", "no_counting"], [0.0, 0.0, 0.0]
    for kind in [*CPU_KINDS.values(), "wrk"]:
        heights = [http[n]["cpu_ms_per_request"][kind] for n in names]
        axes[1].bar([case_labels[n] for n in names], heights, bottom=bottom, label=kind)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    axes[1].legend(fontsize="small")
    axes[1].set_title("CPU ms per request, the whole box, by process")
    names = ["batched", "per_delta", "ledger_sql", "no_ledger_sql"]
    labels = [
        "batched\n(worker apply)",
        "one delta\nper transaction",
        "SQL with\nledger",
        "SQL without\nledger",
    ]
    axes[2].bar(
        labels,
        [db[n]["deltas_per_s"] for n in names],
        color=["tab:blue", "tab:red", "tab:green", "tab:gray"],
    )
    axes[2].set_title("Apply throughput in PostgreSQL, deltas/s")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


SECTIONS = ("http", "apply", "reads", "lag")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument(
        "--only",
        choices=SECTIONS,
        action="append",
        help="run only this part (repeatable); prints the table, writes no results",
    )
    args = parser.parse_args()
    only = set(args.only or SECTIONS)
    seconds, repeats, backlog = (3, 1, 2000) if args.quick else (10, 3, 100_000)
    if shutil.which("wrk") is None:
        say("installing wrk (Debian package)")
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True)
    from project import devservers

    os.environ["DJANGO_SETTINGS_MODULE"] = "project.settings.base"
    # Outside development the base settings have no secret key: the bench's own, for its run.
    os.environ.setdefault("DJANGO_SECRET_KEY", secrets.token_urlsafe(50))
    # Production-like logging: INFO would add a line per request in the web and the worker.
    os.environ.setdefault("LOG_LEVEL", "WARNING")
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
        from counters.models import Article

        # The anonymous beacon counts views of existing articles only (counters/access.py).
        for slug in ("hot", "hot-redis"):
            Article.objects.get_or_create(slug=slug, defaults={"title": slug, "body": "bench"})
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PATH": path}
        tmp = Path(tempfile.mkdtemp(prefix="bench-"))
        results: dict = {"started": time.time(), "quick": args.quick}
        say("1/6 the box: redis-benchmark, pg_test_fsync")
        results["box"] = box(os.environ["REDIS_URL"])
        if "http" in only:
            say(
                f"2/6 HTTP increments on {http_broker.split(':')[0]}: ours (group commit), ours "
                f"(one confirm per request), lossy Redis buffer, naive, no counting"
            )
            results["http"] = http_cases(
                env, tmp, seconds=seconds, repeats=repeats, redis_broker=redis_broker
            )
            versus = results["http"]["ours_vs_lossy"]
            say(
                f"http ours/lossy: {versus['rps']:.2f}x the requests/s, "
                f"{versus['cpu_ms_per_increment']:.2f}x the CPU per increment"
            )
        if "apply" in only:
            say("3/6 apply in the database: batched, per delta, SQL with and without the ledger")
            results["apply_db"] = apply_in_database(backlog)
            say("4/6 apply through a worker, from a backlog, on each broker")
            results["apply_worker"] = apply_workers(env, tmp, [amqp, redis_broker], backlog)
            use_broker(http_broker)
        if "reads" in only:
            say("5/6 reads of a 100-counter page")
            results["reads"] = reads()
        if "lag" in only:
            rate = max(results["http"]["ours"]["rps"] / 2, 10) if "http" in results else 200
            say(f"6/6 end-to-end lag at {rate:.0f} increments/s (half the measured HTTP rate)")
            results["lag"] = lag(env, tmp, rate=rate, seconds=seconds)
        table = report(results)
        if only == set(SECTIONS):
            RESULTS.mkdir(parents=True, exist_ok=True)
            (RESULTS / "latest.json").write_text(json.dumps(results, indent=2))
            chart(results, RESULTS / "latest.png")
            (RESULTS / "latest.md").write_text("\n".join(table) + "\n")
        print("\n".join(table))
        if only == set(SECTIONS):
            say(f"wrote {RESULTS / 'latest.json'}, latest.png, latest.md")
    return 0


def apply_workers(env: dict, tmp: Path, brokers: list[str], backlog: int) -> dict:
    """Batched vs one delta per transaction on each reachable broker, and on RabbitMQ the
    batched worker without the ledger (bench/worker_without_ledger.py)."""
    out = {}
    for broker in [b for b in brokers if _reachable(b)]:
        kind = broker.split(":")[0]
        runs = {
            "batched": apply_through_worker(
                env, tmp, broker, backlog, 500, envelope=BACKLOG_ENVELOPE
            ),
            "batched_one_message_per_delta": apply_through_worker(env, tmp, broker, backlog, 500),
            "per_delta": apply_through_worker(env, tmp, broker, max(backlog // 20, 500), 1),
        }
        runs["no_ledger"] = apply_through_worker(
            env,
            tmp,
            broker,
            backlog,
            500,
            envelope=BACKLOG_ENVELOPE,
            app="bench.worker_without_ledger",
        )
        out[kind] = runs
        say(f"   {kind}: " + ", ".join(f"{n} {rate(r['deltas_per_s'])}/s" for n, r in runs.items()))
    return out


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
