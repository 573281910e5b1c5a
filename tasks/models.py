from django.db import models


class DeadLetter(models.Model):
    """A task message that will not be applied without a human: the database record of a message
    that is also in the broker's dead-letter queue (design G3)."""

    class Reason(models.TextChoices):
        PERMANENT_ERROR = "permanent_error", "permanent error"
        RETRIES_EXHAUSTED = "retries_exhausted", "retry budget exhausted"
        DELIVERY_LIMIT = "delivery_limit", "worker lost too many times"

    class Status(models.TextChoices):
        DEAD = "dead", "dead"
        REPLAYED = "replayed", "replayed"
        DISCARDED = "discarded", "discarded"

    task_id = models.CharField(max_length=64, unique=True)
    task_name = models.CharField(max_length=200, db_index=True)
    queue = models.CharField(max_length=100, blank=True)
    args = models.JSONField(default=list)
    kwargs = models.JSONField(default=dict)
    reason = models.CharField(max_length=32, choices=Reason.choices, db_index=True)
    exception = models.TextField(blank=True)
    traceback = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(help_text="Executions, the first one and its retries.")
    deliveries = models.PositiveIntegerField(
        default=1, help_text="Deliveries of the last message (more than one: a worker was lost)."
    )
    broker = models.CharField(max_length=16)
    status = models.CharField(
        max_length=16, choices=Status.choices, default=Status.DEAD, db_index=True
    )
    first_failed_at = models.DateTimeField()
    last_failed_at = models.DateTimeField()

    class Meta:
        ordering = ["-last_failed_at"]

    def __str__(self) -> str:
        return f"{self.task_name}[{self.task_id}] {self.reason}"


class OutboxMessage(models.Model):
    """A task to publish, written in the transaction whose commit it follows (tasks/outbox.py).

    The relay (tasks/relay.py) publishes unsent rows in id order, marks them sent, and backs a
    row off (``available_at``) when its publish fails; beat prunes sent rows. ``message_id`` is
    the Celery task id of every publish of the row: a row published twice (a relay killed between
    the publish and the mark) arrives twice with one id, which the consumers absorb.
    """

    message_id = models.UUIDField(unique=True)
    task_name = models.CharField(max_length=200)
    queue = models.CharField(max_length=100)
    args = models.JSONField(default=list)
    kwargs = models.JSONField(default=dict)
    created_at = models.DateTimeField()
    available_at = models.DateTimeField(help_text="Not published before this (retry backoff).")
    attempts = models.PositiveIntegerField(default=0, help_text="Publishes that failed.")
    last_error = models.TextField(blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        indexes = [
            # The relay's claim and the operations page read only the unsent rows.
            models.Index(
                fields=["available_at", "id"],
                name="tasks_outbox_unsent",
                condition=models.Q(sent_at__isnull=True),
            ),
            models.Index(
                fields=["sent_at"],
                name="tasks_outbox_sent",
                condition=models.Q(sent_at__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.task_name}[{self.message_id}]"


class OutboxRelay(models.Model):
    """A relay process's heartbeat: the operations page counts the relays seen lately."""

    name = models.CharField(max_length=200, primary_key=True)  # host:pid
    started_at = models.DateTimeField()
    seen_at = models.DateTimeField(db_index=True)
    published = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return self.name
