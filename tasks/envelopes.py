"""Envelopes: many small items (counter deltas) in ONE task message, acknowledged together.

The price of durability was one Celery message per item, paid three times: building it in the
web process, the broker's per-message work (a quorum-queue log entry, an fsync-backed confirm),
and the worker's per-message consume and acknowledgement (docs/benchmarks.md). Kafka's producer
answers the same problem with batching (``linger.ms``, ``batch.size``); so does this, without the
linger: one thread per process and queue publishes one envelope at a time and waits for its
confirmation, and everything handed to it meanwhile goes into the next envelope. An idle
publisher sends at once (an envelope of one); a busy one batches what queued up behind the
confirm in flight. No sleep on the request path.

Each caller is answered only when the envelope holding its item is confirmed (RabbitMQ publisher
confirm; the Redis broker's reply to the push, after its AOF write): nothing is acknowledged
before it is durable. A failed envelope fails exactly its callers. A caller whose wait runs out
cancels its item; if the thread had taken it already the item may still be published, so such a
caller must treat it as "maybe sent" (the counters cancel the delta in the ledger).

The message carries the items as the ``envelope`` keyword argument: a list of JSON lists.

``after_confirm`` (optional) runs in the same thread once an envelope is confirmed, with each
item and the context its caller handed over, and returns one result per item, which becomes that
caller's return value (the counters use it to record a whole envelope's deltas in the cache in one
pipeline). If it fails, every caller gets ``NOTHING``: their items are confirmed all the same.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout

from . import metrics

logger = logging.getLogger(__name__)

ENVELOPE_KWARG = "envelope"
# Items per envelope at most: bounds the message size (a few dozen bytes an item) and the work a
# redelivered envelope repeats. Chosen with `make bench` (docs/benchmarks.md, "envelopes").
MAX_ITEMS = 500


class EnvelopeNotConfirmed(RuntimeError):
    """The envelope holding the item was not confirmed (it may or may not be in the broker)."""


Send = Callable[[str, list[list]], None]  # (envelope id, items): returns once confirmed
AfterConfirm = Callable[[list[tuple[list, object]]], list]  # (item, context) pairs: one result each
NOTHING = object()  # what a caller gets when there is no after_confirm result for its item


class EnvelopePublisher:
    """One per process and queue (``envelope_publisher_for``)."""

    def __init__(self, *, send: Send, name: str, after_confirm: AfterConfirm | None = None):
        self._send = send
        self._after_confirm = after_confirm
        self._pending: list[tuple[list, Future, object]] = []
        self._ready = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=f"envelopes-{name}", daemon=True)
        self._thread.start()

    def publish(self, item: list, *, timeout_s: float, context: object = None) -> object:
        """Hand one item over; once its envelope is confirmed, return the item's after_confirm
        result (``NOTHING`` if none); else raise."""
        future: Future = Future()
        with self._ready:
            self._pending.append((item, future, context))
            self._ready.notify()
        try:
            return future.result(timeout=timeout_s)
        except FutureTimeout:
            future.cancel()
            raise EnvelopeNotConfirmed(f"no confirm within {timeout_s:.1f}s") from None

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._pending:
                    self._ready.wait()
                taken, self._pending = self._pending[:MAX_ITEMS], self._pending[MAX_ITEMS:]
            # A caller that gave up before its item was taken is not published.
            live = [entry for entry in taken if entry[1].set_running_or_notify_cancel()]
            if live:
                self._publish(live)

    def _publish(self, live: list[tuple[list, Future, object]]) -> None:
        envelope_id = str(uuid.uuid4())
        try:
            self._send(envelope_id, [item for item, _, _ in live])
        except BaseException as exc:  # this thread must outlive any failure: it serves them all
            logger.error("envelope %s (%d items) NOT confirmed: %r", envelope_id, len(live), exc)
            for _, future, _ in live:
                future.set_exception(EnvelopeNotConfirmed(str(exc)))
            return
        results = [NOTHING] * len(live)
        if self._after_confirm is not None:
            try:
                answered = list(self._after_confirm([(i, context) for i, _, context in live]))
                if len(answered) != len(live):
                    raise ValueError(f"{len(answered)} results for {len(live)} items")
                results = answered
            except BaseException as exc:  # confirmed is confirmed: the callers do without it
                logger.warning("envelope %s: after its confirm: %r", envelope_id, exc)
        for (_, future, _), result in zip(live, results, strict=True):
            future.set_result(result)
        try:
            metrics.envelope_size.observe(len(live))
        except Exception:  # noqa: S110 (a metric never fails a publish)
            pass


_publishers: dict[tuple, EnvelopePublisher] = {}
_lock = threading.Lock()


def envelope_publisher_for(
    *, key: tuple, send: Send, after_confirm: AfterConfirm | None = None
) -> EnvelopePublisher:
    """This process's envelope publisher for ``key`` (a forked child gets its own: the parent's
    thread does not exist there)."""
    full_key = (os.getpid(), *key)
    publisher = _publishers.get(full_key)
    if publisher is None:
        with _lock:
            publisher = _publishers.get(full_key)
            if publisher is None:
                publisher = EnvelopePublisher(
                    send=send, name=str(key[-1]), after_confirm=after_confirm
                )
                _publishers[full_key] = publisher
    return publisher
