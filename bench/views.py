"""Baselines for `make bench` (mounted only when BENCH_VIEWS=true): the naive per-request UPDATE,
the lossy Redis buffer (bench/lossy.py) and the same view without counting. Never enabled in a
normal run."""

from django.db import connection
from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt

from . import lossy


@csrf_exempt
def naive_incr(request, key: str):
    # One PostgreSQL transaction per request: what write-behind replaces.
    with connection.cursor() as cursor:
        cursor.execute("UPDATE counters_counter SET value = value + 1 WHERE key = %s", [key])
    return JsonResponse({"key": key})


@csrf_exempt
def lossy_incr(request, key: str):
    # One Redis round trip, no confirmation, no ledger: what users would otherwise pick.
    lossy.incr(key)
    return JsonResponse({"key": key})


@csrf_exempt
def no_count(request, key: str):
    return JsonResponse({"key": key})
