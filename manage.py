#!/usr/bin/env python
import os
import sys


def unreachable(exc: BaseException) -> str | None:
    """One line for a server that does not answer (nothing running), else None."""
    import django.db.utils
    import kombu.exceptions
    import redis.exceptions

    kinds = {
        django.db.utils.OperationalError: "PostgreSQL (DATABASE_URL)",
        redis.exceptions.ConnectionError: "Redis (REDIS_URL)",
        kombu.exceptions.OperationalError: "the broker (CELERY_BROKER_URL)",
    }
    for kind, what in kinds.items():
        if isinstance(exc, kind):
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return (
                f"manage.py: cannot reach {what}: {first}. Is `make run` running? "
                "(or set the URL variables: README, Two commands)"
            )
    return None


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings.base")
    from django.core.management import execute_from_command_line

    try:
        execute_from_command_line(sys.argv)
    except Exception as exc:
        message = unreachable(exc)
        if message is None:
            raise
        sys.stderr.write(message + "\n")
        sys.exit(1)


if __name__ == "__main__":
    main()
