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
    # ValueError: also a number past Python's 4,300 digits; RecursionError: "[[[[..." nested deeper
    # than the parser goes. Both are the caller's bad input, not a 500.
    except (ValueError, RecursionError) as exc:
        raise error(f"body is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(payload, dict):
        raise error("body must be a JSON object")
    return payload
