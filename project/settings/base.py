"""Settings shared by every environment: Django, PostgreSQL, the cache Redis, the site. Each
integration has its own module (celery.py: the broker and task delivery; counters.py; orders.py),
imported at the end. Every value a user may change comes from the environment through one ``env``
object (env.py) and is listed in docs/settings.md; what a user never needs to change is a constant
in the module that uses it."""

from datetime import timedelta

from django.core.exceptions import ImproperlyConfigured

from .env import BASE_DIR, env

DEBUG = env.bool("DJANGO_DEBUG", default=False)
# This key is public (it is written here): whoever knows it can forge what Django signs. So it is
# used only where a process says it is development (DJANGO_DEBUG, DJANGO_DEVELOPMENT, the test
# settings). Anywhere else, without DJANGO_SECRET_KEY the key stays empty: Django refuses whatever
# would be signed with it, and the web refuses to start (project/wsgi.py). Workers, beat, the
# relay and Flower sign nothing, so they run without the secret (docker-compose.yml).
DEVELOPMENT_SECRET_KEY = "insecure-development-key-change-me"  # noqa: S105  (public on purpose)
DEVELOPMENT = DEBUG or env.bool("DJANGO_DEVELOPMENT", default=False)
SECRET_KEY = env("DJANGO_SECRET_KEY", default=DEVELOPMENT_SECRET_KEY if DEVELOPMENT else "")
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "tasks",
    "counters",
    "orders",
    "axes",  # sign-in guesses are limited (below: AXES_*)
    # The site: its management commands (seed_demo) and system checks.
    "project.checks.ProjectConfig",
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
    # A sign-in whose attempt cannot be counted (PostgreSQL down) is a clear 503, not a 500.
    "project.signin.SigninUnavailableMiddleware",
    # Last, as axes asks: turns a locked-out sign-in into the lockout page.
    "axes.middleware.AxesMiddleware",
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
                "project.context_processors.site",
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
            # JSON, not django-redis's default pickle: whoever can write to the cache Redis could
            # otherwise run code in every web process that reads a planted value (a session copy).
            "SERIALIZER": "django_redis.serializers.json.JSONSerializer",
            "SOCKET_CONNECT_TIMEOUT": 2,
            "SOCKET_TIMEOUT": 2,
            # An idle pooled connection to a cache behind a dead network is found out by the
            # kernel's probes, not by the next request's 2 s timeout.
            "CONNECTION_POOL_KWARGS": {"socket_keepalive": True},
        },
    }
}
# Sessions are kept in PostgreSQL with a copy in the cache (project/sessions.py): staff can still
# sign in to the operations page while the cache Redis is down. Beat deletes expired ones.
SESSION_ENGINE = "project.sessions"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# --- Sign-in guesses are limited (django-axes; project/signin.py) --------------------------------
# Axes first: it refuses a locked-out sign-in before any backend checks the password, so a right
# password during the lockout is refused too (a guesser learns nothing from it).
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
# Failures within the cool-off that lock: the 5th wrong password is refused with the lockout page.
AXES_FAILURE_LIMIT = env.int("AXES_FAILURE_LIMIT", default=5)
# Each failure counts for this long after it; the lockout ends when too few remain.
AXES_COOLOFF_TIME = timedelta(minutes=env.int("AXES_COOLOFF_MINUTES", default=15))
# Two separate counters, either of which locks: per username (all addresses together: a botnet
# guessing one account gets AXES_FAILURE_LIMIT guesses per cool-off in all, not per address) and
# per client address (all usernames together: one address spraying passwords over many accounts
# is stopped after AXES_FAILURE_LIMIT in all). The combination (username AND address) alone would
# give every address its own guesses at every account. Anyone can lock one known account for a
# window, the price of a per-username count; what keeps that from locking every user out is
# AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT below: a locked address adds nothing to any
# username's count, so locking N accounts takes N addresses per cool-off, not N requests.
AXES_LOCKOUT_PARAMETERS = [["username"], ["ip_address"]]
# False: attempts refused during a lockout are not counted. Counted, they would let one locked
# address go on pushing every username it names over the limit, and would stretch the window
# for as long as the attacker keeps trying, so the page could not say when to come back.
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
# False: a successful sign-in does not erase failures. Axes resets everything matching the
# username OR the address, so an attacker with an account of their own could sign in to it
# between guesses at someone else's from the same address and never reach the limit.
AXES_RESET_ON_SUCCESS = False
# The client's address as the counters' rate limit reads it (COUNTER_CLIENT_IP_HEADER, believed
# only from COUNTER_TRUSTED_PROXIES): a forged X-Forwarded-For does not buy a fresh counter.
AXES_CLIENT_IP_CALLABLE = "project.signin.client_address"
# A page that says when to come back, with 429 and Retry-After.
AXES_LOCKOUT_CALLABLE = "project.signin.lockout_response"
# Successful sign-ins are not logged by axes: a table growing with every sign-in that nothing
# prunes. Failures (AccessAttempt) are what the admin shows and clears.
AXES_DISABLE_ACCESS_LOG = True
# No "AXES: BEGIN version ..." line at the start of every process (workers, manage.py, beat).
AXES_VERBOSE = False

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

# LOG_FORMAT: "text" lines, or "json" lines (project/logjson.py) for a log shipper; Celery
# workers then log through the same handler instead of their own format.
LOG_FORMAT = env("LOG_FORMAT", default="text")
if LOG_FORMAT not in ("text", "json"):
    raise ImproperlyConfigured("LOG_FORMAT must be text or json")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "text": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "project.logjson.JsonFormatter"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT}},
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", default="INFO")},
    "loggers": {
        # Axes' failures and lockouts are warnings; its INFO lines narrate each step of each one.
        "axes": {"level": "WARNING"},
    },
}

# --- Credentials for the demo admin user and Flower (generated by the launcher if unset) --------
DJANGO_ADMIN_USER = env("DJANGO_ADMIN_USER", default="admin")
DJANGO_ADMIN_PASSWORD = env("DJANGO_ADMIN_PASSWORD", default="")
FLOWER_URL = env("FLOWER_URL", default="http://127.0.0.1:5555/")
# `make bench` mounts its baseline views (naive UPDATE per request, the lossy Redis buffer, no
# counting); never in prod.
BENCH_VIEWS = env.bool("BENCH_VIEWS", default=False)
# Bearer token a Prometheus server sends to /metrics (staff sessions need none); unset: staff only.
METRICS_TOKEN = env("METRICS_TOKEN", default="")

# --- Integrations, each in its own module -------------------------------------------------------
from .celery import *  # noqa: E402, F403
from .counters import *  # noqa: E402, F403
from .orders import *  # noqa: E402, F403
