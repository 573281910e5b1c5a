"""Sessions kept in PostgreSQL, with a short-lived copy in the cache Redis, surviving a cache that
does not answer.

Staff must be able to sign in to the operations page exactly when the cache Redis is down, so
sessions cannot live in the cache alone. Django's cached_db comes close, but it lets a failed
cache read's refill raise into the request, and it keeps its copy as long as the session lives:
a write or a logout made while the cache was unreachable would be undone, for up to two weeks,
by the older copy once the cache answered again. Here a cache failure costs a database read, and
the copy lives ``COPY_TTL_S`` at most, which bounds how long such a stale copy can be served.

Anonymous readers get no session (counters/views.py gives them a visitor cookie instead), so a
session row is written only for someone who signs in or likes an article."""

import logging

from django.contrib.sessions.backends.cached_db import SessionStore as CachedDBStore
from django.contrib.sessions.backends.db import SessionStore as DBStore

logger = logging.getLogger(__name__)

# Seconds a session's cached copy is served before PostgreSQL is read again; also the longest a
# copy that missed a write during a cache outage can be stale after it.
COPY_TTL_S = 30


class SessionStore(CachedDBStore):
    def _copy_ttl(self, expiry=None) -> int:
        return max(0, min(COPY_TTL_S, self.get_expiry_age(expiry=expiry)))

    def _cache_set(self, data, ttl: int) -> None:
        try:
            self._cache.set(self.cache_key, data, ttl)
        except Exception as exc:  # the cache's error, whatever its client raises
            logger.warning("session cache unavailable on write: %s", exc)

    def load(self):
        try:
            data = self._cache.get(self.cache_key)
        except Exception as exc:
            logger.warning("session cache unavailable, reading PostgreSQL: %s", exc)
            data = None
        if data is not None:
            return data
        row = self._get_session_from_db()
        if row is None:
            return {}
        data = self.decode(row.session_data)
        self._cache_set(data, self._copy_ttl(expiry=row.expire_date))
        return data

    def exists(self, session_key):
        return DBStore.exists(self, session_key)  # the truth: new keys must be unique there

    def save(self, must_create=False):
        DBStore.save(self, must_create)
        self._cache_set(self._session, self._copy_ttl())

    def delete(self, session_key=None):
        DBStore.delete(self, session_key)
        session_key = session_key or self.session_key
        if session_key is None:
            return
        try:
            self._cache.delete(self.cache_key_prefix + session_key)
        except Exception as exc:
            logger.warning(
                "session cache unavailable on delete (copy expires in %d s): %s", COPY_TTL_S, exc
            )
