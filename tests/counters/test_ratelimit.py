"""Abuse limits on the public beacon (counters/ratelimit.py) and one view per session and article
(counters/views.py), through Django's test client on real servers."""

import json

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import Client

from counters import services
from counters.models import Article
from project.settings.counters import rate_limit_parse

from ..helpers import publishing_to

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def beacon(broker_url, cache_redis, settings):
    settings.COUNTER_RATE_LIMIT = (3, 60.0)
    settings.COUNTER_RATE_LIMITS = {"article_likes": None}
    with publishing_to(broker_url):
        yield


def incr(key: str, *, client: str = "203.0.113.7", amount: int = 1):
    return Client(REMOTE_ADDR=client).post(
        f"/api/counters/{key}/incr", json.dumps({"amount": amount}), "application/json"
    )


def test_past_its_limit_a_client_gets_429_with_retry_after_and_nothing_is_counted(beacon):
    key = "article_views:limited"
    assert [incr(key, amount=2).status_code for _ in range(3)] == [200, 200, 200]
    refused = incr(key, amount=2)
    assert refused.status_code == 429
    assert refused.json() == {
        "error": "too many increments of article_views from this client: retry in 20 s"
    }
    assert refused["Retry-After"] == "20"  # one token every 60/3 s
    assert services.counter_get(key=key).value == 6  # the refused increment counted nothing
    # Another client, an unlimited namespace and the Python API are not affected.
    assert incr(key, client="198.51.100.1").status_code == 200
    assert [incr("article_likes:limited").status_code for _ in range(5)] == [200] * 5
    for _ in range(5):
        services.counter_incr(key=key)
    assert services.counter_get(key=key).value == 12


def test_behind_a_proxy_the_client_is_read_from_the_configured_header(beacon, settings):
    settings.COUNTER_CLIENT_IP_HEADER = "X-Forwarded-For"
    key = "article_views:proxied"

    def through_proxy(client: str):
        return Client(REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR=f"1.2.3.4, {client}").post(
            f"/api/counters/{key}/incr", "{}", "application/json"
        )

    assert [through_proxy("203.0.113.9").status_code for _ in range(4)] == [200, 200, 200, 429]
    assert through_proxy("203.0.113.10").status_code == 200  # the proxy's address is not it


@pytest.mark.parametrize("spec", ["abc", "0/60", "10/0", "-1/60", "x/y"])
def test_a_malformed_limit_refuses_to_start(spec):
    with pytest.raises(ImproperlyConfigured, match="requests/seconds"):
        rate_limit_parse(spec, name="COUNTER_RATE_LIMIT")


def test_limits_read_from_settings_strings():
    assert rate_limit_parse("120/60", name="x") == (120, 60.0)
    assert rate_limit_parse("off", name="x") is None and rate_limit_parse("0", name="x") is None


def test_an_article_counts_one_view_per_session_in_its_window(broker_url, cache_redis, settings):
    settings.COUNTER_VIEW_WINDOW_S = 1800
    with publishing_to(broker_url):
        article = Article.objects.create(slug="once", title="Once", body="Read me.")
        reader = Client()
        for _ in range(3):
            assert reader.get("/articles/once/").status_code == 200
        assert services.counter_get(key=article.views_key).value == 1  # reloads are not readers
        Client().get("/articles/once/")
        assert services.counter_get(key=article.views_key).value == 2
