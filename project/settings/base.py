"""Settings shared by every environment. Every value a user may change comes from the environment
through one ``env`` object and is listed in the README."""

from pathlib import Path

import environ

from tasks.topology import task_queues, task_routes

BASE_DIR = Path(__file__).resolve().parent.parent.parent

env = environ.Env()

SECRET_KEY = env("DJANGO_SECRET_KEY", default="insecure-development-key-change-me")
DEBUG = env.bool("DJANGO_DEBUG", default=False)
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "tasks",
    "counters",
    "orders",
    "project",  # the site: its management commands (seed_demo)
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "project.urls"
WSGI_APPLICATION = "project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- PostgreSQL: the source of truth -------------------------------------------------------------
DATABASES = {
    "default": env.db_url("DATABASE_URL", default="postgres://postgres@127.0.0.1:5432/app")
}
DATABASES["default"]["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=60)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DATABASES["default"].setdefault("OPTIONS", {})
# A hung PostgreSQL must turn into an error, not a request or a worker stuck forever.
DATABASES["default"]["OPTIONS"]["connect_timeout"] = env.int("DATABASE_CONNECT_TIMEOUT", default=5)
DATABASES["default"]["OPTIONS"]["options"] = (
    f"-c statement_timeout={env.int('DATABASE_STATEMENT_TIMEOUT_MS', default=30000)}"
)
# statement_timeout is enforced by the server; a server behind a dead network (or a failover that
# moved its address) never answers, and only the client's TCP stack can tell: keepalive probes on
# an idle connection, and tcp_user_timeout (ms) for data sent and never acknowledged.
DATABASE_TCP_TIMEOUT_S = env.int("DATABASE_TCP_TIMEOUT_S", default=10)
DATABASES["default"]["OPTIONS"].update(
    keepalives=1,
    keepalives_idle=DATABASE_TCP_TIMEOUT_S,
    keepalives_interval=max(DATABASE_TCP_TIMEOUT_S // 3, 1),
    keepalives_count=3,
    tcp_user_timeout=DATABASE_TCP_TIMEOUT_S * 1000,
)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis cache: fast, may evict or restart empty at any moment --------------------------------
REDIS_URL = env("REDIS_URL", default="redis://127.0.0.1:6379/0")
CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": REDIS_URL,
        "OPTIONS": {
            "SOCKET_CONNECT_TIMEOUT": 2,
            "SOCKET_TIMEOUT": 2,
            # An idle pooled connection to a cache behind a dead network is found out by the
            # kernel's probes, not by the next request's 2 s timeout.
            "CONNECTION_POOL_KWARGS": {"socket_keepalive": True},
        },
    }
}
# Sessions are ephemeral data (design: class "ephemeral"): a flushed cache logs users out.
SESSION_ENGINE = "django.contrib.sessions.backends.cache"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = env("DJANGO_STATIC_ROOT", default=str(BASE_DIR / ".local" / "static"))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"line": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "line"}},
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", default="INFO")},
}

# --- Celery (read by project/celery.py with namespace="CELERY") ----------------------------------
CELERY_BROKER_URL = env("CELERY_BROKER_URL", default="redis://127.0.0.1:6380/0")
# JSON only: a pickle payload from the broker would be remote code execution.
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_EVENT_SERIALIZER = "json"
CELERY_RESULT_ACCEPT_CONTENT = ["json"]
CELERY_TASK_IGNORE_RESULT = True  # outcomes live in PostgreSQL, not in a result backend
CELERY_TIMEZONE = TIME_ZONE

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
# A failed publish is tried again after exponential backoff with jitter: base, doubling, capped.
# The cap bounds how long after a broker outage ends the backlog starts to move.
OUTBOX_RETRY_BASE_S = env.float("OUTBOX_RETRY_BASE_S", default=0.5)
OUTBOX_RETRY_MAX_S = env.float("OUTBOX_RETRY_MAX_S", default=10.0)
# Sent rows (and heartbeats of relays gone) are pruned by beat after this long.
OUTBOX_KEEP_SENT_S = env.int("OUTBOX_KEEP_SENT_S", default=24 * 3600)
# A relay that has not reported for this long is not alive (operations page, health check).
OUTBOX_RELAY_STALE_S = env.float("OUTBOX_RELAY_STALE_S", default=30.0)
CELERY_BEAT_SCHEDULE["tasks-prune-outbox"] = {"task": "tasks.prune_outbox", "schedule": 3600.0}

# --- Credentials for the demo admin user and Flower (generated by the launcher if unset) --------
DJANGO_ADMIN_USER = env("DJANGO_ADMIN_USER", default="admin")
DJANGO_ADMIN_PASSWORD = env("DJANGO_ADMIN_PASSWORD", default="")
FLOWER_URL = env("FLOWER_URL", default="http://127.0.0.1:5555/")
# `make bench` mounts its baseline views (naive UPDATE per request, no counting); never in prod.
BENCH_VIEWS = env.bool("BENCH_VIEWS", default=False)
# Bearer token a Prometheus server sends to /metrics (staff sessions need none); unset: staff only.
METRICS_TOKEN = env("METRICS_TOKEN", default="")

