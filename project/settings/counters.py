"""Durable hot counters (counters/)."""

import ipaddress
import re

from django.core.exceptions import ImproperlyConfigured

from .celery import CELERY_BEAT_SCHEDULE, REDIS_BROKER_VISIBILITY_TIMEOUT
from .env import env

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
# Who may count what over HTTP (counters/access.py; docs/design.md, "Threat model"). Anyone may
# read these namespaces, and a key's name must name an existing object: the model's field, as
# "app_label.Model.field". Every other namespace is read by staff with the view permission on
# counters, or with a service token.
COUNTER_PUBLIC_READ = {
    "article_views": "counters.Article.slug",
    "article_likes": "counters.Article.slug",
}
# The anonymous beacon (POST /api/counters/<key>/incr with no token) adds +1 to these only (a
# subset of the above). Likes go through the like view (one per session); everything else through
# the Python API or a service token.
COUNTER_BEACON_NAMESPACES = frozenset({"article_views"})
# sha256 hex digests of the service tokens that may count any declared namespace by any amount up
# to COUNTER_MAX_AMOUNT and read every namespace (`manage.py counters service-token` makes one).
# Checked without PostgreSQL, so a service keeps counting while the database is down.
COUNTER_SERVICE_TOKENS = frozenset(
    digest.strip().lower() for digest in env.list("COUNTER_SERVICE_TOKENS", default=[])
)
if any(not re.fullmatch(r"[0-9a-f]{64}", digest) for digest in COUNTER_SERVICE_TOKENS):
    raise ImproperlyConfigured(
        "COUNTER_SERVICE_TOKENS holds sha256 hex digests of the tokens, not the tokens "
        "(manage.py counters service-token prints both)"
    )
# Largest |amount| of one increment: a bound that keeps a typo (or an attack) from moving a counter
# by billions, far above any real "likes +1" or "units sold +n".
COUNTER_MAX_AMOUNT = env.int("COUNTER_MAX_AMOUNT", default=1_000_000)


def rate_limit_parse(value: str, *, name: str) -> tuple[int, float] | None:
    """'N/S': bursts of N, then N per S seconds; '0' or 'off': no limit."""
    if value.strip().lower() in ("", "0", "off"):
        return None
    burst, _, seconds = value.partition("/")
    try:
        parsed = int(burst), float(seconds or 60)
    except ValueError:
        parsed = (0, 0.0)
    if parsed[0] < 1 or parsed[1] <= 0:
        raise ImproperlyConfigured(f"{name} must look like 120/60 (requests/seconds) or off")
    return parsed


# The public beacon's per-client limit (counters/ratelimit.py): for every namespace, and per
# namespace over it ("article_views=30/60,article_likes=off"). Off in development and tests;
# the production settings turn it on.
COUNTER_RATE_LIMIT = rate_limit_parse(
    env("COUNTER_RATE_LIMIT", default="off"), name="COUNTER_RATE_LIMIT"
)
COUNTER_RATE_LIMITS = {
    namespace: rate_limit_parse(spec, name=f"COUNTER_RATE_LIMITS[{namespace}]")
    for namespace, spec in env.dict("COUNTER_RATE_LIMITS", default={}).items()
}
# Behind a proxy: the header holding the client's address (e.g. X-Real-IP, or X-Forwarded-For:
# its last entry not itself a trusted proxy), believed only from a peer inside
# COUNTER_TRUSTED_PROXIES (CIDRs); from anyone else it is ignored, since a client can send any
# header. Unset: the connection's address.
COUNTER_CLIENT_IP_HEADER = env("COUNTER_CLIENT_IP_HEADER", default="")
COUNTER_TRUSTED_PROXIES = env.list("COUNTER_TRUSTED_PROXIES", default=[])
# Checked here, not only by a system check: gunicorn runs none, and a typo would make every
# beacon, like and sign-in fail instead of the process refusing to start.
for _cidr in COUNTER_TRUSTED_PROXIES:
    try:
        ipaddress.ip_network(_cidr.strip(), strict=False)
    except ValueError:
        raise ImproperlyConfigured(
            f"COUNTER_TRUSTED_PROXIES: {_cidr!r} is not an address or a network"
        ) from None
# The like view (/articles/<slug>/like): a client that drops its cookies likes again, and each
# like makes a session row, so it is limited per client address, in every environment.
COUNTER_LIKE_RATE_LIMIT = rate_limit_parse(
    env("COUNTER_LIKE_RATE_LIMIT", default="30/60"), name="COUNTER_LIKE_RATE_LIMIT"
)
# An article page counts one view per visitor (cookie) and article in this window (0: every view).
COUNTER_VIEW_WINDOW_S = env.int("COUNTER_VIEW_WINDOW_S", default=1800)
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
# A process's concurrent increments travel in envelopes, many deltas per message, confirmed
# together (tasks/envelopes.py). False: one message per delta (the baseline `make bench` compares).
COUNTER_ENVELOPES = env.bool("COUNTER_ENVELOPES", default=True)
# Experimental, off: the cache update of a whole envelope's increments in one pipeline from the
# envelope's thread, instead of one round trip per request. `make bench` measured no gain worth
# its known defect (docs/benchmarks.md, "One wait per request").
COUNTER_ENVELOPE_BUMP = env.bool("COUNTER_ENVELOPE_BUMP", default=False)
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
