"""Health, the operations page and its JSON, and the metrics endpoint."""

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from counters import services

from ..helpers import publishing_to

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def staff(transactional_db, cache_redis):  # sessions live in the cache: flush it first
    user = get_user_model().objects.create_user("ops", "ops@example.com", "pw", is_staff=True)
    client = Client()
    client.force_login(user)
    return client


def test_healthz_answers_200_when_everything_answers(broker_url, cache_redis):
    with publishing_to(broker_url):
        response = Client().get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_healthz_names_what_failed(settings, cache_redis):
    dead_cache = {**settings.CACHES["default"], "LOCATION": "redis://127.0.0.1:1/0"}
    settings.CACHES = {**settings.CACHES, "default": dead_cache}
    with publishing_to("amqp://guest:guest@127.0.0.1:1//"):
        response = Client().get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "failing" and set(body["failed"]) == {"cache", "broker"}


def test_ops_page_and_status_need_staff(staff, transactional_db):
    assert Client().get("/ops/").status_code == 302  # to the login page
    assert Client().get("/ops/status.json").status_code == 302
    assert staff.get("/ops/").status_code == 200


def test_ops_status_reports_queues_pending_and_cache(staff, broker_url, cache_redis):
    with publishing_to(broker_url):
        services.counter_incr(key="article_views:ops", amount=3)
        services.counter_incr(key="article_views:ops")
        status = staff.get("/ops/status.json").json()
    assert status["broker"] == ("redis" if broker_url.startswith("redis") else "amqp")
    assert set(status["queues"]) >= {"counters", "orders", "default", "dead_letter"}
    assert status["hottest_pending"] == [{"key": "article_views:ops", "pending": 4}]
    assert status["cache"]["hit_ratio"] is not None
    if status["broker"] == "redis":  # RabbitMQ's management figures lag by seconds
        assert status["pending_deltas"] == 2
    assert "workers" in status and "dead_letters" in status
    # Nothing was dispatched in a transaction: the outbox is empty (tests/tasks/test_outbox.py
    # checks its figures while rows wait).
    assert status["outbox"] == {
        "waiting": 0,
        "retrying": 0,
        "oldest_age_s": None,
        "relays_alive": [],
    }


def test_metrics_need_authentication_and_count_increments(staff, broker_url, cache_redis, settings):
    assert Client().get("/metrics").status_code == 401
    settings.METRICS_TOKEN = "scrape-me"
    with publishing_to(broker_url):
        services.counter_incr(key="article_likes:metrics")
    body = Client(HTTP_AUTHORIZATION="Bearer scrape-me").get("/metrics").content.decode()
    assert 'counter_increments_total{namespace="article_likes"}' in body
    assert "delta_apply_seconds" in body and "counter_cache_reads_total" in body
    assert "deltas_pending" in body
    assert "outbox_rows_waiting 0.0" in body and "outbox_relays_alive 0.0" in body
    assert staff.get("/metrics").status_code == 200