# --- Counters (counters/) ------------------------------------------------------------------------
# Every counter namespace and its data class, in one place (design: "declared in settings").
#   durable:   write-behind; never lost once an increment returned success.
#   ephemeral: Redis only; lossy by design (active readers).
COUNTER_NAMESPACES = {
    "article_views": "durable",
    "article_likes": "durable",
    "orders_placed": "durable",
    "product_units_sold": "durable",
    "active_readers": "ephemeral",
}
# Largest |amount| of one increment: a bound that keeps a typo (or an attack) from moving a counter
# by billions, far above any real "likes +1" or "units sold +n".
COUNTER_MAX_AMOUNT = env.int("COUNTER_MAX_AMOUNT", default=1_000_000)
# The apply worker flushes a batch at this many deltas or after this long, whichever comes first.
COUNTER_BATCH_SIZE = env.int("COUNTER_BATCH_SIZE", default=500)
COUNTER_BATCH_INTERVAL_MS = env.int("COUNTER_BATCH_INTERVAL_MS", default=200)
# Longest wait for the broker to take and confirm one delta before the increment answers 503
# (a RabbitMQ memory alarm blocks publishers instead of refusing them).
COUNTER_PUBLISH_TIMEOUT_S = env.float("COUNTER_PUBLISH_TIMEOUT_S", default=5.0)
# RabbitMQ: a process's concurrent increments share publisher confirms (one thread publishes them
# all and reads the broker's acks; tasks/publisher.py). False: each request publishes on a pooled
# connection and waits for its own confirm (the slower baseline `make bench` compares against).
COUNTER_GROUP_COMMIT = env.bool("COUNTER_GROUP_COMMIT", default=True)
# `counters reconcile` (scheduled every COUNTER_RECONCILE_INTERVAL_S) re-publishes a pending delta
# not applied after this long: the Redis broker can lose a message a worker was taking when it died.
# Longer than the visibility timeout, after which the broker itself hands unacknowledged ones back.
COUNTER_REPUBLISH_AFTER_S = env.float(
    "COUNTER_REPUBLISH_AFTER_S", default=2 * REDIS_BROKER_VISIBILITY_TIMEOUT
)
COUNTER_RECONCILE_INTERVAL_S = env.float("COUNTER_RECONCILE_INTERVAL_S", default=300.0)
# Applied delta ids are kept this long to recognise a redelivered delta; must outlast the longest
# redelivery window (the Redis broker's visibility timeout; a system check enforces it).
COUNTER_LEDGER_RETENTION_S = env.int("COUNTER_LEDGER_RETENTION_S", default=7 * 24 * 3600)
# After a cache miss refills a counter from PostgreSQL, reads of it also check PostgreSQL for this
# long (counters/cache.py explains the window it closes): longer than a batch's commit-to-cache
# gap, which is milliseconds.
COUNTER_FILL_GRACE_S = env.float("COUNTER_FILL_GRACE_S", default=5.0)
# RabbitMQ management API, used to count unacknowledged messages (drain, operations page).
RABBITMQ_MANAGEMENT_URL = env(
    "RABBITMQ_MANAGEMENT_URL", default="http://guest:guest@127.0.0.1:15672"
)
# Fault injection points of the apply path, for the fault tests only (see counters/faults.py).
COUNTER_FAULTS: dict[str, list[str]] = {}

CELERY_BEAT_SCHEDULE["counters-reconcile"] = {
    "task": "counters.reconcile",
    "schedule": COUNTER_RECONCILE_INTERVAL_S,
}
CELERY_BEAT_SCHEDULE["counters-prune-ledger"] = {
    "task": "counters.prune_ledger",
    "schedule": 3600.0,
}

# --- Orders (orders/) ----------------------------------------------------------------------------
# Stored Idempotency-Key answers are kept this long (at least 24 h), then pruned by beat.
IDEMPOTENCY_KEY_TTL_S = env.int("IDEMPOTENCY_KEY_TTL_S", default=48 * 3600)
CELERY_BEAT_SCHEDULE["orders-prune-idempotency-keys"] = {
    "task": "orders.prune_idempotency_keys",
    "schedule": 3600.0,
}
# Order confirmations: files under .local/mail in development; SMTP (EMAIL_URL) in production.
EMAIL_BACKEND = env("EMAIL_BACKEND", default="django.core.mail.backends.filebased.EmailBackend")
EMAIL_FILE_PATH = env("EMAIL_FILE_PATH", default=str(BASE_DIR / ".local" / "mail"))
DEFAULT_FROM_EMAIL = env("DEFAULT_FROM_EMAIL", default="shop@example.invalid")
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/shop/"
