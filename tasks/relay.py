"""The outbox relay: publishes committed outbox rows to the broker (tasks/outbox.py).

One pass: in one transaction, claim the oldest due rows with ``FOR UPDATE SKIP LOCKED`` (several
relays share the table and never hold the same row), publish them in id order, each waiting for
the broker's confirmation, mark the confirmed ones sent, commit. A publish that fails backs its row
off (exponential, with jitter, capped) and ends the pass: the broker is most likely down, and the
relay itself waits before the next pass, so a broker outage costs one failed publish per wait, not
one per row.

A relay killed mid-pass leaves its rows unsent and unlocked (PostgreSQL rolls its transaction back
when the connection drops): the next pass publishes them again under the same message ids, and the
consumers absorb the second copy. A relay that hangs inside a pass loses its session after
``idle_in_transaction_session_timeout``, which releases its rows to the others.

Between passes the relay LISTENs for the NOTIFY that every outbox transaction sends at its commit,
and polls every ``OUTBOX_POLL_INTERVAL_S`` in case a notification was missed (a reconnect).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import time
from datetime import timedelta

import psycopg
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone
from django_redis import get_redis_connection

from .app import app
from .models import OutboxMessage, OutboxRelay
from .outbox import CHANNEL, OutboxItem, outbox_publisher_for
from .policy import backoff_delay

logger = logging.getLogger(__name__)

# Heartbeats are written at most this often (the operations page and the health check read them).
HEARTBEAT_S = 2.0
# First backoff after a failed publish (doubling up to OUTBOX_RETRY_MAX_S): short, so a broker
# that only blinked costs little.
RETRY_BASE_S = 0.5
# A relay's rows are released if it sits inside a pass this long without a statement (hung).
IDLE_IN_TRANSACTION_S = 60
# Longest single wait for a notification, so a stop request is seen soon.
WAIT_SLICE_S = 1.0
PUBLISH_RETRY_POLICY = {
    "max_retries": 1,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.2,
}


def relay_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def send_with_confirm(item: OutboxItem) -> None:
    """Publish a row as a Celery task message and return once the broker confirmed it."""
    timeout = settings.OUTBOX_PUBLISH_TIMEOUT_S
    app.send_task(
        item.task_name,
        args=item.args,
        kwargs=item.kwargs,
        task_id=item.message_id,
        queue=item.queue,
        timeout=timeout,
        confirm_timeout=timeout,
        retry_policy=PUBLISH_RETRY_POLICY,
    )


def _fresh_connections() -> None:
    """Drop the pooled broker connections and producers after a failed publish: the next pass
    opens new ones. A channel opened while a quorum queue was electing a leader can nack every
    publish for good (docs/cluster.md); a new channel does not. (Celery creates its pools again
    on the next use; ``force_close_all`` alone would leave a closed pool that refuses to serve.)
    """
    from kombu import pools

    with contextlib.suppress(Exception):  # closing what is broken already
        pools.reset()  # first: a pool looked up meanwhile must not be one it then closes
    app._pool = app.amqp._producer_pool = None


class Relay:
    def __init__(self, *, name: str | None = None):
        self.name = name or relay_name()
        self.published = 0
        self.failures = 0  # consecutive passes that ended in a failed publish
        self._listener: psycopg.Connection | None = None
        self._beat_at = 0.0
        self._started_at = timezone.now()
        self.stopping = False

    # --- one pass ------------------------------------------------------------------------------

    def relay_once(self) -> tuple[int, bool]:
        """Publish the due rows of one batch: (rows published, whether the batch was full)."""
        batch_size = settings.OUTBOX_BATCH_SIZE
        sent: list[int] = []
        failed = None
        with transaction.atomic():
            with connection.cursor() as cursor:
                # Per pass, not per session: a connection opened after a failure needs it too.
                cursor.execute(
                    f"SET LOCAL idle_in_transaction_session_timeout = '{IDLE_IN_TRANSACTION_S}s'"
                )
            rows = list(
                OutboxMessage.objects.select_for_update(skip_locked=True)
                .filter(sent_at__isnull=True, available_at__lte=timezone.now())
                .order_by("id")[:batch_size]
            )
            for row in rows:
                item = OutboxItem(
                    message_id=str(row.message_id),
                    task_name=row.task_name,
                    queue=row.queue,
                    args=row.args,
                    kwargs=row.kwargs,
                )
                try:
                    (outbox_publisher_for(task_name=row.task_name) or send_with_confirm)(item)
                except Exception as exc:  # any failure: not confirmed, try the row again later
                    failed = (row, exc)
                    break
                sent.append(row.pk)
                self.published += 1
                _fault_kill_point(self.published)
            if sent:
                OutboxMessage.objects.filter(pk__in=sent).update(sent_at=timezone.now())
            if failed:
                row, exc = failed
                delay = backoff_delay(
                    attempt=row.attempts,
                    base=RETRY_BASE_S,
                    cap=settings.OUTBOX_RETRY_MAX_S,
                )
                OutboxMessage.objects.filter(pk=row.pk).update(
                    attempts=row.attempts + 1,
                    last_error=f"{type(exc).__name__}: {exc}"[:2000],
                    available_at=timezone.now() + timedelta(seconds=delay),
                )
                logger.warning(
                    "outbox: %s[%s] not published (attempt %d), again in %.1fs: %r",
                    row.task_name,
                    row.message_id,
                    row.attempts + 1,
                    delay,
                    exc,
                )
        self.failures = self.failures + 1 if failed else 0
        if failed:
            _fresh_connections()
        if sent:
            logger.info("outbox: %d published", len(sent))
        return len(sent), failed is None and len(rows) == batch_size

    # --- the loop ------------------------------------------------------------------------------

    def run(self, *, max_passes: int | None = None) -> None:
        """Relay until ``stopping`` (set by SIGTERM/SIGINT in the command)."""
        passes = 0
        while not self.stopping and (max_passes is None or passes < max_passes):
            passes += 1
            full = False
            try:
                self._heartbeat()
                _, full = self.relay_once()
            except Exception as exc:  # the database is down, or anything else: wait, try again
                self.failures += 1
                logger.error("outbox relay: pass failed: %r", exc)
                _drop_connection()
            if full:
                continue  # more rows are due now
            self._wait(self._pause())

    def _pause(self) -> float:
        if self.failures:
            return backoff_delay(
                attempt=self.failures - 1,
                base=RETRY_BASE_S,
                cap=settings.OUTBOX_RETRY_MAX_S,
            )
        return settings.OUTBOX_POLL_INTERVAL_S

    def _wait(self, timeout: float) -> None:
        """Until a commit notifies the channel, or ``timeout``; a failure pause ignores
        notifications (the broker is what failed, new rows would fail too)."""
        deadline = time.monotonic() + timeout
        while not self.stopping and (remaining := deadline - time.monotonic()) > 0:
            if self.failures:
                time.sleep(min(remaining, WAIT_SLICE_S))
                continue
            try:
                listener = self._listen()
                if any(
                    True
                    for _ in listener.notifies(timeout=min(remaining, WAIT_SLICE_S), stop_after=1)
                ):
                    return
            except Exception as exc:
                logger.warning("outbox relay: LISTEN connection lost: %r", exc)
                self._close_listener()
                time.sleep(min(remaining, WAIT_SLICE_S))

    def _listen(self) -> psycopg.Connection:
        if self._listener is None or self._listener.closed:
            params = connection.get_connection_params()
            params.pop("cursor_factory", None)
            params.pop("context", None)
            listener = psycopg.connect(**params, autocommit=True)
            listener.execute(f"LISTEN {CHANNEL}")
            self._listener = listener
        return self._listener

    def _close_listener(self) -> None:
        if self._listener is not None:
            try:
                self._listener.close()
            except Exception:  # noqa: S110 (being thrown away)
                pass
        self._listener = None

    def _heartbeat(self) -> None:
        now = time.monotonic()
        if now - self._beat_at < HEARTBEAT_S:
            return
        OutboxRelay.objects.update_or_create(
            name=self.name,
            defaults={"seen_at": timezone.now(), "published": self.published},
            create_defaults={
                "seen_at": timezone.now(),
                "published": self.published,
                "started_at": self._started_at,
            },
        )
        self._beat_at = now

    def close(self) -> None:
        self._close_listener()
        try:
            OutboxRelay.objects.filter(name=self.name).delete()
        except Exception:  # noqa: S110 (a stale heartbeat only ages out)
            pass


def _drop_connection() -> None:
    try:
        connection.close()
    except Exception:  # noqa: S110 (it is broken already)
        pass


def _fault_kill_point(published: int) -> None:
    """The fault suite's relay killed while publishing: after ``OUTBOX_FAULT_KILL_AFTER``
    publishes of this process, between a publish and the mark, while the cache Redis holds a
    budget ``fault:budget:relay_kill`` (test settings only; never set in production)."""
    after = getattr(settings, "OUTBOX_FAULT_KILL_AFTER", 0)
    if not after or published < after:
        return
    if get_redis_connection("default").decr("fault:budget:relay_kill") >= 0:
        os.kill(os.getpid(), signal.SIGKILL)
