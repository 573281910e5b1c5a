"""`make bench` only: the counters worker with the idempotency ledger taken out, the baseline for
what the ledger costs a real worker (``celery -A bench.worker_without_ledger worker``).

Everything else is the real worker: the same batch task, transaction, counter upsert and cache
update; only the ledger insert is skipped, so a redelivered delta would be counted twice. Never
run it against data that matters.
"""

import time
from collections import defaultdict

from celery import signals

from project.celery import app


def _apply_without_ledger(*, deltas: list[tuple[str, str, int]]) -> int:
    from django.db import connection, transaction

    from counters import cache, services

    by_key: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for delta_id, key, amount in deltas:
        by_key[key].append((delta_id, amount))
    with transaction.atomic(), connection.cursor() as cursor:
        rows = services.counters_add(cursor=cursor, deltas=deltas)
    cache.apply(rows=rows, deltas=by_key, now=time.time())
    return len(deltas)


@signals.worker_init.connect
def _take_out_the_ledger(**kwargs) -> None:
    # In the main process, before the pool forks; Django is set up first (models are needed).
    import django

    django.setup()
    from counters.services import apply

    # Where the batch path looks it up (patching the package's re-export would change nothing).
    apply.delta_group_apply = _apply_without_ledger


__all__ = ["app"]
