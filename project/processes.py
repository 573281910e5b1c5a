"""The processes of the running system, defined once.

``make run`` (project/launcher.py) starts exactly these, and ``docker-compose.yml`` runs the same
commands (a test checks that the two agree).
"""

from tasks.topology import WORK_QUEUES

PROCESS_NAMES = ("web", "worker", "counters-worker", "outbox-relay", "beat", "flower")
# The counters worker prefetches a whole batch per process: celery-batches can only gather what
# the broker has handed over. Same number as the default COUNTER_BATCH_SIZE.
COUNTERS_PREFETCH_MULTIPLIER = 500


def process_commands(
    *, bind_host: str, web_port: int, flower_port: int, state_dir: str
) -> dict[str, list[str]]:
    return {
        "web": [
            "gunicorn",
            "project.wsgi:application",
            "--bind",
            f"{bind_host}:{web_port}",
            "--workers",
            "2",
            "--threads",
            "4",
            "--access-logfile",
            "-",
            "--graceful-timeout",
            "10",
            # The control socket has one fixed path per user; two sites on a host would collide.
            "--no-control-socket",
        ],
        "worker": [
            "celery",
            "-A",
            "project",
            "worker",
            "--loglevel",
            "INFO",
            "--queues",
            ",".join(q for q in WORK_QUEUES if q != "counters"),
            "--hostname",
            "worker@%h",
        ],
        # Counters get their own worker (and queue): a burst of deltas never waits behind orders,
        # and batching needs a large prefetch that would be wrong for single tasks.
        "counters-worker": [
            "celery",
            "-A",
            "project",
            "worker",
            "--loglevel",
            "INFO",
            "--queues",
            "counters",
            "--prefetch-multiplier",
            str(COUNTERS_PREFETCH_MULTIPLIER),
            "--hostname",
            "counters@%h",
        ],
        # Publishes the outbox rows that transactions commit (tasks/relay.py); more than one may
        # run (they share the rows with SKIP LOCKED).
        "outbox-relay": ["python", "manage.py", "outbox_relay"],
        "beat": [
            "celery",
            "-A",
            "project",
            "beat",
            "--loglevel",
            "INFO",
            "--schedule",
            f"{state_dir}/celerybeat-schedule",
        ],
        "flower": [
            "celery",
            "-A",
            "project",
            "flower",
            "--conf=project/flowerconfig.py",
            f"--address={bind_host}",
            f"--port={flower_port}",
        ],
    }
