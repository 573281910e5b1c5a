"""The one base task class: the delivery policy every task in the project follows.

* **Late acknowledgement.** A message is acknowledged only after the task returned, so a worker
  killed at any instruction before that leaves it in the broker, and it is delivered again
  (``acks_late``, ``reject_on_worker_lost``). Tasks must therefore be idempotent.
* **Retry budget.** Transient errors (``policy.TRANSIENT_ERRORS``: database, Redis or broker
  unreachable) are retried through ``autoretry_for`` with exponential backoff, equal jitter and a
  cap, at most ``TASK_MAX_RETRIES`` times.
* **Dead-lettering.** A permanent error, an exhausted budget, or a message whose worker was lost
  more than ``TASK_MAX_DELIVERIES`` times (a poison message that kills its process) is recorded as a
  ``DeadLetter`` row in PostgreSQL *and* moved to the broker's dead-letter queue, then rejected.
  RabbitMQ moves it itself (the queues' dead-letter exchange); on Redis the task publishes a copy
  to the ``dead_letter`` list first, because kombu's Redis transport drops rejected messages.

Set app-wide as the Celery ``task_cls`` in ``project/celery.py``.
"""

import logging
import math
import re
import traceback
from typing import NoReturn

from celery.contrib.django.task import DjangoTask
from celery.exceptions import Ignore, Reject, Retry
from django.conf import settings

from .broker import broker_kind
from .delivery import delivery_counts, message_dead_letter
from .models import DeadLetter
from .outbox import outbox_enqueue
from .policy import TRANSIENT_ERRORS, backoff_delay, is_transient
from .services import (
    FailedMessage,
)

logger = logging.getLogger(__name__)


# A retry routed through RabbitMQ's native delayed delivery carries its delay as 28 binary digits
# in front of the routing key ("0.0.[...].1.0.default").
DELAYED_ROUTING_KEY = re.compile(r"^(?:[01]\.){28}")


def retry_countdown(*, app, attempt: int) -> float:
    """Seconds before retry number ``attempt + 1``, by the policy in settings."""
    countdown = backoff_delay(
        attempt=attempt,
        base=settings.TASK_RETRY_BACKOFF_BASE,
        cap=settings.TASK_RETRY_BACKOFF_MAX,
    )
    if broker_kind(app) == "amqp":
        # RabbitMQ's native delayed delivery (quorum queues) counts whole seconds and truncates;
        # round up so a retry never comes sooner than the policy says.
        countdown = math.ceil(countdown)
    return countdown


def queue_of(routing_key: str) -> str:
    """The work queue a message was routed to (routing keys equal queue names)."""
    return DELAYED_ROUTING_KEY.sub("", routing_key)


