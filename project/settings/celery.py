"""The broker, task delivery (retries, dead letters, visibility) and the transactional outbox.
Celery reads the ``CELERY_`` names (tasks/app.py, ``namespace="CELERY"``)."""

from tasks.topology import task_queues, task_routes

from .env import env

# --- Celery (read by tasks/app.py with namespace="CELERY") ----------------------------------
CELERY_BROKER_URL = env("CELERY_BROKER_URL", default="redis://127.0.0.1:6380/0")
# JSON only: a pickle payload from the broker would be remote code execution.
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_EVENT_SERIALIZER = "json"
CELERY_RESULT_ACCEPT_CONTENT = ["json"]
CELERY_TASK_IGNORE_RESULT = True  # outcomes live in PostgreSQL, not in a result backend
CELERY_TIMEZONE = "UTC"  # as TIME_ZONE (base.py)

# Delivery: acknowledge after the work is committed; a worker lost mid-task puts the message back.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
# A failure that escapes the base task's own handling is rejected, not acknowledged: RabbitMQ then
# dead-letters it through the queue's dead-letter exchange instead of dropping it.
CELERY_TASK_ACKS_ON_FAILURE_OR_TIMEOUT = False
# One unacknowledged message per worker process: a killed process strands at most one message and
# long tasks do not hold back short ones. The counters apply path batches inside one task instead.
CELERY_WORKER_PREFETCH_MULTIPLIER = env.int("CELERY_WORKER_PREFETCH_MULTIPLIER", default=1)
CELERY_WORKER_CONCURRENCY = env.int("CELERY_WORKER_CONCURRENCY", default=2)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

# Delivery policy of the base task (tasks/base.py): retry budget and exponential backoff.
TASK_MAX_RETRIES = env.int("TASK_MAX_RETRIES", default=8)
TASK_RETRY_BACKOFF_BASE = env.float("TASK_RETRY_BACKOFF_BASE", default=1.0)
TASK_RETRY_BACKOFF_MAX = env.float("TASK_RETRY_BACKOFF_MAX", default=300.0)
# Deliveries of one message (worker processes lost while running it) before it is dead-lettered.
TASK_MAX_DELIVERIES = env.int("TASK_MAX_DELIVERIES", default=5)

# Redis broker: a message not acknowledged within this many seconds is delivered again. It must be
# longer than any countdown the retry policy produces (TASK_RETRY_BACKOFF_MAX), or a retry waiting
# in a worker would be delivered twice; a system check enforces it. Celery reads it in three
# places, so it is set in all three.
REDIS_BROKER_VISIBILITY_TIMEOUT = env.int("REDIS_BROKER_VISIBILITY_TIMEOUT", default=3600)
CELERY_VISIBILITY_TIMEOUT = REDIS_BROKER_VISIBILITY_TIMEOUT
# RabbitMQ: a blocking socket read or write gives up after this long. Without it a publisher
# blocked by a memory alarm hangs for good: after its confirm times out, kombu closes the channel
# and waits for an answer the blocked broker never sends (found by the fault suite).
BROKER_SOCKET_TIMEOUT_S = env.float("BROKER_SOCKET_TIMEOUT_S", default=5.0)
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": REDIS_BROKER_VISIBILITY_TIMEOUT,
    # RabbitMQ: wait for the broker's publisher confirm, so a publish that returned is durable.
    "confirm_publish": True,
    "read_timeout": BROKER_SOCKET_TIMEOUT_S,
    "write_timeout": BROKER_SOCKET_TIMEOUT_S,
    # Redis: look for messages past their visibility timeout every 10 s. kombu's default scans
    # only every 10th sweep (every ~100 s), which kept the fault suite's restored messages
    # waiting 100 s after a broker restart; the scan is one ZRANGE on a small sorted set.
    "unacked_restore_interval": 10,
    "unacked_restore_throttle": 1,
    # Redis: kombu waits forever on a broker that stopped answering without closing the
    # connection (frozen, partitioned): a publish would hang its request until the thaw. With
    # these a publish fails after the timeout (the increment answers 503 "not counted"), and a
    # consumer's BRPOP that got no reply for brpop_timeout + health_check_interval is dropped.
    "socket_timeout": BROKER_SOCKET_TIMEOUT_S,
    "socket_connect_timeout": BROKER_SOCKET_TIMEOUT_S,
    "socket_keepalive": True,
    "health_check_interval": 10,
}
CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS = {"visibility_timeout": REDIS_BROKER_VISIBILITY_TIMEOUT}

