"""Who may count and read what over HTTP (counters/access.py): each request an attacker sent
before, refused and changing nothing, beside the legitimate use, through Django's test client
on real servers."""

import json

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import Client

from counters import access, cache, services
from counters.models import Article, Counter

from ..helpers import queue_depth, staff_with

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def article(broker, cache_redis):
    access._seen.clear()  # another test's article of the same slug is not this one
    return Article.objects.create(slug="hello", title="Hello", body="Counting things.")


def incr(key: str, body=None, **extra):
    data = json.dumps(body) if body is not None else ""
    return Client(enforce_csrf_checks=True).post(
        f"/api/counters/{key}/incr", data, "application/json", **extra
    )


def assert_nothing_counted(broker_url, cache_redis):
    assert queue_depth(broker_url, "counters") == 0
    assert not list(cache_redis.scan_iter(match=cache.PREFIX + "*"))
    assert not Counter.objects.exists()


@pytest.mark.parametrize(
    "key, body, status, message",
    [
        # A million likes, or a falsified sales figure, from anyone on the internet.
        ("article_likes:hello", {"amount": 1000000}, 403, "not counted through the public beacon"),
        ("orders_placed:all", {"amount": 1000000}, 403, "not counted through the public beacon"),
        ("product_units_sold:1", {"amount": 1000000}, 403, "not counted through the public"),
        ("article_likes:hello", None, 403, "not counted through the public beacon"),
        # Views moved by more than one, either way.
        ("article_views:hello", {"amount": -1000000}, 403, "adds 1 only"),
        ("article_views:hello", {"amount": 2}, 403, "adds 1 only"),
        # A key that names no article (it would fill the cache and the database with junk).
        ("article_views:no-such-article", None, 404, "no article 'no-such-article'"),
        # The look-alike key: a trailing newline was a second key.
        ("article_views:hello%0A", None, 400, "namespace:name"),
    ],
)
def test_the_anonymous_beacon_refuses_what_it_was_exploited_with(
    article, broker, cache_redis, key, body, status, message
):
    response = incr(key, body)
    assert response.status_code == status
    assert message in response.json()["error"]
    assert_nothing_counted(broker, cache_redis)


def test_the_anonymous_beacon_adds_one_view_to_an_existing_article(article, broker):
    assert incr("article_views:hello").json()["value"] == 1
    assert incr("article_views:hello", {"amount": 1}).json()["value"] == 2
    assert queue_depth(broker, "counters") == 2


def test_a_hot_key_costs_no_database_query_after_its_first(article, broker, cache_redis):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    incr("article_views:hello")
    with CaptureQueriesContext(connection) as queries:
        assert incr("article_views:hello").status_code == 200
    # (The write path itself may ask the ledger, right after a fill: counters/cache.py, BUMP.)
    assert [q["sql"] for q in queries.captured_queries if "counters_article" in q["sql"]] == []
    access._seen.clear()
    with CaptureQueriesContext(connection) as queries:
        assert incr("article_views:hello").status_code == 200
    assert [q for q in queries.captured_queries if "counters_article" in q["sql"]] != []


def test_a_service_token_counts_any_namespace_and_amount(article, broker, service):
    response = incr("orders_placed:all", {"amount": 3}, **service)
    assert response.status_code == 200 and response.json()["value"] == 3
    lowercase = {"HTTP_AUTHORIZATION": service["HTTP_AUTHORIZATION"].replace("Bearer", "bearer")}
    assert incr("orders_placed:all", {"amount": 2}, **lowercase).json()["value"] == 5
    assert incr("article_likes:anything", {"amount": -5}, **service).json()["value"] == -5
    read = Client().get("/api/counters/orders_placed:all", **service)
    assert read.json()["value"] == 5


@pytest.mark.parametrize("header", ["Bearer wrong-token", "Bearer "])
def test_a_wrong_service_token_is_a_401_and_counts_nothing(
    article, broker, cache_redis, service, header
):
    response = incr("orders_placed:all", {"amount": 5}, HTTP_AUTHORIZATION=header)
    assert response.status_code == 401
    assert "error" in response.json()
    assert_nothing_counted(broker, cache_redis)


def test_reads_of_sales_figures_are_for_staff_with_the_permission(article, broker, service):
    incr("orders_placed:all", {"amount": 7}, **service)
    anonymous = Client().get("/api/counters/orders_placed:all")
    assert anonymous.status_code == 401 and "not public" in anonymous.json()["error"]
    customer = get_user_model().objects.create_user("cust", password="pw-cust-1")
    signed_in = Client()
    signed_in.force_login(customer)
    assert signed_in.get("/api/counters/orders_placed:all").status_code == 403
    assert staff_with("staff").get("/api/counters/orders_placed:all").status_code == 403
    viewer = staff_with("viewer", "view_counter")
    assert viewer.get("/api/counters/orders_placed:all").json()["value"] == 7


