from django.apps import apps
from django.conf import settings
from django.core.checks import Error, Warning, register
from django.core.exceptions import FieldDoesNotExist


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


@register()
def public_counters_declared(app_configs, **kwargs):
    """The public surface names only declared namespaces and real models (trusted proxies and
    service tokens are checked where the settings are read: project/settings/counters.py)."""
    errors = []
    declared = settings.COUNTER_NAMESPACES
    for namespace in set(settings.COUNTER_PUBLIC_READ) | set(settings.COUNTER_BEACON_NAMESPACES):
        if namespace not in declared:
            errors.append(
                Error(
                    f"public counter namespace {namespace!r} is not declared in "
                    "COUNTER_NAMESPACES.",
                    id="counters.E002",
                )
            )
    for namespace, target in settings.COUNTER_PUBLIC_READ.items():
        label, _, field = target.rpartition(".")
        try:
            apps.get_model(label)._meta.get_field(field)
        except (LookupError, ValueError, FieldDoesNotExist):
            errors.append(
                Error(
                    f"COUNTER_PUBLIC_READ[{namespace!r}]: {target!r} is not app_label.Model.field",
                    id="counters.E003",
                )
            )
    if settings.COUNTER_CLIENT_IP_HEADER and not settings.COUNTER_TRUSTED_PROXIES:
        errors.append(
            Warning(
                "COUNTER_CLIENT_IP_HEADER is set but COUNTER_TRUSTED_PROXIES is "
                "empty: the header is ignored and every client behind the proxy "
                "shares one rate limit",
                id="counters.W001",
            )
        )
    return errors
