"""The article pages and the admin, through Django's test client on real servers."""

import re

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from counters import services
from counters.models import Article

from ..helpers import publishing_to

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def article(broker_url, cache_redis):
    with publishing_to(broker_url):
        yield Article.objects.create(slug="hello", title="Hello", body="Counting things.")


def number(html: str, element_id: str) -> int:
    return int(re.search(rf'id="{element_id}">(\d+)<', html).group(1))


def test_a_visit_counts_a_view_and_a_like_registers_once(article):
    client = Client(enforce_csrf_checks=False)
    first = client.get("/articles/hello/").content.decode()
    second = client.get("/articles/hello/").content.decode()
    assert (number(first, "views"), number(second, "views")) == (1, 2)
    assert number(second, "active") == 1  # one visitor in the last minutes
    client.post("/articles/hello/like", {"action": "like"})
    client.post("/articles/hello/like", {"action": "like"})  # no double like
    page = client.get("/articles/hello/").content.decode()
    assert number(page, "likes") == 1 and "Unlike" in page
    client.post("/articles/hello/like", {"action": "unlike"})
    assert services.counter_get(key=article.likes_key).value == 0
    listing = client.get("/articles/").content.decode()
    assert 'class="views">3<' in listing and 'class="likes">0<' in listing


def test_like_form_keeps_csrf_protection(article):
    client = Client(enforce_csrf_checks=True)
    assert client.post("/articles/hello/like", {"action": "like"}).status_code == 403
    assert services.counter_get(key=article.likes_key).value == 0


def test_admin_lists_counters_ledger_and_dead_letters(article):
    services.delta_group_apply(
        deltas=[("2c8f1d7e-0000-4000-8000-000000000001", article.views_key, 3)]
    )
    admin = get_user_model().objects.create_superuser("root", "root@example.com", "pw")
    client = Client()
    client.force_login(admin)
    page = client.get("/admin/counters/counter/").content.decode()
    assert article.views_key in page
    assert client.get("/admin/counters/applieddelta/").status_code == 200
    assert client.get("/admin/tasks/deadletter/").status_code == 200


def test_article_page_shows_what_is_stored_and_what_is_on_the_way(article):
    """No worker runs here: every view is still on the way, none stored."""
    client = Client()
    client.get("/articles/hello/")
    page = client.get("/articles/hello/").content.decode()
    assert number(page, "views") == 2
    assert (number(page, "views-stored"), number(page, "views-pending")) == (0, 2)
    assert "article_views:hello" in page  # the keys its script polls


def test_like_answers_json_for_the_page_script_and_keeps_one_like_per_session(article):
    client = Client(enforce_csrf_checks=True)
    page = client.get("/articles/hello/").content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    like = {"HTTP_ACCEPT": "application/json", "HTTP_X_CSRFTOKEN": token}
    first = client.post("/articles/hello/like", {"action": "like"}, **like)
    again = client.post("/articles/hello/like", {"action": "like"}, **like)
    assert first.status_code == 200 and first.json() == {"liked": True, "likes": 1}
    assert again.json() == {"liked": True, "likes": 1}  # no double like
    assert client.post("/articles/hello/like", {"action": "unlike"}, **like).json() == {
        "liked": False,
        "likes": 0,
    }
    assert services.counter_get(key=article.likes_key).value == 0
    # Without the token the script's request is refused like the form's, and counts nothing.
    refused = Client(enforce_csrf_checks=True).post(
        "/articles/hello/like", {"action": "like"}, HTTP_ACCEPT="application/json"
    )
    assert refused.status_code == 403
    assert services.counter_get(key=article.likes_key).value == 0


def test_reading_articles_writes_no_session_and_keeps_one_visitor(article):
    """Readers are told apart by a cookie, not a session: no PostgreSQL write per reader."""
    from django.contrib.sessions.models import Session

    client = Client()
    first = client.get("/articles/hello/")
    visitor = first.cookies["visitor"]
    assert visitor["httponly"] and visitor["samesite"] == "Lax"
    client.get("/articles/hello/")
    assert "visitor" not in client.get("/articles/hello/").cookies  # kept, not replaced
    assert not Session.objects.exists()
    assert number(client.get("/articles/hello/").content.decode(), "active") == 1


def test_a_browsers_like_requests_run_one_at_a_time(article, cache_redis):
    """While one like request of a browser is in progress (its lock held), another one is
    refused and counts nothing: a double click cannot like twice. The lock is the visitor's,
    which the reader has before a first like creates the session."""
    from django.contrib.sessions.models import Session

    client = Client()
    client.get("/articles/hello/")
    visitor = client.cookies["visitor"].value
    held = cache_redis.lock(f"lock:like:{visitor}", timeout=30)
    assert held.acquire(blocking=False)  # a like request of this browser in progress
    json_like = {"HTTP_ACCEPT": "application/json"}
    refused = client.post("/articles/hello/like", {"action": "like"}, **json_like)
    assert refused.status_code == 409 and "in progress" in refused.json()["error"]
    assert client.post("/articles/hello/like", {"action": "like"}).status_code == 302
    assert services.counter_get(key=article.likes_key).value == 0
    assert not Session.objects.exists()  # nothing recorded either
    held.release()
    assert client.post("/articles/hello/like", {"action": "like"}, **json_like).json() == {
        "liked": True,
        "likes": 1,
    }
    assert not cache_redis.exists(f"lock:like:{visitor}")  # released after the request
