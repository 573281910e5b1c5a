"""Baselines for `make bench` (mounted only when BENCH_VIEWS=true): the naive per-request UPDATE
and the same view without counting. Never enabled in a normal run."""

from django.db import connection
from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt


@csrf_exempt
def naive_incr(request, key: str):
    # One PostgreSQL transaction per request: what write-behind replaces.
    with connection.cursor() as cursor:
        cursor.execute("UPDATE counters_counter SET value = value + 1 WHERE key = %s", [key])
    return JsonResponse({"key": key})


@csrf_exempt
def no_count(request, key: str):
    return JsonResponse({"key": key})
