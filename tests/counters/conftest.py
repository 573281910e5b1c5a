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


SERVICE_TOKEN = "counters-service-token-of-the-tests"


@pytest.fixture
def service(settings) -> dict:
    """A service token the web accepts (its digest in COUNTER_SERVICE_TOKENS): the test
    client's keyword arguments that send it."""
    import hashlib

    settings.COUNTER_SERVICE_TOKENS = frozenset(
        {hashlib.sha256(SERVICE_TOKEN.encode()).hexdigest()}
    )
    return {"HTTP_AUTHORIZATION": f"Bearer {SERVICE_TOKEN}"}
