"""Shared fixtures. Every server is real: PostgreSQL (pytest-django's test database), the cache
Redis, and both brokers: RabbitMQ and a Redis broker."""

from __future__ import annotations

import os
import socket
import uuid
from urllib.parse import urlparse

import pytest
from django.conf import settings
from django_redis import get_redis_connection

from project import devservers
from project.settings.test import per_test_process
from tasks.broker import rabbitmq_api

from .helpers import declare_and_purge

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"

# Celery reads CELERY_BROKER_URL from the environment before its setting, and worker subprocesses
# inherit the environment: both must name this test process's own Redis database (xdist).
for _name in ("REDIS_URL", "CELERY_BROKER_URL", "TEST_REDIS_BROKER_URL"):
    if os.environ.get(_name):
        os.environ[_name] = per_test_process(os.environ[_name])

# The fault suite (minutes of injected faults) runs on its own: `make test-faults`.
collect_ignore = [] if os.environ.get("FAULT_SUITE") == "1" else ["faults"]


def _reachable(url: str) -> bool:
    parsed = urlparse(url)
    default_port = 5672 if parsed.scheme.startswith("amqp") else 6379
    try:
        with socket.create_connection((parsed.hostname, parsed.port or default_port), 2):
            return True
    except OSError:
        return False


def _amqp_base_url() -> str:
    configured = os.environ.get("CELERY_BROKER_URL", "")
    if configured.startswith(("amqp", "pyamqp")):
        return configured
    return os.environ.get("TEST_AMQP_URL", DEFAULT_AMQP_URL)


@pytest.fixture(scope="session")
def amqp_url():
    """RabbitMQ, in a virtual host of this test run's own (made through the management API), so
    two runs on one broker never purge each other's queues; the default vhost if that fails."""
    base = _amqp_base_url()
    if not _reachable(base):
        yield base
        return
    vhost = f"test-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    user = urlparse(base).username or "guest"
    try:
        rabbitmq_api(f"vhosts/{vhost}", method="PUT")
        rabbitmq_api(
            f"permissions/{vhost}/{user}",
            method="PUT",
            body={"configure": ".*", "write": ".*", "read": ".*"},
        )
    except OSError:
        yield base
        return
    parsed = urlparse(base)
    yield parsed._replace(path=f"/{vhost}").geturl()
    try:
        rabbitmq_api(f"vhosts/{vhost}", method="DELETE")
    except OSError:
        pass


@pytest.fixture(scope="session")
def redis_broker_url(tmp_path_factory):
    """The Redis broker: the configured one, else an embedded one (AOF, noeviction)."""
    configured = os.environ.get("CELERY_BROKER_URL", "")
    url = os.environ.get("TEST_REDIS_BROKER_URL") or (
        configured if configured.startswith("redis") else ""
    )
    if url:
        yield url
        return
    server = devservers.start_redis(root=tmp_path_factory.mktemp("broker"), role="broker")
    yield server.url
    server.stop()


@pytest.fixture(params=["amqp", "redis"])
def broker_url(request) -> str:
    """Each broker-dependent test runs on every broker; with CI=true a missing one fails."""
    yield from _broker_under_test(request, request.param)


@pytest.fixture
def one_broker_url(request) -> str:
    """For tests whose outcome does not depend on the broker (the pages, Flower's login): the
    Redis broker `make run` starts. Delivery and the pipeline are tested on both brokers."""
    yield from _broker_under_test(request, "redis")


def _broker_under_test(request, kind: str):
    url = request.getfixturevalue("amqp_url" if kind == "amqp" else "redis_broker_url")
    if not _reachable(url):
        message = f"{kind} broker not reachable at {url}"
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (CI=true requires both brokers)")
        pytest.skip(message)
    declare_and_purge(url)
    yield url
    declare_and_purge(url)


@pytest.fixture
def database_url(transactional_db) -> str:
    """URL of pytest-django's test database, for worker subprocesses."""
    db = settings.DATABASES["default"]
    return f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


@pytest.fixture
def cache_redis(monkeypatch):
    """The cache Redis: this test process's database (settings/test.py), emptied before and after.

    The xdist processes share the server, one database each, so its ``flushall`` empties this
    process's database only: a real FLUSHALL (tests/counters/test_repair.py, "the cache is lost")
    also emptied the others mid-test, e.g. the counter hash tests/project/test_ops.py had just
    bumped in another process (its hottest_pending came back [])."""
    client = get_redis_connection("default")
    monkeypatch.setattr(client, "flushall", client.flushdb)
    client.flushdb()
    yield client
    client.flushdb()


@pytest.fixture
def worker_log_dir(tmp_path):
    return tmp_path
