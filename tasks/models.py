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
