from django.conf import settings
from django.core.checks import Error, register


@register()
def ledger_outlasts_redelivery(app_configs, **kwargs):
    """The ledger recognises a redelivered delta only while it keeps its id. The longest a delta
    can come back after being applied is the Redis broker's visibility timeout (a worker that
    committed and died before acknowledging; RabbitMQ redelivers at once when the connection
    drops). Pruning sooner would let such a delta be counted twice."""
    retention = settings.COUNTER_LEDGER_RETENTION_S
    window = settings.REDIS_BROKER_VISIBILITY_TIMEOUT
    if retention <= 2 * window:
        return [
            Error(
                f"COUNTER_LEDGER_RETENTION_S ({retention}s) must be more than twice "
                f"REDIS_BROKER_VISIBILITY_TIMEOUT ({window}s).",
                id="counters.E001",
            )
        ]
    return []
