"""Abuse limits on the public beacon (counters/ratelimit.py) and one view per session and article
(counters/views.py), through Django's test client on real servers."""

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import Client

from counters import access, services
from counters.models import Article
from project.settings.counters import rate_limit_parse

from ..helpers import publishing_to

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def beacon(broker_url, cache_redis, settings):
    settings.COUNTER_RATE_LIMIT = (3, 60.0)
    access._seen.clear()
    with publishing_to(broker_url):
        Article.objects.create(slug="limited", title="Limited", body="Counted.")
        yield


def incr(key: str, *, client: str = "203.0.113.7", **extra):
    return Client(REMOTE_ADDR=client).post(
        f"/api/counters/{key}/incr", "{}", "application/json", **extra
    )


def test_past_its_limit_a_client_gets_429_with_retry_after_and_nothing_is_counted(beacon, service):
    key = "article_views:limited"
    assert [incr(key).status_code for _ in range(3)] == [200, 200, 200]
    refused = incr(key)
    assert refused.status_code == 429
    assert refused.json() == {
        "error": "too many increments of article_views from this client: retry in 20 s"
    }
    assert refused["Retry-After"] == "20"  # one token every 60/3 s
    assert services.counter_get(key=key).value == 3  # the refused increment counted nothing
    # Another client, a service token and the Python API are not affected.
    assert incr(key, client="198.51.100.1").status_code == 200
    assert [incr(key, **service).status_code for _ in range(5)] == [200] * 5
    for _ in range(5):
        services.counter_incr(key=key)
    assert services.counter_get(key=key).value == 14


def through_proxy(peer: str, forwarded: str):
    return Client(REMOTE_ADDR=peer, HTTP_X_FORWARDED_FOR=forwarded).post(
        "/api/counters/article_views:limited/incr", "{}", "application/json"
    )


def test_behind_a_trusted_proxy_the_client_is_read_from_the_configured_header(beacon, settings):
    settings.COUNTER_CLIENT_IP_HEADER = "X-Forwarded-For"
    settings.COUNTER_TRUSTED_PROXIES = ["10.0.0.0/8"]
    # The client wrote "1.2.3.4" itself; the proxy appended the address it saw.
    statuses = [through_proxy("10.0.0.2", "1.2.3.4, 203.0.113.9").status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    assert through_proxy("10.0.0.2", "1.2.3.4, 203.0.113.10").status_code == 200
    # Two trusted proxies in a row: the client is the last address that is not one of them.
    assert through_proxy("10.0.0.3", "203.0.113.9, 10.0.0.2").status_code == 429


def test_a_header_from_an_untrusted_peer_is_ignored(beacon, settings):
    """A fresh X-Forwarded-For per request bought a fresh bucket: from a peer that is not a
    trusted proxy the header is not believed, and the peer's own address is limited."""
    settings.COUNTER_CLIENT_IP_HEADER = "X-Forwarded-For"
    settings.COUNTER_TRUSTED_PROXIES = ["10.0.0.0/8"]
    statuses = [through_proxy("203.0.113.50", f"198.51.100.{i}").status_code for i in range(4)]
    assert statuses == [200, 200, 200, 429]


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


@pytest.mark.parametrize(
    "variable, value, message",
    [
        ("COUNTER_TRUSTED_PROXIES", "10.0.0.0/8,not-a-network", "not an address or a network"),
        ("COUNTER_SERVICE_TOKENS", "the-token-itself", "sha256 hex digests"),
    ],
)
def test_a_malformed_proxy_or_token_setting_refuses_to_start(variable, value, message):
    """Checked where the settings are read (gunicorn runs no system checks): a typo stops the
    process instead of failing every beacon, like and sign-in."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "project.settings.test", variable: value}
    done = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and message in done.stderr, done.stderr[-500:]
