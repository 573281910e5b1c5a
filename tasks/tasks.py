import time

from celery import shared_task
from django.core.cache import cache

from .outbox import outbox_prune

BEAT_HEARTBEAT_KEY = "ops:beat-heartbeat"


@shared_task(name="tasks.beat_heartbeat", ignore_result=True)
def beat_heartbeat() -> None:
    """Run by Celery beat so the operations page can show that beat and a worker are alive."""
    cache.set(BEAT_HEARTBEAT_KEY, time.time(), timeout=None)


@shared_task(name="tasks.prune_outbox", ignore_result=True)
def prune_outbox() -> int:
    """Run by beat: delete outbox rows sent more than ``OUTBOX_KEEP_SENT_S`` ago."""
    return outbox_prune()
