"""Sessions in PostgreSQL with a short-lived cached copy (project/sessions.py), on real servers:
a cache that does not answer costs a database read, never an error, and a copy that missed a
logout during an outage is served for at most its TTL."""

import pytest
from django.contrib.sessions.models import Session

from project import sessions
from project.sessions import SessionStore

from ..helpers import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def dead_cache(settings):
    """Point the cache at a port where nothing listens; give the real one back after."""
    alive = settings.CACHES

    def kill():
        dead = {**alive["default"], "LOCATION": "redis://127.0.0.1:1/0"}
        settings.CACHES = {**alive, "default": dead}

    def revive():
        settings.CACHES = alive

    kill.revive = revive
    return kill


def test_the_copy_lives_at_most_its_ttl(cache_redis):
    store = SessionStore()
    store["who"] = "staff"
    store.save()
    ttl = cache_redis.ttl(f":1:{store.cache_key}")
    assert 0 < ttl <= sessions.COPY_TTL_S
    assert Session.objects.filter(session_key=store.session_key).exists()


def test_with_the_cache_unreachable_sessions_are_written_read_and_deleted_in_postgresql(
    cache_redis, dead_cache
):
    dead_cache()
    store = SessionStore()
    store["who"] = "staff"
    store.save()
    assert SessionStore(session_key=store.session_key).load() == {"who": "staff"}
    store.delete()
    assert not Session.objects.exists()
    assert SessionStore(session_key=store.session_key).load() == {}


def test_a_logout_made_during_a_cache_outage_is_not_undone_after_the_copy_expires(
    cache_redis, dead_cache
):
    """With the production TTL: the stale copy is served for at most COPY_TTL_S."""
    store = SessionStore()
    store["_auth_user_id"] = "1"
    store.save()  # the copy: COPY_TTL_S
    key = store.session_key
    dead_cache()
    SessionStore(session_key=key).delete()  # the logout reaches PostgreSQL only
    dead_cache.revive()
    assert not Session.objects.filter(session_key=key).exists()
    wait_for(
        lambda: SessionStore(session_key=key).load() == {},
        timeout=sessions.COPY_TTL_S + 5,
        interval=0.5,
        what="the stale copy to expire",
    )
