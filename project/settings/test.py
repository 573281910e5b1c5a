"""Test settings: the same real servers, faster password hashing, small retry delays."""

from urllib.parse import urlsplit

from .base import *  # noqa: F403
from .base import DEVELOPMENT_SECRET_KEY, env

# The tests are development: they may sign with the public key (base.py keeps it to development).
SECRET_KEY = env("DJANGO_SECRET_KEY", default=DEVELOPMENT_SECRET_KEY)

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
# Tasks that only the test suite sends to real worker subprocesses.
CELERY_IMPORTS = ["tests.worker_tasks"]
TASK_RETRY_BACKOFF_BASE = env.float("TASK_RETRY_BACKOFF_BASE", default=0.2)
TASK_RETRY_BACKOFF_MAX = env.float("TASK_RETRY_BACKOFF_MAX", default=2.0)
TASK_MAX_RETRIES = env.int("TASK_MAX_RETRIES", default=3)
# "point=key,key;point=key": e.g. "raise=article_views:poison" (see counters/faults.py).
COUNTER_FAULTS = {
    point: keys.split(",")
    for point, _, keys in (
        item.partition("=") for item in env("COUNTER_FAULTS", default="").split(";") if item
    )
}
COUNTER_BATCH_INTERVAL_MS = env.int("COUNTER_BATCH_INTERVAL_MS", default=50)
# The fault suite's relay SIGKILLs itself after this many publishes (tasks/relay.py); 0: never.
OUTBOX_FAULT_KILL_AFTER = env.int("OUTBOX_FAULT_KILL_AFTER", default=0)


def per_test_process(url: str) -> str:
    """Under pytest-xdist each test process (gw0, gw1, ...) uses its own Redis database on the
    same servers, so one process's FLUSHDB or queue purge never touches another's. The test
    process and the workers it starts derive the same database from the inherited variable."""
    worker = env.str("PYTEST_XDIST_WORKER", default="")
    if not worker.startswith("gw") or not url.startswith("redis"):
        return url
    return urlsplit(url)._replace(path=f"/{int(worker[2:]) + 1}").geturl()


REDIS_URL = per_test_process(REDIS_URL)
CACHES["default"]["LOCATION"] = REDIS_URL
CELERY_BROKER_URL = per_test_process(CELERY_BROKER_URL)
# Every page view counts in the tests (a test of the window turns it on).
COUNTER_VIEW_WINDOW_S = env.int("COUNTER_VIEW_WINDOW_S", default=0)
