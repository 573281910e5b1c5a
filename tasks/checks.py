from django.conf import settings
from django.core.checks import Error, register


@register()
def visibility_timeout_outlasts_retries(app_configs, **kwargs):
    """On the Redis broker a retry waits unacknowledged in the worker until its countdown ends; if
    the visibility timeout ran out first, the broker would hand the same message to a second worker
    and the task would run twice."""
    timeout = settings.REDIS_BROKER_VISIBILITY_TIMEOUT
    longest_countdown = settings.TASK_RETRY_BACKOFF_MAX
    if timeout <= longest_countdown * 2:
        return [
            Error(
                f"REDIS_BROKER_VISIBILITY_TIMEOUT ({timeout}s) must be more than twice "
                f"TASK_RETRY_BACKOFF_MAX ({longest_countdown}s).",
                id="tasks.E001",
            )
        ]
    return []