def test_public_reads_name_existing_objects_only(article, broker, cache_redis):
    incr("article_views:hello")
    assert Client().get("/api/counters/article_views:hello").json()["value"] == 1
    assert Client().get("/api/counters/article_likes:hello").json()["value"] == 0
    junk = Client().get("/api/counters/article_views:never-seen-key")
    assert junk.status_code == 404
    assert not cache_redis.exists(cache.PREFIX + "article_views:never-seen-key")


def test_likes_are_limited_per_client_before_a_session_is_made(article, settings):
    """A client that drops its cookies likes again with each POST, and each makes a session
    row: past the limit it gets 429 and nothing is counted or stored."""
    from django.contrib.sessions.models import Session

    settings.COUNTER_LIKE_RATE_LIMIT = (3, 60.0)

    def fresh_like(address="203.0.113.7"):
        return Client(REMOTE_ADDR=address).post(
            "/articles/hello/like", {"action": "like"}, HTTP_ACCEPT="application/json"
        )

    assert [fresh_like().status_code for _ in range(3)] == [200] * 3
    refused = fresh_like()
    assert refused.status_code == 429 and refused["Retry-After"] == "20"
    assert "too many likes" in refused.json()["error"]
    assert Session.objects.count() == 3
    assert services.counter_get(key=article.likes_key).value == 3
    assert fresh_like("198.51.100.1").status_code == 200  # another client is not affected


def test_service_token_command_prints_a_token_and_its_digest(capsys):
    import hashlib

    call_command("counters", "service-token")
    out = capsys.readouterr().out
    token = out.split("token:")[1].split()[0]
    digest = out.split("digest:")[1].split()[0]
    assert hashlib.sha256(token.encode()).hexdigest() == digest


def test_with_postgresql_unreachable_a_known_article_is_counted_and_an_unknown_one_refused(
    article, broker
):
    """The object check must not take the beacon down with the database: an article seen before
    is still counted; one never seen is refused with 503 (not counted), not let through."""
    from django.db import connection

    from project.devservers import free_port

    assert incr("article_views:hello").status_code == 200  # seen: remembered by this process
    # Due for its recheck: the database is asked, does not answer, and what was seen stands.
    access._seen[("article_views", "hello")] -= access.OBJECT_RECHECK_S + 1
    port = connection.settings_dict["PORT"]
    connection.close()
    connection.settings_dict["PORT"] = str(free_port())  # nothing listens there
    try:
        known = incr("article_views:hello")
        unknown = incr("article_views:never-seen")
    finally:
        connection.close()
        connection.settings_dict["PORT"] = port
    assert known.status_code == 200 and known.json()["delta_id"]
    assert unknown.status_code == 503
    assert "database is unavailable" in unknown.json()["error"]
    assert queue_depth(broker, "counters") == 2  # the two counted; nothing of the refused one


def test_a_basic_auth_header_is_anonymous_not_refused(article, broker, cache_redis):
    """A site behind a proxy's basic auth: the browser sends Authorization: Basic with every
    request, and the beacon and public reads must keep working as anonymous ones."""
    basic = {"HTTP_AUTHORIZATION": "Basic dXNlcjpwdw=="}
    assert incr("article_views:hello", **basic).json()["value"] == 1
    assert Client().get("/api/counters/article_views:hello", **basic).json()["value"] == 1
    refused = incr("orders_placed:all", {"amount": 5}, **basic)
    assert refused.status_code == 403  # and no more than anonymous


@pytest.mark.parametrize("body", ['{"amount": ' + "1" * 5000 + "}", "[" * 100_000])
def test_a_body_the_json_parser_gives_up_on_is_a_400(article, broker, cache_redis, body):
    response = Client().post("/api/counters/article_views:hello/incr", body, "application/json")
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]
    assert_nothing_counted(broker, cache_redis)


def test_article_page_views_share_the_beacons_limit(article, settings):
    """A client without a cookie is a new reader with every page view: past the per-client limit
    the page still renders and counts nothing."""
    settings.COUNTER_RATE_LIMIT = (2, 60.0)
    pages = [Client(REMOTE_ADDR="203.0.113.8").get("/articles/hello/") for _ in range(4)]
    assert [p.status_code for p in pages] == [200] * 4
    assert services.counter_get(key=article.views_key).value == 2
