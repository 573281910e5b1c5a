"""The JSON API's error answer and request body, the same for every app: bad input is a 4xx with
``{"error": ...}``, never a traceback."""

import json

from django.http import JsonResponse


def json_error(status: int, message: str) -> JsonResponse:
    return JsonResponse({"error": message}, status=status)


def json_object_body(request, *, error: type[Exception]) -> dict:
    """The body as a JSON object (an empty body is ``{}``); ``error(message)`` is raised for
    anything else (the caller's input error, answered 400)."""
    if not request.body:
        return {}
    try:
        payload = json.loads(request.body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"body is not valid JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise error("body must be a JSON object")
    return payload
