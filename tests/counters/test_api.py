"""The counter HTTP API: its answers, and that bad input or a dead broker changes nothing (G6)."""

import json
import uuid

import pytest
from django.test import Client

from counters import cache
from counters.models import AppliedDelta

from ..helpers import publishing_to, queue_depth

pytestmark = pytest.mark.django_db(transaction=True)


def post(client, key, body=None, content_type="application/json", **extra):
    data = body if isinstance(body, (str, bytes)) or body is None else json.dumps(body)
    return client.post(
        f"/api/counters/{key}/incr", data=data or "", content_type=content_type, **extra
    )


@pytest.fixture
def client():
    return Client(enforce_csrf_checks=True)  # the beacon API must not need a CSRF token


def assert_nothing_counted(broker_url, cache_redis):
    assert queue_depth(broker_url, "counters") == 0
    assert not list(cache_redis.scan_iter(match=cache.PREFIX + "*"))


@pytest.mark.parametrize(
    "key, body, message",
    [
        ("Article_views:x", None, "namespace:name"),
        ("unknown:x", None, "unknown counter namespace"),
        ("article_views:" + "a" * 200, None, "longer than 200"),
        ("article_views:x", {"amount": 0}, "non-zero"),
        ("article_views:x", {"amount": 10**9}, "between"),
        ("article_views:x", {"amount": "1"}, "integer"),
        ("article_views:x", {"amount": 1.5}, "integer"),
        ("article_views:x", {"amount": True}, "integer"),
        ("article_views:x", {"amount": 1, "extra": 2}, "unexpected fields"),
        ("article_views:x", [1], "JSON object"),
        ("article_views:x", "{not json", "not valid JSON"),
        ("article_views:x", b"\xff\xfe", "not valid JSON"),
    ],
)
def test_bad_input_is_a_400_with_a_json_error_and_changes_nothing(
    broker_url, cache_redis, client, key, body, message
):
    with publishing_to(broker_url):
        response = post(client, key, body)
    assert response.status_code == 400
    assert message in response.json()["error"]
    assert_nothing_counted(broker_url, cache_redis)


def test_bad_key_on_read_is_a_400(client):
    response = client.get("/api/counters/NOPE")
    assert response.status_code == 400
    assert "error" in response.json()


def test_wrong_method_is_a_405_json_error(client):
    assert client.get("/api/counters/article_views:x/incr").status_code == 405
    assert client.post("/api/counters/article_views:x").status_code == 405


@pytest.mark.parametrize(
    "dead_broker", ["redis://127.0.0.1:1/0", "amqp://guest:guest@127.0.0.1:1//"]
)
def test_unreachable_broker_is_a_503_and_nothing_is_counted(
    dead_broker, cache_redis, client, service
):
    with publishing_to(dead_broker):
        response = post(client, "article_views:down", {"amount": 5}, **service)
    assert response.status_code == 503
    body = response.json()
    assert "not counted" in body["error"] and body["counted"] is False
    # Cancelled in the ledger: a copy of it that reached the broker after all is a no-op.
    cancelled = AppliedDelta.objects.get(delta_id=body["delta_id"])
    assert (cancelled.key, cancelled.amount) == ("article_views:down", 0)
    assert not list(cache_redis.scan_iter(match=cache.PREFIX + "*"))
    reading = client.get("/api/counters/article_views:down", **service).json()
    assert reading == {"key": "article_views:down", "value": 0, "durable": 0, "pending": 0}


def test_increment_and_read_over_http(broker_url, cache_redis, client, service):
    with publishing_to(broker_url):
        first = post(client, "article_likes:http", **service).json()
        response = post(client, "article_likes:http", {"amount": 4}, **service)
    assert first == {"key": "article_likes:http", "value": 1, "delta_id": first["delta_id"]}
    assert response.status_code == 200
    second = response.json()
    assert second == {"key": "article_likes:http", "value": 5, "delta_id": second["delta_id"]}
    assert uuid.UUID(first["delta_id"]) != uuid.UUID(second["delta_id"])
    reading = client.get("/api/counters/article_likes:http", **service).json()
    assert reading == {"key": "article_likes:http", "value": 5, "durable": 0, "pending": 5}
    assert queue_depth(broker_url, "counters") == 2  # no worker here: both deltas wait in the queue
