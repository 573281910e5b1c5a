"""Group commit of RabbitMQ publisher confirms: many requests' messages, one wait for the broker.

A request that must not answer before its message is durable (a counter delta, G1) used to
publish on a pooled connection and block on that message's confirm: one round trip to the broker,
and one fsync-backed confirm, per request, plus kombu's and Celery's per-publish overhead (the
profile in docs/benchmarks.md: most of the request's CPU time).

Here one thread per process owns one AMQP connection in confirm mode. Request threads hand it a
ready-built Celery message and wait on a future. The thread publishes everything handed to it so
far without waiting, then reads the broker's acknowledgements as they come: RabbitMQ confirms a
quorum queue's messages after they are written to the log on disk, and one ``basic.ack`` with
``multiple`` set confirms every earlier message at once. A future is resolved only by the ack
covering its own message, so nothing is acknowledged to a caller before the broker has it.

Failures, each ending in ``PublishNotConfirmed`` for the callers concerned:

* a message returned as unroutable (published ``mandatory``), or nacked twice (a nacked
  message goes once more on a new connection: see ``_on_nack``);
* no confirm within ``timeout_s`` (e.g. a broker memory alarm blocking publishers): every
  unconfirmed message fails and the connection is dropped, since its state is unknown;
* a connection error: unconfirmed messages are published again once on a new connection (the
  broker may have closed an idle connection, or restarted), then fail. A second copy of a message
  the broker did take is harmless for a caller with an idempotent consumer (the counters' ledger).

A caller whose wait ran out cancels its future; the thread skips a cancelled message it has not
published yet. It may still have published it, so such a caller must treat the message as "maybe
sent" (the counters cancel the delta in the ledger first).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import select
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

from kombu.serialization import dumps

from tasks import metrics
from tasks.failover import connect_from, discard

logger = logging.getLogger(__name__)

# Idle: look after the connection (a close or heartbeat from the broker) at least this often.
IDLE_TICK_S = 1.0
# Longest single wait while confirms are due; the socket and the wake-up pipe normally end it
# sooner (this only bounds a wait on data buffered inside a TLS layer, invisible to select).
WAIT_CAP_S = 0.05
# Messages published before the thread reads acknowledgements again.
MAX_GROUP = 1000
# Publishes per message: the first, and one more on a new connection after a connection error.
MAX_ATTEMPTS = 2


class PublishNotConfirmed(RuntimeError):
    """The broker did not confirm the message (it may or may not have it)."""


@dataclass(eq=False)
class _Outgoing:
    task_id: str
    body: bytes
    content_type: str
    content_encoding: str
    headers: dict
    properties: dict
    deadline: float = 0.0  # for the confirm of its latest publish (set when published)
    future: Future = field(default_factory=Future)
    attempts: int = 0
    started: bool = False


class GroupPublisher:
    """One per process (``publisher_for``); ``publish`` blocks until the broker confirmed."""

    def __init__(self, *, app, queue_name: str, timeout_s: float):
        self._app = app
        self._queue = app.amqp.queues[queue_name]
        self._timeout_s = timeout_s
        self._inbox: queue.SimpleQueue[_Outgoing] = queue.SimpleQueue()
        self._retry: list[_Outgoing] = []
        self._unconfirmed: dict[int, _Outgoing] = {}  # delivery tag -> message, in tag order
        self._returned: set[str] = set()
        self._nacked: list[_Outgoing] = []  # nacked by the broker, since the last frames read
        self._returned_since_declare = False
        self._conn = None
        self._channel = None
        self._tag = 0
        self._node_offset = 0  # where in the broker URL's node list the next connection starts
        self._connected_node = 0  # the node (index in that list) of the current connection
        # Request threads wake the publisher thread through this pipe when it is waiting.
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._waiting = False
        self._thread = threading.Thread(target=self._run, name="group-publisher", daemon=True)
        self._thread.start()

    # --- caller side ---------------------------------------------------------------------------

    def publish(
        self, *, name: str, task_id: str, args: list, kwargs: dict, retries: int = 0
    ) -> None:
        """Publish a Celery task message and return once the broker confirmed it."""
        headers, properties, body, _ = self._app.amqp.as_task_v2(
            task_id,
            name,
            args,
            kwargs,
            retries=retries,
            # saferepr of the arguments was a visible share of a request's CPU; these are short.
            argsrepr=repr(args),
            kwargsrepr=repr(kwargs),
        )
        content_type, content_encoding, payload = dumps(body, serializer="json")
        properties["delivery_mode"] = 2  # persistent
        item = _Outgoing(
            task_id=task_id,
            body=payload,
            content_type=content_type,
            content_encoding=content_encoding,
            headers=headers,
            properties=properties,
        )
        self._inbox.put(item)
        if self._waiting:
            with contextlib.suppress(BlockingIOError):  # full: a wake-up is pending anyway
                os.write(self._wake_w, b"!")
        # Enough for a timed-out first attempt and one more on a new connection.
        try:
            item.future.result(timeout=self._timeout_s * MAX_ATTEMPTS + 1)
        except FutureTimeout:
            item.future.cancel()
            raise PublishNotConfirmed(f"no confirm within {self._timeout_s:.1f}s") from None

    # --- the publisher thread ------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                self._cycle()
            except Exception as exc:  # the thread must outlive anything one cycle meets
                logger.exception("group publisher: unexpected error")
                self._connection_lost(exc, retry=False)

    def _cycle(self) -> None:
        batch = self._take()
        if batch:
            self._publish(batch)
        if self._unconfirmed:
            oldest = next(iter(self._unconfirmed.values()))
            remaining = oldest.deadline - time.monotonic()
            if remaining <= 0:
                # Blocked or stuck: nothing on this connection can be trusted to be confirmed.
                logger.error(
                    "group publisher: no confirm within %.1fs for %d messages",
                    self._timeout_s,
                    len(self._unconfirmed),
                )
                self._connection_lost(TimeoutError("confirm timeout"), retry=False)
                return
            # Messages handed over meanwhile wait for these acks and then go out together: the
            # group commit. (Waking up for each of them measured slower in `make bench`.)
            self._wait(min(remaining, WAIT_CAP_S), wake=False)
        elif not batch and not self._retry:
            self._wait(IDLE_TICK_S, wake=True)

    def _take(self) -> list[_Outgoing]:
        batch, self._retry = self._retry, []
        while len(batch) < MAX_GROUP:
            try:
                batch.append(self._inbox.get_nowait())
            except queue.Empty:
                break
        taken = []
        for item in batch:
            if not item.started:
                # A caller that gave up cancelled its future: do not publish that message.
                if not item.future.set_running_or_notify_cancel():
                    continue
                item.started = True
            taken.append(item)
        return taken

    def _wait(self, timeout: float, *, wake: bool) -> None:
        """Until the broker sends something (acks), a request hands over a message (``wake``),
        or ``timeout``."""
        sock = self._socket()
        # poll, not select: a process with more than 1024 open files may hold a higher fd.
        poller = select.poll()
        if sock is not None:
            poller.register(sock, select.POLLIN)
        if wake:
            poller.register(self._wake_r, select.POLLIN)
            self._waiting = True
        try:
            if wake and not self._inbox.empty():  # handed over before the flag was seen
                return
            ready = {fd for fd, _ in poller.poll(timeout * 1000)}
        finally:
            self._waiting = False
        if self._wake_r in ready:
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_r, 4096)
        if sock is not None and (sock.fileno() in ready or not ready):
            self._read_frames()
        if self._nacked:
            nacked, self._nacked = self._nacked, []
            self._retry.extend(nacked)
            self._connection_lost(PublishNotConfirmed("the broker refused it (nack)"), retry=True)

    def _socket(self):
        try:
            return self._conn.connection.sock if self._conn is not None else None
        except AttributeError:
            return None

    def _read_frames(self) -> None:
        """Handle every frame the broker has sent (acks call back into _on_ack), without waiting."""
        try:
            while True:
                self._conn.drain_events(timeout=0)
        except TimeoutError:  # socket.timeout: nothing more right now
            pass
        except Exception as exc:
            self._connection_lost(exc, retry=bool(self._unconfirmed))

    def _publish(self, batch: list[_Outgoing]) -> None:
        try:
            self._connect()
        except Exception as exc:
            logger.error("group publisher: cannot connect to the broker: %r", exc)
            self._fail(batch, f"broker unreachable: {exc!r}")
            return
        if self._returned_since_declare:
            # A message came back unroutable: the queue was deleted under us; declare it again
            # so the next messages have somewhere to go.
            try:
                self._queue.bind(self._channel).declare()
                self._returned_since_declare = False
            except Exception as exc:
                self._retry.extend(batch)
                self._connection_lost(exc, retry=True)
                return
        metrics.publish_group_size.observe(len(batch))
        exchange, routing_key = self._queue.exchange.name, self._queue.routing_key
        for index, item in enumerate(batch):
            try:
                message = self._channel.prepare_message(
                    item.body,
                    None,
                    item.content_type,
                    item.content_encoding,
                    item.headers,
                    item.properties,
                )
                item.attempts += 1
                item.deadline = time.monotonic() + self._timeout_s
                self._channel.basic_publish(
                    message, exchange=exchange, routing_key=routing_key, mandatory=True
                )
                self._tag += 1
                self._unconfirmed[self._tag] = item
            except Exception as exc:
                self._retry.extend(batch[index:])
                self._connection_lost(exc, retry=True)
                return

    # --- connection ----------------------------------------------------------------------------

    def _connect(self) -> None:
        if self._conn is not None:
            return
        # Our own confirm handling: kombu's confirm_publish would wait for each message. On a
        # cluster, each node once, from the one after the last lost (tasks/failover.py).
        conn, node = connect_from(
            self._app, start=self._node_offset, transport_options={"confirm_publish": False}
        )
        try:
            channel = conn.channel()
            channel.confirm_select()
            channel.events["basic_ack"].add(self._on_ack)
            channel.events["basic_nack"].add(self._on_nack)
            channel.events["basic_return"].add(self._on_return)
            # Declared on every new connection, as Celery does: a message to a missing queue
            # would be unroutable.
            self._queue.bind(channel).declare()
        except Exception:
            discard(conn)
            raise
        self._conn, self._channel, self._tag = conn, channel, 0
        self._connected_node = node
        self._returned.clear()
        self._returned_since_declare = False

    def _connection_lost(self, exc: BaseException, *, retry: bool) -> None:
        unconfirmed = list(self._unconfirmed.values())
        self._unconfirmed.clear()
        if self._conn is not None:
            # Its node may be dead or frozen: the next connection tries the next one first.
            self._node_offset = self._connected_node + 1
            discard(self._conn)
        self._conn = self._channel = None
        pending, self._retry = unconfirmed + self._retry, []
        for item in pending:
            if retry and item.attempts < MAX_ATTEMPTS:
                self._retry.append(item)
            else:
                _resolve(item, PublishNotConfirmed(f"connection lost: {exc!r}"))
        if self._retry:
            logger.warning(
                "group publisher: connection lost, publishing %d messages again: %r",
                len(self._retry),
                exc,
            )

    # --- broker callbacks (on this thread, from drain_events) ----------------------------------

    def _settle(self, tag: int, multiple: bool) -> list[_Outgoing]:
        if not multiple:
            item = self._unconfirmed.pop(tag, None)
            return [item] if item else []
        settled = []
        while self._unconfirmed and (first := next(iter(self._unconfirmed))) <= tag:
            settled.append(self._unconfirmed.pop(first))
        return settled

    def _on_ack(self, tag: int, multiple: bool) -> None:
        for item in self._settle(tag, multiple):
            if item.task_id in self._returned:
                self._returned.discard(item.task_id)
                _resolve(item, PublishNotConfirmed("unroutable: the queue does not exist"))
            else:
                _resolve(item, None)

    def _on_nack(self, tag: int, multiple: bool) -> None:
        # A nack is not always the queue's final word: a channel opened while a quorum queue
        # was electing a new leader (its leader's node just died) keeps a dead leader and nacks
        # every publish for good (RabbitMQ 3.10, seen in the fault suite's cluster scenarios).
        # So the nacked messages go once more on a new connection, like a connection error's.
        self._nacked.extend(self._settle(tag, multiple))

    def _on_return(self, exc, exchange, routing_key, message) -> None:
        task_id = message.properties.get("correlation_id")
        logger.error("group publisher: message %s returned: %r", task_id, exc)
        self._returned.add(task_id)
        self._returned_since_declare = True

    def _fail(self, items: list[_Outgoing], reason: str) -> None:
        for item in items:
            _resolve(item, PublishNotConfirmed(reason))


def _resolve(item: _Outgoing, error: BaseException | None) -> None:
    if item.future.done():
        return
    if error is None:
        item.future.set_result(None)
    else:
        item.future.set_exception(error)


_publishers: dict[tuple, GroupPublisher] = {}
_lock = threading.Lock()


def publisher_for(*, app, queue_name: str, timeout_s: float) -> GroupPublisher:
    """This process's publisher for ``queue_name`` (a forked child gets its own: the parent's
    thread and connection do not exist there)."""
    key = (os.getpid(), app.conf.broker_url, queue_name, timeout_s)
    publisher = _publishers.get(key)
    if publisher is None:
        with _lock:
            publisher = _publishers.get(key)
            if publisher is None:
                publisher = GroupPublisher(app=app, queue_name=queue_name, timeout_s=timeout_s)
                _publishers[key] = publisher
    return publisher
