"""Test helpers: polling with a deadline, real Celery worker subprocesses, broker inspection."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from kombu import Connection

from tasks.topology import WORK_QUEUES, dead_letter_queue, task_queues

BASE_DIR = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T], *, timeout: float = 30.0, interval: float = 0.1, what: str = ""
) -> T:
    """Poll until ``predicate()`` is truthy and return it; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


@dataclass
class Worker:
    process: subprocess.Popen
    log: Path
    hostname: str

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def child_pids(self) -> list[int]:
        import psutil

        return [child.pid for child in psutil.Process(self.process.pid).children()]

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


@contextlib.contextmanager
def celery_worker(
    *,
    broker_url: str,
    database_url: str,
    log_dir: Path,
    queues: str = ",".join(WORK_QUEUES),
    concurrency: int = 1,
    env: dict[str, str] | None = None,
    extra_args: list[str] = (),
    redis_url: str | None = None,
) -> Iterator[Worker]:
    """A real ``celery worker`` subprocess (prefork pool) on the given broker and test database."""
    hostname = f"test-{uuid.uuid4().hex[:8]}@%h"
    argv = [sys.executable, "-m", "celery", "-A", "project", "worker", "--loglevel", "INFO"]
    argv += ["--queues", queues, "--concurrency", str(concurrency), "--hostname", hostname]
    argv += ["--pool", "prefork", "--without-gossip", "--without-mingle", *extra_args]
    with _process(
        argv,
        name="worker",
        ready=" ready.",
        hostname=hostname,
        log_dir=log_dir,
        env=_child_env(
            broker_url=broker_url, database_url=database_url, redis_url=redis_url, env=env
        ),
    ) as worker:
        yield worker


@contextlib.contextmanager
def outbox_relay(
    *,
    broker_url: str,
    database_url: str,
    log_dir: Path,
    env: dict[str, str] | None = None,
    redis_url: str | None = None,
    may_exit: bool = False,
) -> Iterator[Worker]:
    """A real ``manage.py outbox_relay`` subprocess (tasks/relay.py); ``may_exit``: it may be gone
    once it has started (a fault test's relay that kills itself)."""
    argv = [sys.executable, "manage.py", "outbox_relay"]
    with _process(
        argv,
        name="relay",
        ready="outbox relay",
        hostname="",
        log_dir=log_dir,
        may_exit=may_exit,
        env=_child_env(
            broker_url=broker_url, database_url=database_url, redis_url=redis_url, env=env
        ),
    ) as relay:
        yield relay


def _child_env(
    *, broker_url: str, database_url: str, redis_url: str | None, env: dict[str, str] | None
) -> dict[str, str]:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "project.settings.test",
        "CELERY_BROKER_URL": broker_url,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url or os.environ.get("REDIS_URL", ""),
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }


@contextlib.contextmanager
def _process(
    argv: list[str],
    *,
    name: str,
    ready: str,
    hostname: str,
    log_dir: Path,
    env: dict[str, str],
    may_exit: bool = False,
) -> Iterator[Worker]:
    log = log_dir / f"{name}-{uuid.uuid4().hex[:6]}.log"
    with open(log, "wb") as log_file:
        process = subprocess.Popen(
            argv,
            cwd=BASE_DIR,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    started = Worker(process=process, log=log, hostname=hostname)
    try:
        wait_for(
            lambda: process.poll() is not None or ready in started.output(),
            timeout=60,
            what=f"the {name} to be ready",
        )
        if process.poll() is not None and not (may_exit and ready in started.output()):
            raise AssertionError(f"{name} exited with {process.returncode}:\n{started.output()}")
        yield started
    finally:
        started.stop()


def declare_and_purge(broker_url: str) -> None:
    """Declare every queue and drop what earlier runs left in them."""
    with Connection(broker_url) as conn:
        channel = conn.channel()
        for queue in (*task_queues(max_deliveries=5), dead_letter_queue()):
            bound = queue.bind(channel)
            bound.declare()
            bound.purge()
        if broker_url.startswith("redis"):
            # Messages a killed worker held (kombu's unacked hash) would come back later.
            client = channel.client
            client.delete("unacked", "unacked_index", "unacked_mutex")
            # And the record of published deltas (tasks/inflight.py) of messages purged above.
            client.delete(*[f"inflight:{name}" for name in WORK_QUEUES])


def queue_depth(broker_url: str, queue_name: str) -> int:
    """Messages ready in a queue (an empty Redis queue is a missing key: no passive declare)."""
    with Connection(broker_url) as conn:
        channel = conn.channel()
        if broker_url.startswith("redis"):
            return channel._size(queue_name)
        _, count, _ = channel.queue_declare(queue=queue_name, passive=True)
        return count


def unacked_count(broker_url: str, queue_name: str) -> int:
    """Messages delivered to a consumer and not yet acknowledged or rejected.

    Redis: kombu's ``unacked`` hash (all queues). RabbitMQ: AMQP cannot tell, so ask the local
    node with ``rabbitmqctl`` (the tests' RabbitMQ runs on this machine).
    """
    if broker_url.startswith("redis"):
        with Connection(broker_url) as conn:
            return conn.channel().client.hlen("unacked")
    vhost = urllib.parse.unquote(urllib.parse.urlparse(broker_url).path[1:]) or "/"
    out = subprocess.run(
        [
            "rabbitmqctl",
            "list_queues",
            "--quiet",
            "--no-table-headers",
            "-p",
            vhost,
            "name",
            "messages_unacknowledged",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    for line in out.splitlines():
        name, _, count = line.partition("\t")
        if name == queue_name:
            return int(count)
    return 0


def settle(broker_url: str, queue_name: str = "default") -> None:
    """Wait until the worker has acknowledged or rejected everything it was given, so stopping
    it does not hand a finished message back to the queue."""
    wait_for(
        lambda: unacked_count(broker_url, queue_name) == 0,
        what=f"every message of {queue_name} to be acknowledged",
    )


def read_queue(broker_url: str, queue_name: str) -> list:
    """Take every message off a queue (acknowledging them) and return them."""
    queues = (*task_queues(max_deliveries=5), dead_letter_queue())
    queue = next(q for q in queues if q.name == queue_name)
    messages = []
    with Connection(broker_url) as conn:
        queue = queue.bind(conn.channel())
        while (message := queue.get(no_ack=False)) is not None:
            message.ack()
            messages.append(message)
    return messages


def counters_worker(**kwargs):
    """A worker for the counters queue, prefetching whole batches like the real one."""
    return celery_worker(
        queues="counters",
        concurrency=kwargs.pop("concurrency", 2),
        extra_args=["--prefetch-multiplier", "100"],
        **kwargs,
    )


@contextlib.contextmanager
def publishing_to(broker_url: str):
    """Make this process's Celery app publish to ``broker_url`` (the app caches its pools)."""
    from project.celery import app

    def reset():
        from kombu import pools

        pools.reset()  # kombu keeps producer pools in a global registry, keyed by connection
        app._pool = None
        app.amqp._producer_pool = None

    # Celery's conf.broker_url prefers the CELERY_BROKER_URL environment variable to the setting.
    previous = os.environ.get("CELERY_BROKER_URL")
    os.environ["CELERY_BROKER_URL"] = broker_url
    reset()
    try:
        assert app.conf.broker_url == broker_url
        yield
    finally:
        if previous is None:
            os.environ.pop("CELERY_BROKER_URL", None)
        else:
            os.environ["CELERY_BROKER_URL"] = previous
        reset()
