"""Test helpers: polling with a deadline, real Celery worker subprocesses, broker inspection."""

from __future__ import annotations

import base64
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from kombu import Connection

from tasks.broker import rabbitmq_api
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

    def stop(self, *, warm: bool = False) -> None:
        """``warm``: SIGTERM to the main process only, Celery's warm shutdown (the pool finishes
        its tasks and their acknowledgements are sent); the default also stops the children at
        once, as a container's stop does."""
        if warm and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(30)
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


FLOWER_CREDENTIALS = ("fl", "secret-pw")


@contextlib.contextmanager
def flower_server(*, broker_url: str) -> Iterator[str]:
    """A real Flower (project/flowerconfig.py, basic auth ``FLOWER_CREDENTIALS``) on the broker;
    yields its base URL."""
    from project.devservers import free_port, wait_for_port

    port = free_port()
    env = {
        **os.environ,
        "CELERY_BROKER_URL": broker_url,
        "FLOWER_BASIC_AUTH": ":".join(FLOWER_CREDENTIALS),
        "DJANGO_SETTINGS_MODULE": "project.settings.test",
    }
    argv = [sys.executable, "-m", "celery", "-A", "project", "flower"]
    argv += ["--conf=project/flowerconfig.py", "--address=127.0.0.1", f"--port={port}"]
    process = subprocess.Popen(
        argv,
        cwd=BASE_DIR,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for_port(port, process, "flower", BASE_DIR)
        yield f"http://127.0.0.1:{port}/"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(20)


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

    Redis: kombu's ``unacked`` hash (all queues), exact. RabbitMQ: AMQP cannot tell, so ask the
    management API (tasks/broker.py), whose quorum-queue figures lag by about 5 s.
    """
    if broker_url.startswith("redis"):
        with Connection(broker_url) as conn:
            return conn.channel().client.hlen("unacked")
    vhost = urllib.parse.unquote(urllib.parse.urlparse(broker_url).path[1:]) or "/"
    path = f"queues/{urllib.parse.quote(vhost, safe='')}/{urllib.parse.quote(queue_name)}"
    return int(rabbitmq_api(path).get("messages_unacknowledged") or 0)


def worker_idle(worker: Worker, broker_url: str) -> bool:
    """The worker's main process holds no request, reserved or running. Asked over remote
    control, which that process answers from its event loop: a task is gone from its lists only
    once it has read the task's result from the pool process and acknowledged or rejected the
    message (celery/worker/request.py: task_ready, then the ack or reject, in one callback)."""
    from celery.utils.nodenames import host_format

    from project.celery import app

    name = host_format(worker.hostname)
    # The request goes out through the app's producer pool, the replies come on ``conn``.
    with publishing_to(broker_url), Connection(broker_url) as conn:
        inspect = app.control.inspect(destination=[name], timeout=5.0, limit=1, connection=conn)
        for ask in (inspect.reserved, inspect.active):
            answer = ask()
            if not answer or answer.get(name) != []:
                return False
    return True


def held_after_stop(worker: Worker, broker_url: str, queue_name: str) -> int:
    """Stop the worker once the broker holds nothing more of ``queue_name`` for it, and return
    what it still holds then; exact on both brokers, with no statistics lag. Redis: the queue and
    kombu's ``unacked`` hash, waited on before the stop. RabbitMQ cannot count unacknowledged
    messages over AMQP, so the worker stops warm (with its consumer gone every unacknowledged
    message is back among the ready ones, which a passive declare counts live), once the queue
    is empty and the worker idle: Celery 5.6's warm shutdown drops the result of a task that
    finishes as it starts, and the message goes back to the queue although the task ran. Either
    the main process had read only the 4-byte header of a result over 16 KiB (billiard writes
    header and body separately; a dead letter's Reject carries a ~40 KB traceback) and its
    shutdown drain then misreads the body, or it had not yet read the pool process's ACK of a
    task just started, and the shutdown discards the task as never started (AsynPool.flush).
    The pool process then waits 30 s for its result to be read, in vain."""
    if broker_url.startswith("redis"):
        wait_for(
            lambda: (
                queue_depth(broker_url, queue_name) + unacked_count(broker_url, queue_name) == 0
            ),
            what=f"every message of {queue_name} acknowledged",
        )
    else:
        wait_for(
            lambda: queue_depth(broker_url, queue_name) == 0 and worker_idle(worker, broker_url),
            what=f"the worker idle and {queue_name} empty",
        )
    worker.stop(warm=True)
    held = queue_depth(broker_url, queue_name)
    if broker_url.startswith("redis"):
        held += unacked_count(broker_url, queue_name)
    return held


def committed_deltas(worker: Worker) -> int:
    """Delta messages the counters worker has put through a committed transaction (applied, or
    found in the ledger already), from its "batch committed: N deltas" log lines."""
    return sum(int(n) for n in re.findall(r"batch committed: (\d+) deltas", worker.output()))


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


def run_together(calls: list[Callable[[], object]]) -> None:
    """Run each call in a thread of its own, all released at once (a barrier), and wait for them.
    Each thread closes its own database connection at the end."""
    import threading

    from django.db import connection

    start = threading.Barrier(len(calls))

    def run(call: Callable[[], object]) -> None:
        try:
            start.wait()
            call()
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)


def delta_dead_letter(*, key: str, reason: str, amount: int = 1, exception: str = "E", **fields):
    """A counter delta's dead letter, recorded through the service the workers use."""
    from tasks.services import FailedMessage, dead_letter_record

    delta_id = str(uuid.uuid4())
    message = FailedMessage(
        **{
            "task_id": delta_id,
            "task_name": "counters.apply_deltas",
            "queue": "counters",
            "args": [delta_id, key, amount],
            "kwargs": {},
            "attempts": 1,
            "deliveries": 1,
            "broker": "redis",
            **fields,
        }
    )
    return dead_letter_record(message=message, reason=reason, exception=exception, traceback="")


def http_status(url: str, auth: str | None = None) -> int:
    """The status of a GET, with HTTP basic auth ``user:password`` if given."""
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def staff_with(username: str, *codenames: str):
    """A test client signed in as a staff user holding only these permissions."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Permission
    from django.test import Client

    user = get_user_model().objects.create_user(username, f"{username}@example.invalid", "pw")
    user.is_staff = True
    user.save(update_fields=["is_staff"])
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    client = Client()
    client.force_login(user)
    return client