CELERY_TASK_QUEUES = task_queues(max_deliveries=TASK_MAX_DELIVERIES)
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_DEFAULT_EXCHANGE = "tasks"
CELERY_TASK_DEFAULT_EXCHANGE_TYPE = "topic"
CELERY_TASK_DEFAULT_ROUTING_KEY = "default"
CELERY_TASK_ROUTES = task_routes()
CELERY_TASK_CREATE_MISSING_QUEUES = False

# Task events from workers (received, started, succeeded...), so Flower shows tasks in flight.
CELERY_WORKER_SEND_TASK_EVENTS = True
# No "task-sent" event from publishers: it is a second publish on every increment's hot path
# (13% of a web worker's time under load, py-spy; see docs/benchmarks.md), and the
# workers' events already show every task in flight.
CELERY_TASK_SEND_SENT_EVENT = False
# Celery's Django fixup closes every database connection before and after each task unless this is
# set: a new PostgreSQL connection (and its set-up transaction) for every batch of deltas, half
# the commits `make bench` counted. Now a connection serves this many tasks; one that raised a
# database error is dropped after its task (project/celery.py).
CELERY_DB_REUSE_MAX = env.int("CELERY_DB_REUSE_MAX", default=1000)

CELERY_BEAT_SCHEDULE = {
    "beat-heartbeat": {"task": "tasks.beat_heartbeat", "schedule": 30.0},
}

# --- Transactional outbox (tasks/outbox.py, tasks/relay.py) --------------------------------------
# Rows a relay claims and publishes in one pass (one transaction).
OUTBOX_BATCH_SIZE = env.int("OUTBOX_BATCH_SIZE", default=200)
# A relay looks for due rows at least this often; a commit's NOTIFY wakes it at once.
OUTBOX_POLL_INTERVAL_S = env.float("OUTBOX_POLL_INTERVAL_S", default=5.0)
# Wait for the broker's confirmation of one publish (twice: one retry on a new connection).
OUTBOX_PUBLISH_TIMEOUT_S = env.float("OUTBOX_PUBLISH_TIMEOUT_S", default=5.0)
# A failed publish is tried again after exponential backoff with jitter, capped here.
# The cap bounds how long after a broker outage ends the backlog starts to move.
OUTBOX_RETRY_MAX_S = env.float("OUTBOX_RETRY_MAX_S", default=10.0)
# Sent rows (and heartbeats of relays gone) are pruned by beat after this long.
OUTBOX_KEEP_SENT_S = env.int("OUTBOX_KEEP_SENT_S", default=24 * 3600)
CELERY_BEAT_SCHEDULE["tasks-prune-outbox"] = {"task": "tasks.prune_outbox", "schedule": 3600.0}
# With JSON logs, Celery keeps Django's handler (one format for every process).
CELERY_WORKER_HIJACK_ROOT_LOGGER = env("LOG_FORMAT", default="text") != "json"
# Sessions live in PostgreSQL (project/sessions.py): the expired ones are deleted once a day.
CELERY_BEAT_SCHEDULE["project-clear-sessions"] = {
    "task": "project.clear_sessions",
    "schedule": 24 * 3600.0,
}
# The operations page's chart of pending deltas, sampled while nobody has the page open too. No
# `expires`: on RabbitMQ it becomes a message TTL, and the quorum queue would dead-letter every
# sample a stopped worker did not take; a backlog of samples is skipped by the task instead.
CELERY_BEAT_SCHEDULE["project-sample-pending"] = {
    "task": "project.sample_pending",
    "schedule": 15.0,
}
