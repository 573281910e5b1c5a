"""Site-wide views: the home page and the health check."""

from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.http import JsonResponse
from django.shortcuts import render

from project.celery import app as celery_app


def home(request):
    return render(request, "home.html", {"flower_url": settings.FLOWER_URL})


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