class DeliveryTask(DjangoTask):
    acks_late = True
    reject_on_worker_lost = True
    autoretry_for = TRANSIENT_ERRORS
    # The countdown is computed in retry() below; Celery's own backoff has full jitter only.
    retry_backoff = False

    @property
    def max_retries(self) -> int:  # read at call time so settings overrides apply
        return settings.TASK_MAX_RETRIES

    # --- dispatch after a commit: the outbox ---------------------------------------------------

    def delay_on_commit(self, *args, **kwargs) -> str:
        """Dispatch this task when the caller's transaction commits, at least once.

        Celery's version publishes from an ``on_commit`` callback: a broker down at the commit
        loses the task. Here it is an outbox row of the transaction itself (tasks/outbox.py),
        published by the relay; returns the message id it will carry."""
        return self.apply_async_on_commit(args, kwargs)

    def apply_async_on_commit(self, args=None, kwargs=None, **options) -> str:
        unsupported = set(options) - {"queue"}
        if unsupported:  # the relay publishes a row as it is: no countdown, eta or other option
            raise TypeError(f"apply_async_on_commit: unsupported options {sorted(unsupported)}")
        queue = options.get("queue") or self.app.amqp.router.route({}, self.name)["queue"].name
        return outbox_enqueue(
            task_name=self.name, queue=queue, args=list(args or ()), kwargs=dict(kwargs or {})
        )

    # --- delivery policy ------------------------------------------------------------------------

    def __call__(self, *args, **kwargs):
        # Call run() directly, as Celery's docs do for a custom __call__: Task.__call__ would push
        # a fresh request context and hide the worker's (id, retries, delivery info).
        if self.request.called_directly:
            return self.run(*args, **kwargs)
        deliveries = self.delivery_count()
        if deliveries > settings.TASK_MAX_DELIVERIES:
            self.dead_letter(
                reason=DeadLetter.Reason.DELIVERY_LIMIT,
                exception=f"worker lost while running this message {deliveries - 1} times",
                trace="",
                deliveries=deliveries,
            )
        try:
            return self.run(*args, **kwargs)
        except (Retry, Reject, Ignore):
            raise
        except Exception as exc:
            # ``autoretry_for`` matches classes only; a read-only database raises an InternalError
            # that only its SQLSTATE marks as transient (policy.is_transient).
            if is_transient(exc) and self.request.retries < self.max_retries:
                raise self.retry(exc=exc) from exc
            reason = (
                DeadLetter.Reason.RETRIES_EXHAUSTED
                if is_transient(exc)
                else DeadLetter.Reason.PERMANENT_ERROR
            )
            self.dead_letter(
                reason=reason,
                exception=f"{type(exc).__name__}: {exc}",
                trace=traceback.format_exc(),
                deliveries=deliveries,
            )

    def retry(
        self,
        args=None,
        kwargs=None,
        exc=None,
        throw=True,
        eta=None,
        countdown=None,
        max_retries=None,
        **options,
    ):
        if countdown is None and eta is None:
            countdown = retry_countdown(app=self.app, attempt=self.request.retries)
        logger.info(
            "task %s[%s] retry %d in %.2fs: %r",
            self.name,
            self.request.id,
            self.request.retries + 1,
            countdown,
            exc,
        )
        try:
            return super().retry(
                args=args,
                kwargs=kwargs,
                exc=exc,
                throw=throw,
                eta=eta,
                countdown=countdown,
                max_retries=max_retries,
                **options,
            )
        except Reject as rejected:
            # Celery turns a failed re-publish into Reject(requeue=False), which the Redis
            # transport turns into a lost message. Put it back in the queue instead; the delivery
            # limit still bounds how often that can happen.
            raise Reject(rejected.reason, requeue=True) from rejected

    def delivery_count(self) -> int:
        """How many times this message (this id at this retry number) has been delivered."""
        if self.broker_kind() == "amqp":
            # Quorum queues count failed deliveries in a header, absent on the first delivery.
            return int(self.request.get("x-delivery-count") or 0) + 1
        try:
            message = (self.request.id, self.request.retries)
            return delivery_counts(app=self.app, messages=[message])[message]
        except Exception:  # counting must never stop a task from running
            logger.exception("could not count deliveries of %s", self.request.id)
            return 1

    def broker_kind(self) -> str:
        return broker_kind(self.app)

    def dead_letter(self, *, reason: str, exception: str, trace: str, deliveries: int) -> NoReturn:
        """Record the message as a DeadLetter row, move it to the dead-letter queue, reject it."""
        request = self.request
        delivery_info = request.delivery_info or {}
        message = FailedMessage(
            task_id=request.id,
            task_name=self.name,
            queue=queue_of(delivery_info.get("routing_key") or ""),
            args=list(request.args or []),
            kwargs=dict(request.kwargs or {}),
            attempts=request.retries + 1,
            deliveries=deliveries,
            broker=self.broker_kind(),
        )
        try:
            message_dead_letter(
                app=self.app,
                message=message,
                retries=request.retries,
                reason=reason,
                exception=exception,
                trace=trace,
            )
        except Exception as error:
            if not is_transient(error):
                raise
            # The dead-letter table or queue is unreachable (the database or broker is what
            # failed). Dropping the message would make the failure invisible: come back later.
            logger.error("cannot dead-letter %s yet (%r); retry later", request.id, error)
            raise self.retry(
                countdown=settings.TASK_RETRY_BACKOFF_MAX, max_retries=request.retries + 1
            ) from error
        logger.error(
            "task %s[%s] dead-lettered (%s) after %d attempts: %s",
            self.name,
            request.id,
            reason,
            message.attempts,
            exception,
        )
        raise Reject(f"{reason}: {exception}", requeue=False)
