"""The Celery application, wired as in Celery's own Django example (``config_from_object`` with
the ``CELERY`` namespace, ``autodiscover_tasks``). It lives in the delivery app, the lowest layer,
so that every app may import it; ``project/celery.py`` exposes it to ``celery -A project``.
"""

import os

from celery import Celery, signals
from django.db import connections

from .bootsteps import DeclareDeadLetterQueue, install_redis_restore

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings.base")

# One base task class for the whole project holds the delivery policy (tasks/base.py).
app = Celery("project", task_cls="tasks.base:DeliveryTask")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


app.steps["consumer"].add(DeclareDeadLetterQueue)
install_redis_restore(app)


@signals.task_postrun.connect
def _drop_failed_database_connections(**kwargs) -> None:
    """Connections outlive tasks (CELERY_DB_REUSE_MAX); one that saw a database error is checked
    and closed if broken (PostgreSQL restarted), so the next task does not inherit the error."""
    for conn in connections.all(initialized_only=True):
        if conn.errors_occurred:
            conn.close_if_unusable_or_obsolete()


@signals.worker_ready.connect
def _serve_worker_metrics(**kwargs) -> None:
    """A worker container's metrics endpoint (WORKER_METRICS_PORT; docker-compose.yml sets it),
    started once the pool runs, in the main process."""
    port = int(os.environ.get("WORKER_METRICS_PORT") or 0)
    if port:
        from .metrics import worker_metrics_serve

        worker_metrics_serve(port=port)
