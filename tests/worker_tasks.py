"""Tasks that only the test suite sends to real worker subprocesses (CELERY_IMPORTS in test
settings). They report what happened to them through the cache Redis, which both the test process
and the worker can see."""

import os
import signal
import time

from celery import shared_task
from django.db import OperationalError, connection
from django_redis import get_redis_connection


def _redis():
    return get_redis_connection("default")


@shared_task(name="tests.always_transient", bind=True)
def always_transient(self, marker: str) -> None:
    _redis().rpush(f"test:attempts:{marker}", time.time())
    raise OperationalError("simulated: database unreachable")


@shared_task(name="tests.always_permanent", bind=True)
def always_permanent(self, marker: str) -> None:
    _redis().rpush(f"test:attempts:{marker}", time.time())
    raise ValueError("simulated: malformed payload")


@shared_task(name="tests.record", bind=True)
def record(self, marker: str) -> None:
    _redis().rpush(f"test:done:{marker}", self.request.id)


@shared_task(name="tests.block_until_released", bind=True)
def block_until_released(self, marker: str) -> None:
    """Report the worker process running it, then wait until the test releases it."""
    client = _redis()
    client.rpush(f"test:started:{marker}", os.getpid())
    deadline = time.monotonic() + 60
    while not client.exists(f"test:release:{marker}"):
        if time.monotonic() > deadline:
            raise TimeoutError("never released")
        time.sleep(0.05)
    client.rpush(f"test:done:{marker}", os.getpid())


@shared_task(name="tests.kill_own_process", bind=True)
def kill_own_process(self, marker: str) -> None:
    """A poison message: kills the worker process that runs it, every time."""
    _redis().rpush(f"test:started:{marker}", os.getpid())
    os.kill(os.getpid(), signal.SIGKILL)


@shared_task(name="tests.database_backend", bind=True)
def database_backend(self, marker: str) -> None:
    """Report the PostgreSQL backend serving this worker process's connection."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        _redis().rpush(f"test:done:{marker}", cursor.fetchone()[0])
