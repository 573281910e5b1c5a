"""The site's housekeeping, run by beat on the default queue."""

from celery import shared_task
from django.core.management import call_command

from .ops import pending_sample


@shared_task(name="project.clear_sessions", ignore_result=True)
def clear_sessions() -> None:
    """Sessions live in PostgreSQL (project/sessions.py): delete the expired ones."""
    call_command("clearsessions")


@shared_task(name="project.sample_pending", ignore_result=True)
def sample_pending() -> None:
    """The operations page's pending chart, sampled also while nobody reads the page."""
    pending_sample()
