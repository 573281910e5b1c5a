"""Health, the operations page and its JSON, and the metrics endpoint."""

import threading
import time

import pytest
import redis
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client

from counters import services
from project import devservers, views
from tasks.models import DeadLetter

from ..helpers import delta_dead_letter, publishing_to, read_queue

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def staff(transactional_db, cache_redis):
    user = get_user_model().objects.create_user("ops", "ops@example.com", "pw", is_staff=True)
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def fresh_health():
    """Each test's /healthz probes its own servers: the last round is forgotten before and after
    (a round is reused for HEALTH_CACHE_S, on purpose)."""
    views.HEALTH.forget()
    yield views.HEALTH
    views.HEALTH.forget()


@pytest.fixture
def dead_cache_and_broker(settings):
    dead_cache = {**settings.CACHES["default"], "LOCATION": "redis://127.0.0.1:1/0"}
    settings.CACHES = {**settings.CACHES, "default": dead_cache}
    with publishing_to("amqp://guest:guest@127.0.0.1:1//"):
        yield


def test_healthz_answers_200_when_everything_answers(broker_url, cache_redis, fresh_health):
    with publishing_to(broker_url):
        response = Client().get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})
    assert response["Cache-Control"] == "no-store"


def test_healthz_tells_anyone_what_failed_and_only_staff_why(
    staff, settings, fresh_health, dead_cache_and_broker
):
    """Issue 26 (9): the exception texts name hosts and users; anonymous callers get the
    component names only, staff and the metrics token the texts too."""
    response = Client().get("/healthz")
    assert response.status_code == 503
    assert response.json() == {"status": "failing", "failed": ["broker", "cache"]}
    assert "127.0.0.1" not in response.content.decode()

    detailed = staff.get("/healthz").json()
    assert detailed["failed"] == ["broker", "cache"]
    assert set(detailed["errors"]) == {"broker", "cache"}
    assert "Error" in detailed["errors"]["cache"]
    settings.METRICS_TOKEN = "scrape-me"
    scraper = Client(HTTP_AUTHORIZATION="Bearer scrape-me").get("/healthz").json()
    assert set(scraper["errors"]) == {"broker", "cache"}
    wrong = Client(HTTP_AUTHORIZATION="Bearer scrape-you").get("/healthz").json()
    assert "errors" not in wrong


def test_healthz_probes_once_per_window_whatever_the_requests(tmp_path, cache_redis, fresh_health):
    """Issue 26 (9): each request used to open a broker connection of its own. Counted by a Redis
    broker of this test's own (nobody else connects to it): a burst of requests costs one probe,
    and the answer is the window's, until the window ends."""
    server = devservers.start_redis(root=tmp_path, role="broker")
    try:
        broker = redis.Redis.from_url(server.url)

        def connections() -> int:
            return broker.info("stats")["total_connections_received"]

        with publishing_to(server.url):
            before = connections()
            answers = [Client().get("/healthz").status_code for _ in range(30)]
            assert answers == [200] * 30
            assert connections() - before == 1
            server.stop()  # the broker goes away within the window: not probed again yet
            assert Client().get("/healthz").status_code == 200
            fresh_health.forget()  # the window is over
            failing = Client().get("/healthz")
            assert failing.status_code == 503 and failing.json()["failed"] == ["broker"]
    finally:
        server.stop()


def test_the_probes_answer_is_kept_for_its_window_only(cache_redis, fresh_health, settings):
    settings.METRICS_TOKEN = ""
    short = views.ProbeResults(window_s=0.5)
    assert short.failures() == {} and short.failures() == {}
    taken = short._taken_at
    time.sleep(0.6)
    short.failures()
    assert short._taken_at > taken  # probed again after the window


def test_while_one_thread_probes_the_others_answer_with_the_last_round(
    cache_redis, fresh_health, settings
):
    """A hung server makes a round of probes take seconds: other requests meanwhile must not
    queue behind it (a few would hold every gunicorn thread)."""
    results = views.ProbeResults(window_s=0.0)  # every call is due for a new round
    assert results.failures() == {}
    answers = []
    results._lock.acquire()  # a round in progress in another thread
    try:
        asking = threading.Thread(target=lambda: answers.append(results.failures()))
        asking.start()
        asking.join(timeout=10)  # a deadline, not a speed: without the fix it waits for ever
        assert answers == [{}]  # the last round, without waiting for the one in progress
    finally:
        results._lock.release()
        asking.join()


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
    hottest = status["hottest_pending"]
    assert hottest == [{"key": "article_views:ops", "pending": 4}], status["errors"]
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


def test_metrics_refuse_a_wrong_an_empty_or_a_non_ascii_token(cache_redis, settings):
    """Issue 26 (10): the token is compared in constant time (hmac.compare_digest, as bytes, so
    a non-ASCII header is a wrong token, not a 500); an unset token lets no bearer in."""
    settings.METRICS_TOKEN = ""
    assert Client(HTTP_AUTHORIZATION="Bearer ").get("/metrics").status_code == 401
    settings.METRICS_TOKEN = "scrape-me"
    for given in ("Bearer scrape-m", "Bearer scrape-mee", "scrape-me", "Bearer scrape-m\u00e9"):
        response = Client(HTTP_AUTHORIZATION=given).get("/metrics")
        assert (response.status_code, response.json()) == (
            401,
            {"error": "authentication required"},
        ), given
    assert Client(HTTP_AUTHORIZATION="Bearer scrape-me").get("/metrics").status_code == 200


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


