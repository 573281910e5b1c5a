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
