"""The site's app and its deployment checks (``manage.py check --deploy``)."""

from urllib.parse import parse_qs, urlsplit

from django.apps import AppConfig
from django.conf import settings
from django.core.checks import Tags, Warning, register


class ProjectConfig(AppConfig):
    name = "project"
    verbose_name = "Site"

    def ready(self) -> None:
        register(redis_requires_a_password, Tags.security, deploy=True)


def _has_password(url: str) -> bool:
    parts = urlsplit(url)
    return bool(parts.password or parse_qs(parts.query).get("password"))


def redis_requires_a_password(app_configs, **kwargs):
    """Whoever can write to the cache Redis can change session copies, counts and cached orders,
    and to a Redis broker can send any task: in production each asks for a password (or an ACL
    user), which the URL must carry."""
    found = []
    options = settings.CACHES["default"].get("OPTIONS", {})
    if not (_has_password(settings.REDIS_URL) or options.get("PASSWORD")):
        found.append(
            Warning(
                "REDIS_URL has no password: anyone who reaches the cache Redis can rewrite "
                "sessions and counts.",
                hint="Start the cache Redis with --requirepass (docker-compose.yml does) and put "
                "the password in REDIS_URL: redis://:PASSWORD@host:6379/0.",
                id="project.W001",
            )
        )
    brokers = [url for url in settings.CELERY_BROKER_URL.split(";") if url.strip()]
    if any(url.strip().startswith("redis") and not _has_password(url) for url in brokers):
        found.append(
            Warning(
                "CELERY_BROKER_URL names a Redis without a password: anyone who reaches it can "
                "send tasks.",
                hint="Give the broker Redis a password (requirepass) and put it in the URL.",
                id="project.W002",
            )
        )
    return found
