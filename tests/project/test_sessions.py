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


class _OpensAFile:
    """What an attacker with write access to the cache Redis would plant: unpickling it runs
    code (here: it creates a file)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_pickle_planted_in_the_cache_is_never_unpickled(cache_redis, tmp_path, client):
    """Issue 26 (8): the cache used django-redis's pickle serializer, so a value written into the
    cache Redis was code run by the web at the next read of that key. Copies are JSON now: the
    planted value is refused (the session is read from PostgreSQL) and nothing runs."""
    import json
    import pickle

    from django.contrib.auth import get_user_model

    user = get_user_model().objects.create_user("staffer", password="pw", is_staff=True)
    client.force_login(user)
    session_key = client.cookies["sessionid"].value
    cache_key = f":1:{SessionStore(session_key=session_key).cache_key}"
    # The legitimate copy is JSON.
    assert json.loads(cache_redis.get(cache_key))["_auth_user_id"] == str(user.pk)

    marker = tmp_path / "code-ran"
    cache_redis.set(cache_key, pickle.dumps(_OpensAFile(marker)), ex=30)
    response = client.get("/ops/")  # staff only: the session still signs the user in
    assert not marker.exists()
    assert response.status_code == 200
    # The planted value was replaced by the copy read from PostgreSQL.
    assert json.loads(cache_redis.get(cache_key))["_auth_user_id"] == str(user.pk)
