import pytest

from ..helpers import counters_worker, publishing_to


@pytest.fixture
def broker(broker_url):
    """This process publishes to the broker under test."""
    with publishing_to(broker_url):
        yield broker_url


@pytest.fixture
def worker(broker, database_url, cache_redis, worker_log_dir):
    """A counters worker subprocess on the broker under test."""
    with counters_worker(
        broker_url=broker, database_url=database_url, log_dir=worker_log_dir
    ) as running:
        yield running
