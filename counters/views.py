"""Counter API: a public beacon (no session, no CSRF token: +1 on public namespaces only) and a
service API behind a token (access.py says who may do what). The article pages: pages.py."""

import logging
import math

from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt

from common.json_api import json_error, json_object_body
from tasks.policy import MAYBE_TRANSIENT, is_transient

from . import access, ratelimit, services
from .keys import InvalidCounter, amount_validate, key_validate

logger = logging.getLogger(__name__)


def _amount_from_body(request) -> int:
    payload = json_object_body(request, error=InvalidCounter)
    unexpected = set(payload) - {"amount"}
    if unexpected:
        raise InvalidCounter(f"unexpected fields: {sorted(unexpected)}")
    return payload.get("amount", 1)


def _too_many(namespace: str, wait: float):
    retry_after = max(1, math.ceil(wait))
    response = json_error(
        429, f"too many increments of {namespace} from this client: retry in {retry_after} s"
    )
    response["Retry-After"] = str(retry_after)
    return response


@csrf_exempt
def counter_incr_view(request, key: str):
    if request.method != "POST":
        return json_error(405, "use POST")
    try:
        amount = _amount_from_body(request)
        namespace, _ = key_validate(key=key)
        if access.service_caller(request):
            increment = services.counter_incr(key=key, amount=amount)
        else:
            access.beacon_check(namespace=namespace, amount=amount_validate(amount=amount))
            # Before the object lookup and the publish: a refused request costs one Redis call.
            wait = ratelimit.beacon_wait(namespace=namespace, client=ratelimit.client_of(request))
            if wait > 0:
                return _too_many(namespace, wait)
            access.object_check(namespace=namespace, name=key.partition(":")[2])
            increment = services.counter_incr(key=key, amount=1)
    except InvalidCounter as exc:
        return json_error(400, str(exc))
    except access.Refused as exc:
        return json_error(exc.status, str(exc))
    except services.CounterUnavailable as exc:
        if exc.counted is None:
            message = "the queue did not confirm the increment: it may or may not be counted"
        else:
            message = "the increment was not counted: the queue is unavailable, try again"
        return JsonResponse(
            {"error": message, "delta_id": exc.delta_id, "counted": exc.counted}, status=503
        )
    return JsonResponse({"key": key, "value": increment.value, "delta_id": increment.delta_id})


@csrf_exempt  # a wrong-method POST gets the API's JSON 405, not the HTML CSRF page
def counter_get_view(request, key: str):
    if request.method != "GET":
        return json_error(405, "use GET")
    try:
        namespace, _ = key_validate(key=key)
        if not access.service_caller(request):
            access.read_check(request=request, namespace=namespace)
            access.object_check(namespace=namespace, name=key.partition(":")[2])
        reading = services.counter_get(key=key)
    except InvalidCounter as exc:
        return json_error(400, str(exc))
    except access.Refused as exc:
        return json_error(exc.status, str(exc))
    except MAYBE_TRANSIENT as exc:
        if not is_transient(exc):
            raise
        # Not in the cache, and PostgreSQL, which holds the value, is unreachable.
        logger.warning("counter %s: not cached and the database is unavailable", key)
        return json_error(503, "the counter is not cached and the database is unavailable")
    return JsonResponse(
        {"key": key, "value": reading.value, "durable": reading.durable, "pending": reading.pending}
    )
