import time

from celery import shared_task
from django.core.cache import cache

BEAT_HEARTBEAT_KEY = "ops:beat-heartbeat"


@shared_task(name="tasks.beat_heartbeat", ignore_result=True)
def beat_heartbeat() -> None:
    """Run by Celery beat so the operations page can show that beat and a worker are alive."""
    cache.set(BEAT_HEARTBEAT_KEY, time.time(), timeout=None)
