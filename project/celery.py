"""Celery application, wired as in Celery's own Django example."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings.base")

# One base task class for the whole project holds the delivery policy (tasks/base.py).
app = Celery("project", task_cls="tasks.base:DeliveryTask")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


def _install_bootsteps() -> None:
    from tasks.bootsteps import DeclareDeadLetterQueue

    app.steps["consumer"].add(DeclareDeadLetterQueue)


_install_bootsteps()
