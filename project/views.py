"""Site-wide views: the home page, the health check and metrics (the operations page: ops_views)."""

import os

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
    with celery_app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)


def healthz(request):
    """200 when PostgreSQL, the cache Redis and the broker all answer; 503 naming what failed."""
    failures = {
        name: error
        for name, probe in (
            ("database", _probe_database),
            ("cache", _probe_cache),
            ("broker", _probe_broker),
        )
        if (error := _check(probe))
    }
    if failures:
        return JsonResponse({"status": "failing", "failed": failures}, status=503)
    return JsonResponse({"status": "ok"})


def metrics(request):
    """Prometheus metrics: staff sessions, or ``Authorization: Bearer $METRICS_TOKEN``."""
    token = settings.METRICS_TOKEN
    bearer = request.headers.get("Authorization", "") == f"Bearer {token}" if token else False
    if not (bearer or (request.user.is_authenticated and request.user.is_staff)):
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
