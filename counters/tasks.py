"""The counters' tasks: the batched apply of deltas, and ledger pruning."""

import logging

from celery import shared_task
from celery_batches import SimpleRequest
from django.conf import settings

from tasks.batches import OutcomeBatches, int_or_zero

from .services import (
    APPLY_TASK,
    IncomingDelta,
    counter_reconcile,
    delta_batch_apply,
    ledger_prune,
)

logger = logging.getLogger(__name__)


def _float_or_none(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


@shared_task(
    base=OutcomeBatches,
    name=APPLY_TASK,
    flush_every=settings.COUNTER_BATCH_SIZE,
    flush_interval=settings.COUNTER_BATCH_INTERVAL_MS / 1000,
)
def apply_deltas(requests: list[SimpleRequest]) -> dict:
    deltas = [
        IncomingDelta(
            message_id=request.id,
            # Whatever a malformed message carries, it becomes a malformed delta (dead-lettered
            # by the batch), never an error that gives the whole batch back.
            args=list(request.args) if isinstance(request.args, list | tuple) else [request.args],
            retries=int_or_zero(request.request_dict.get("retries")),
            # RabbitMQ quorum queues count earlier deliveries; the Redis broker's are counted in
            # delta_batch_apply.
            deliveries=int_or_zero(request.request_dict.get("x-delivery-count")) + 1,
            published_at=_float_or_none(
                request.kwargs.get("published_at") if isinstance(request.kwargs, dict) else None
            ),
        )
        for request in requests
    ]
    outcome = delta_batch_apply(deltas=deltas)
    return {"reject": outcome.reject, "requeue": outcome.requeue}


@shared_task(name="counters.reconcile")
def reconcile_counters() -> int:
    return len(counter_reconcile())


@shared_task(name="counters.prune_ledger")
def prune_ledger() -> int:
    return ledger_prune(older_than_s=settings.COUNTER_LEDGER_RETENTION_S)
