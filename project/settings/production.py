"""Production settings: secrets must come from the environment; HTTPS everywhere."""

from .base import *  # noqa: F403
from .base import LOGGING, env
from .counters import rate_limit_parse

# Never the development key, whatever DJANGO_DEVELOPMENT says. Without the variable the key is
# empty: the web refuses to start (project/wsgi.py); the processes that sign nothing run.
SECRET_KEY = env("DJANGO_SECRET_KEY", default="")
DEBUG = False
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS")

# HTTPS is what gunicorn says it is (wsgi.url_scheme): it believes the proxy's X-Forwarded-Proto
# only from the addresses in its forwarded_allow_ips (FORWARDED_ALLOW_IPS in docker-compose.yml).
# Django's SECURE_PROXY_SSL_HEADER would believe that header from any peer, so it is left unset.
SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=True)
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
SECURE_HSTS_SECONDS = env.int("DJANGO_SECURE_HSTS_SECONDS", default=60 * 60 * 24 * 365)
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = True
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

# The public counter beacon: 120 increments a minute per client and namespace unless set.
COUNTER_RATE_LIMIT = rate_limit_parse(
    env("COUNTER_RATE_LIMIT", default="120/60"), name="COUNTER_RATE_LIMIT"
)

# Per-batch and per-delta lines (counters and task delivery) at WARNING: retries, dead letters and
# failures still show; a line per batch at INFO would be most of the log.
for _logger in ("counters", "tasks"):
    LOGGING["loggers"][_logger] = {"level": env("LOG_LEVEL_DELIVERY", default="WARNING")}