def test_ops_page_shows_each_component_state_and_the_charts(staff, broker_url, cache_redis):
    with publishing_to(broker_url):
        page = staff.get("/ops/").content.decode()
        panels = staff.get("/ops/panels").content.decode()
    for name in ["PostgreSQL", "Cache Redis", "Broker", "Workers", "Outbox", "Dead letters"]:
        assert f'data-component="{name}"' in page and f'data-component="{name}"' in panels
    assert 'data-component="PostgreSQL" data-state="green"' in page
    assert 'data-component="Workers" data-state="red"' in page  # no worker runs in this test
    assert page.count('role="img"') == 4
    for label in ["deltas/s", "seconds", "deltas", "per 10 s", "now", "-5 min"]:
        assert f">{label}</text>" in page


def test_a_staff_session_outlives_the_cache_and_the_page_names_it_red(
    staff, broker_url, cache_redis, settings
):
    """Sessions are kept in PostgreSQL: with the cache Redis unreachable, staff still see the
    operations page, and it says why the cache is red."""
    dead_cache = {**settings.CACHES["default"], "LOCATION": "redis://127.0.0.1:1/0"}
    settings.CACHES = {**settings.CACHES, "default": dead_cache}
    with publishing_to(broker_url):
        response = staff.get("/ops/")
    assert response.status_code == 200
    page = response.content.decode()
    assert 'data-component="Cache Redis" data-state="red"' in page
    assert 'data-component="PostgreSQL" data-state="green"' in page


@pytest.fixture
def operator(staff):
    """Staff with the admin's permission to change dead letters (what replaying needs)."""
    user = get_user_model().objects.get(username="ops")
    user.user_permissions.add(Permission.objects.get(codename="change_deadletter"))
    return staff


def test_replay_button_replays_every_dead_letter_of_its_reason_once(operator, broker_url):
    staff = operator
    poison = [
        delta_dead_letter(reason=DeadLetter.Reason.DELIVERY_LIMIT, key=f"article_views:p{i}")
        for i in range(2)
    ]
    other = delta_dead_letter(reason=DeadLetter.Reason.PERMANENT_ERROR, key="article_views:other")
    with publishing_to(broker_url):
        page = staff.get("/ops/").content.decode()
        assert 'id="replay-delivery_limit"' in page and "Replay all 2" in page
        response = staff.post("/ops/dead-letters/replay", {"reason": "delivery_limit"}, follow=True)
        again = staff.post("/ops/dead-letters/replay", {"reason": "delivery_limit"}, follow=True)
        published = read_queue(broker_url, "counters")
    assert "Replayed 2 dead letter(s) of reason delivery_limit." in response.content.decode()
    assert "Replayed 0 dead letter(s)" in again.content.decode()  # nothing published twice
    assert sorted(m.headers["id"] for m in published) == sorted(d.task_id for d in poison)
    statuses = dict(DeadLetter.objects.values_list("pk", "status"))
    assert [statuses[d.pk] for d in poison] == ["replayed", "replayed"]
    assert statuses[other.pk] == "dead"


def test_replay_refuses_an_unknown_reason_strangers_and_staff_without_permission(
    operator, broker_url, transactional_db
):
    letter = delta_dead_letter(reason=DeadLetter.Reason.DELIVERY_LIMIT, key="article_views:x")
    plain_staff = Client()
    plain_staff.force_login(
        get_user_model().objects.create_user("plain", "p@example.com", "pw", is_staff=True)
    )
    with publishing_to(broker_url):
        page = operator.post("/ops/dead-letters/replay", {"reason": "nope"}, follow=True)
        stranger = Client().post("/ops/dead-letters/replay", {"reason": "delivery_limit"})
        forbidden = plain_staff.post("/ops/dead-letters/replay", {"reason": "delivery_limit"})
        shown = plain_staff.get("/ops/").content.decode()
    assert "unknown reason &#x27;nope&#x27;" in page.content.decode()
    assert stranger.status_code == 302  # to the login page
    assert forbidden.status_code == 403
    assert 'id="replay-delivery_limit"' not in shown and "needs the permission" in shown
    letter.refresh_from_db()
    assert letter.status == DeadLetter.Status.DEAD


def test_beat_samples_pending_deltas_for_the_chart_while_nobody_reads_the_page(
    broker_url, cache_redis
):
    from project.ops import pending_series
    from project.tasks import sample_pending

    with publishing_to(broker_url):
        assert pending_series() == []
        services.counter_incr(key="article_views:sampled", amount=2)
        sample_pending()  # the function beat's entry runs every 15 s
        series = pending_series()
    assert len(series) == 1
    if broker_url.startswith("redis"):  # RabbitMQ's management figures lag by seconds
        assert series[0][1] == 1  # one delta message waiting


def test_samples_that_waited_in_the_queue_are_taken_once(broker_url, cache_redis):
    """After a worker outage beat's samples arrive together: one is taken, the rest skipped."""
    from project.ops import pending_series
    from project.tasks import sample_pending

    with publishing_to(broker_url):
        for _ in range(5):
            sample_pending()
        assert len(pending_series()) == 1
