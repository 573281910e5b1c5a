"""Idempotency keys: every order, cancel and deposit carries one. The first answer (status and
body) is stored in the same transaction as the work, and a retry with the same key and the same
input gets that answer again and changes nothing; the same key with other input is refused
(``IdempotencyConflict``). A concurrent retry waits on the key's unique index until the first call
commits, then replays its answer.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from .models import IdempotencyRecord


class OrderInputError(ValueError):
    """Invalid input (HTTP 400): nothing was written."""


class IdempotencyConflict(Exception):
    """The key was used before with other input (HTTP 422)."""


@dataclass(frozen=True)
class Outcome:
    status: int  # 201 created, 200 done, 409 refused (balance, stock, state)
    body: dict
    replayed: bool = False


def _fingerprint(operation: str, payload: dict) -> str:
    return hashlib.sha256(json.dumps([operation, payload], sort_keys=True).encode()).hexdigest()


def idempotent_run(
    *, scope: str, key: str, operation: str, payload: dict, run: Callable[[], tuple[int, dict]]
) -> Outcome:
    if not isinstance(key, str) or not 1 <= len(key) <= 200:
        raise OrderInputError("Idempotency-Key must be 1 to 200 characters")
    fingerprint = _fingerprint(operation, payload)
    with transaction.atomic():
        with connection.cursor() as cursor:
            # Claim the key. A concurrent call with the same key blocks here until the first
            # one commits (then conflicts and replays below) or rolls back (then claims it).
            cursor.execute(
                "INSERT INTO orders_idempotencyrecord "
                "(scope, key, fingerprint, status_code, response, created_at) "
                "VALUES (%s, %s, %s, 0, 'null', now()) "
                "ON CONFLICT (scope, key) DO NOTHING RETURNING id",
                [scope, key, fingerprint],
            )
            claimed = cursor.fetchone()
        if claimed is None:
            record = IdempotencyRecord.objects.get(scope=scope, key=key)
            if record.fingerprint != fingerprint:
                raise IdempotencyConflict(
                    "this Idempotency-Key was already used with a different request"
                )
            return Outcome(record.status_code, record.response, replayed=True)
        status, body = run()
        IdempotencyRecord.objects.filter(pk=claimed[0]).update(status_code=status, response=body)
    return Outcome(status, body)


def idempotency_prune(*, older_than_s: int | None = None) -> int:
    age = older_than_s if older_than_s is not None else settings.IDEMPOTENCY_KEY_TTL_S
    cutoff = timezone.now() - timedelta(seconds=age)
    deleted, _ = IdempotencyRecord.objects.filter(created_at__lt=cutoff).delete()
    return deleted
