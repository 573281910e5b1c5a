"""Critical data (orders/): idempotency keys and the confirmation mail."""

from django.core.exceptions import ImproperlyConfigured

from .celery import CELERY_BEAT_SCHEDULE
from .env import BASE_DIR, env

# Stored Idempotency-Key answers are kept this long (at least 24 h), then pruned by beat.
IDEMPOTENCY_KEY_TTL_S = env.int("IDEMPOTENCY_KEY_TTL_S", default=48 * 3600)
CELERY_BEAT_SCHEDULE["orders-prune-idempotency-keys"] = {
    "task": "orders.prune_idempotency_keys",
    "schedule": 3600.0,
}
# Order confirmations: files under .local/mail in development; in production EMAIL_URL, e.g.
# smtp+tls://user:password@smtp.example.com:587 (django-environ: smtp; smtp+tls and smtps for
# STARTTLS; smtp+ssl for implicit TLS; consolemail, filemail, ...), which sets EMAIL_BACKEND,
# EMAIL_HOST, EMAIL_PORT, EMAIL_HOST_USER, EMAIL_HOST_PASSWORD, EMAIL_USE_TLS and EMAIL_USE_SSL.
EMAIL_BACKEND = env("EMAIL_BACKEND", default="django.core.mail.backends.filebased.EmailBackend")
EMAIL_FILE_PATH = env("EMAIL_FILE_PATH", default=str(BASE_DIR / ".local" / "mail"))
if env("EMAIL_URL", default=""):
    vars().update(env.email_url("EMAIL_URL"))
EMAIL_TIMEOUT = env.int("EMAIL_TIMEOUT", default=10)  # an SMTP server that hangs fails the send
DEFAULT_FROM_EMAIL = env("DEFAULT_FROM_EMAIL", default="shop@example.invalid")
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/shop/"
# Amounts are stored, and exchanged by the API, as integers in minor units (cents) of this
# currency; the pages show them as money with two decimals (orders/money.py).
SHOP_CURRENCY = env("SHOP_CURRENCY", default="EUR")
# API tokens made by `manage.py api_token` expire after this many days unless --expires-in says
# otherwise; never expiring takes an explicit --no-expiry (a forgotten token should not work for
# ever).
API_TOKEN_DEFAULT_EXPIRY_DAYS = env.int("API_TOKEN_DEFAULT_EXPIRY_DAYS", default=90)
if not 1 <= API_TOKEN_DEFAULT_EXPIRY_DAYS <= 3650:  # orders/tokens.py: MAX_EXPIRY_DAYS
    raise ImproperlyConfigured("API_TOKEN_DEFAULT_EXPIRY_DAYS must be from 1 to 3650")
