"""Sessions kept in PostgreSQL, with a copy in the cache Redis (Django's cached_db), surviving a
cache that does not answer.

Staff must be able to sign in to the operations page exactly when the cache Redis is down, so
sessions cannot live in the cache alone. Django's cached_db already logs and ignores a failed
cache write on save, but not on load (it refills the cache from the database and lets the error
through) nor in ``exists``: both are guarded here, so a cache outage costs a database read."""

import logging

from django.contrib.sessions.backends.cached_db import SessionStore as CachedDBStore
from django.contrib.sessions.backends.db import SessionStore as DBStore

logger = logging.getLogger(__name__)


class SessionStore(CachedDBStore):
    def load(self):
        try:
            return super().load()
        except Exception as exc:  # the cache's error, whatever its client raises
            logger.warning("session cache unavailable, reading PostgreSQL: %s", exc)
            return DBStore.load(self)

    def exists(self, session_key):
        try:
            return super().exists(session_key)
        except Exception:
            return DBStore.exists(self, session_key)

    def delete(self, session_key=None):
        try:
            super().delete(session_key)
        except Exception as exc:
            logger.warning("session cache unavailable on delete: %s", exc)
            DBStore.delete(self, session_key)
