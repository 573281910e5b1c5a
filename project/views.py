"""Site-wide views: the home page, the health check and metrics (the operations page: ops_views)."""

import hmac
import os
import threading
import time

from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.http import HttpResponse, JsonResponse
from django.shortcuts import render
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
    multiprocess,
)

from project.celery import app as celery_app
from project.metrics import PendingCollector

# Seconds a round of health probes is reused by a process (ProbeResults).
HEALTH_CACHE_S = 5.0


def home(request):
    return render(request, "home.html")  # flower_url: project.context_processors.site


def _check(probe) -> str | None:
    try:
        probe()
    except Exception as exc:  # a health check reports every failure, whatever its type
        return f"{type(exc).__name__}: {exc}"
    return None


def _probe_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _probe_cache() -> None:
    cache.client.get_client(write=True).ping()


def _probe_broker() -> None:
    # A connection of its own, so a broker that went away is noticed (a pooled one that is
    # already open would pass without a word to the broker); the cache below keeps it to one
    # per process and window.
    with celery_app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)


PROBES = (("database", _probe_database), ("cache", _probe_cache), ("broker", _probe_broker))


class ProbeResults:
    """The probes' last answer, reused for ``window_s`` seconds: /healthz is public, and a flood
    of requests must cost one round of probes per process and window, not one per request. One
    thread probes at a time; the others wait for its answer."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._lock = threading.Lock()
        self._taken_at = -float("inf")
        self._failures: dict[str, str] = {}

    def failures(self) -> dict[str, str]:
        # While one thread probes (seconds, when a server hangs), the others answer with the last
        # round instead of queueing: a few requests must not hold every gunicorn thread.
        if not self._lock.acquire(blocking=self._taken_at == -float("inf")):
            return dict(self._failures)
        try:
            if time.monotonic() - self._taken_at >= self.window_s:
                self._failures = {name: error for name, probe in PROBES if (error := _check(probe))}
                self._taken_at = time.monotonic()
            return dict(self._failures)
        finally:
            self._lock.release()

    def forget(self) -> None:
        """The next request probes again (the tests, between server states)."""
        with self._lock:
            self._taken_at = -float("inf")


HEALTH = ProbeResults(window_s=HEALTH_CACHE_S)


def _metrics_token_given(request) -> bool:
    """``Authorization: Bearer $METRICS_TOKEN``, compared in constant time (as bytes: a non-ASCII
    header is a wrong token, not an error)."""
    token = settings.METRICS_TOKEN
    if not token:
        return False
    given = request.headers.get("Authorization", "")
    return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())


def _is_staff(request) -> bool:
    return request.user.is_authenticated and request.user.is_staff


def healthz(request):
    """200 ``{"status": "ok"}`` when PostgreSQL, the cache Redis and the broker all answer, else
    503 naming which failed. The errors' texts (host names, user names) only for staff sessions
    and the metrics token: anyone may ask whether the site is up, not how it is built."""
    failures = HEALTH.failures()
    body = {"status": "failing" if failures else "ok"}
    if failures:
        body["failed"] = sorted(failures)
        if _is_staff(request) or _metrics_token_given(request):
            body["errors"] = failures
    response = JsonResponse(body, status=503 if failures else 200)
    response["Cache-Control"] = "no-store"
    return response


def metrics(request):
    """Prometheus metrics: staff sessions, or ``Authorization: Bearer $METRICS_TOKEN``."""
    if not (_metrics_token_given(request) or _is_staff(request)):
        return JsonResponse({"error": "authentication required"}, status=401)
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(registry)
        output = generate_latest(registry)
    else:
        output = generate_latest(REGISTRY)
    pending = CollectorRegistry()
    pending.register(PendingCollector())
    return HttpResponse(output + generate_latest(pending), content_type=CONTENT_TYPE_LATEST)
