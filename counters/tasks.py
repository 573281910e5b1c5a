"""The counters' tasks: the batched apply of deltas, and ledger pruning."""

import logging

from celery import shared_task
from celery_batches import SimpleRequest
from django.conf import settings

from tasks.batches import ALONE_KWARG, OutcomeBatches, int_or_zero
from tasks.envelopes import ENVELOPE_KWARG

from .services import (
    APPLY_TASK,
    IncomingDelta,
    counter_reconcile,
    delta_batch_apply,
    envelope_unpack,
    float_or_none,
    ledger_prune,
)

logger = logging.getLogger(__name__)


@shared_task(
    base=OutcomeBatches,
    name=APPLY_TASK,
    flush_every=settings.COUNTER_BATCH_SIZE,
    flush_interval=settings.COUNTER_BATCH_INTERVAL_MS / 1000,
    max_items=settings.COUNTER_BATCH_SIZE,
)
def apply_deltas(requests: list[SimpleRequest]) -> dict:
    deltas: list[IncomingDelta] = []
    enveloped: dict[str, list[str]] = {}  # envelope (message) id -> its deltas' ids
    for request in requests:
        # RabbitMQ quorum queues count earlier deliveries; the Redis broker's are counted in
        # delta_batch_apply.
        deliveries = int_or_zero(request.request_dict.get("x-delivery-count")) + 1
        retries = int_or_zero(request.request_dict.get("retries"))
        kwargs = request.kwargs if isinstance(request.kwargs, dict) else {}
        if ENVELOPE_KWARG in kwargs:
            items = envelope_unpack(
                envelope_id=request.id,
                items=kwargs[ENVELOPE_KWARG],
                deliveries=deliveries,
                retries=retries,
            )
            enveloped[request.id] = [delta.message_id for delta in items]
            deltas += items
            continue
        deltas.append(
            IncomingDelta(
                message_id=request.id,
                # Whatever a malformed message carries, it becomes a malformed delta
                # (dead-lettered by the batch), never an error that gives the batch back.
                args=list(request.args)
                if isinstance(request.args, list | tuple)
                else [request.args],
                retries=retries,
                deliveries=deliveries,
                published_at=float_or_none(kwargs.get("published_at")),
                alone=bool(kwargs.get(ALONE_KWARG)),
            )
        )
    outcome = delta_batch_apply(deltas=deltas)
    singles = {r.id for r in requests} - set(enveloped)
    requeue = set(outcome.requeue)
    return {
        # By message: a delta id that is also a single's id (a duplicate copy) only concerns it.
        "reject": [i for i in outcome.reject if i in singles],
        # An envelope is given back whole if any of its deltas must be (the ledger absorbs the
        # copies of those already applied); otherwise it is acknowledged.
        "requeue": [i for i in outcome.requeue if i in singles]
        + [e for e, ids in enveloped.items() if requeue & set(ids)],
    }


@shared_task(name="counters.reconcile")
def reconcile_counters() -> int:
    return len(counter_reconcile())


@shared_task(name="counters.prune_ledger")
def prune_ledger() -> int:
    return ledger_prune(older_than_s=settings.COUNTER_LEDGER_RETENTION_S)
