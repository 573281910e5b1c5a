"""The site's housekeeping, run by beat on the default queue."""

from celery import shared_task
from django.core.management import call_command


@shared_task(name="project.clear_sessions", ignore_result=True)
def clear_sessions() -> None:
    """Sessions live in PostgreSQL (project/sessions.py): delete the expired ones."""
    call_command("clearsessions")
