"""celery-batches, with acknowledgements that follow the outcome of each message: the delivery
machinery of a task that handles many messages in one run (the counters' ``apply_deltas``)."""

import contextlib
import logging
import time
import uuid

from celery_batches import Batches, SimpleRequest
from celery_batches.trace import apply_batches_task

from .envelopes import ENVELOPE_KWARG

# A message whose sender asks that it run in a pool job of its own, like a redelivered one: an
# item of an envelope that came back twice, published again alone (counters/services/apply.py).
ALONE_KWARG = "alone"

logger = logging.getLogger(__name__)


class OutcomeBatches(Batches):
    """celery-batches, with acknowledgements that follow the outcome of each message.

    Stock celery-batches acknowledges every message of a batch once the batch function returns,
    and never answers for a batch whose worker process died. Here the batch function says which
    messages to dead-letter (rejected: RabbitMQ's dead-letter exchange takes them; on Redis the
    copy was published first) and which to give back; the rest are acknowledged, after the
    commit. A batch whose process died is given back whole (requeued), like
    ``task_reject_on_worker_lost`` does for single tasks, and the delivery count grows.
    """

    acks_late = True

    def Strategy(self, task, app, consumer):
        # Called again when the consumer restarts after a lost broker connection. Stock
        # celery-batches keeps its flush timer reference from the old consumer, whose timer
        # entries are gone: nothing would be flushed again until a full batch arrived (the
        # fault suite's broker restart found deltas stuck in the buffer). Start a new timer.
        # Requests still buffered are flushed too: on RabbitMQ their acknowledgement fails (the
        # broker has requeued them already and the ledger absorbs the second copy); on Redis
        # they are acknowledged through the new connection.
        if self._tref is not None:
            logger.warning("consumer restarted: restarting the batch flush timer")
            with contextlib.suppress(Exception):
                self._tref.cancel()
            self._tref = None
        self._events = consumer.event_dispatcher
        return super().Strategy(task, app, consumer)

    def _event(self, kind: str, **fields) -> None:
        """A task event for Flower: a batch runs outside Celery's per-message request machinery,
        which is what normally sends them, so without this Flower never sees the counters."""
        events = getattr(self, "_events", None)
        if events is None or not events.enabled or not self.send_events:
            return
        try:
            events.send(kind, **fields)
        except Exception as exc:  # watching must never fail a batch
            logger.warning("could not send %s event: %r", kind, exc)

    def flush(self, requests):
        fresh, second, alone = delivery_tiers(requests)
        groups = self._by_items(fresh) + self._by_items(second) + [[r] for r in alone]
        return [self._flush_group(group) for group in groups]

    def _by_items(self, requests) -> list[list]:
        """Messages in groups of at most ``max_items`` items (an envelope counts its
        items), each group one pool job: ``flush_every`` counts messages, and a batch of full
        envelopes would otherwise be one transaction of many thousands of deltas."""
        limit = getattr(self, "max_items", None)
        groups: list[list] = []
        size = 0
        for request in requests:
            items = _items([request])
            if not groups or (limit and size + items > limit):
                groups.append([])
                size = 0
            groups[-1].append(request)
            size += items
        return groups

    def _flush_group(self, requests):
        serializable = ([SimpleRequest.from_request(r) for r in requests],)
        # One task in Flower per batch, its own id; the messages' ids are the deltas' ids.
        batch_id, started = str(uuid.uuid4()), time.monotonic()
        self._event(
            "task-received",
            uuid=batch_id,
            name=self.name,
            args="()",
            kwargs=repr({"messages": len(requests), "items": _items(requests)}),
            retries=0,
            eta=None,
            expires=None,
        )

        def on_accept(pid, time_accepted) -> None:
            self._event("task-started", uuid=batch_id)

        def on_return(outcome) -> None:
            if outcome:
                reject, requeue = set(outcome.get("reject", ())), set(outcome.get("requeue", ()))
                ids = [r.id for r in requests]
                result = {
                    "done": sum(1 for i in ids if i not in reject and i not in requeue),
                    "dead_lettered": sum(1 for i in ids if i in reject),
                    "given_back": sum(1 for i in ids if i in requeue and i not in reject),
                }
                runtime = time.monotonic() - started
                self._event("task-succeeded", uuid=batch_id, result=repr(result), runtime=runtime)
            else:  # the batch function raised: give every message back
                reject, requeue = set(), {r.id for r in requests}
                self._event(
                    "task-failed", uuid=batch_id, exception="batch failed; given back", traceback=""
                )
            for request in requests:
                if request.id in reject:
                    request.reject(requeue=False)
                elif request.id in requeue:
                    request.reject(requeue=True)
                else:
                    request.acknowledge()

        def on_error(exc_info) -> None:
            self._event(
                "task-failed",
                uuid=batch_id,
                exception=repr(getattr(exc_info, "exception", exc_info)),
                traceback=str(getattr(exc_info, "traceback", "")),
            )
            for request in requests:
                request.reject(requeue=True)

        return self._pool.apply_async(
            apply_batches_task,
            (self, serializable, 0, None),
            callback=on_return,
            accept_callback=on_accept,
            error_callback=on_error,
        )


def _items(requests) -> int:
    """What the batch carries: an envelope's items each, any other message as one."""
    total = 0
    for request in requests:
        kwargs = request.kwargs if isinstance(request.kwargs, dict) else {}
        items = kwargs.get(ENVELOPE_KWARG)
        total += len(items) if isinstance(items, list) else 1
    return total


def int_or_zero(value) -> int:
    # A malformed header must not make the whole batch raise (and be given back, again and again).
    try:
        return max(int(value or 0), 0)
    except (TypeError, ValueError):
        return 0


def delivery_tiers(requests) -> tuple[list, list, list]:
    """(fresh, second, alone): which messages may share a pool job.

    A redelivered message was in a batch whose process died, or held by a consumer whose
    connection or broker node went away. An envelope delivered a second time (RabbitMQ's count
    says so) shares jobs with other such envelopes only: after a node restart those are
    thousands, and a job each applied a few dozen deltas a second (the soak, docs/soak.md). An
    envelope's deliveries never dead-letter its deltas, so a poison among them costs the others
    nothing but a third delivery, on which they go alone. Every other redelivered message runs
    in a job of its own: a single's deliveries count towards its limit, and an innocent one must
    not spend them beside a poison."""
    fresh, second, alone = [], [], []
    for request in requests:
        if not redelivered(request):
            fresh.append(request)
        elif _envelope_seen_once(request):
            second.append(request)
        else:
            alone.append(request)
    return fresh, second, alone


def _envelope_seen_once(request) -> bool:
    """An envelope delivered exactly once before, as RabbitMQ's quorum queues count
    (``x-delivery-count`` 1). The Redis broker's count is only known inside the pool job
    (tasks/services.py), so there a redelivered message always gets a job of its own."""
    kwargs = request.kwargs if isinstance(request.kwargs, dict) else {}
    count = int_or_zero(request.request_dict.get("x-delivery-count"))
    return count == 1 and ENVELOPE_KWARG in kwargs and not kwargs.get(ALONE_KWARG)


def redelivered(request) -> bool:
    """Seen before (a batch whose process died), or marked to run alone (``ALONE_KWARG``)."""
    delivery_info = request.delivery_info or {}
    count = int_or_zero(request.request_dict.get("x-delivery-count"))
    kwargs = request.kwargs if isinstance(request.kwargs, dict) else {}
    return bool(delivery_info.get("redelivered") or count or kwargs.get(ALONE_KWARG))
