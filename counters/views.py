"""Counter API (a beacon: no session, no CSRF token) and the article pages."""

import logging
import math

import redis.exceptions
from django.conf import settings
from django.http import Http404, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods, require_POST

from common.json_api import json_error, json_object_body
from tasks.policy import MAYBE_TRANSIENT, is_transient

from . import cache, ratelimit, readers, selectors, services
from .keys import InvalidCounter, key_validate

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
        # Before anything is counted: a refused request costs one Redis call, nothing else.
        wait = ratelimit.beacon_wait(namespace=namespace, client=ratelimit.client_of(request))
        if wait > 0:
            return _too_many(namespace, wait)
        increment = services.counter_incr(key=key, amount=amount)
    except InvalidCounter as exc:
        return json_error(400, str(exc))
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
        reading = services.counter_get(key=key)
    except InvalidCounter as exc:
        return json_error(400, str(exc))
    except MAYBE_TRANSIENT as exc:
        if not is_transient(exc):
            raise
        # Not in the cache, and PostgreSQL, which holds the value, is unreachable.
        logger.warning("counter %s: not cached and the database is unavailable", key)
        return json_error(503, "the counter is not cached and the database is unavailable")
    return JsonResponse(
        {"key": key, "value": reading.value, "durable": reading.durable, "pending": reading.pending}
    )


def article_list(request):
    articles = selectors.articles_list()
    keys = [k for a in articles for k in (a.views_key, a.likes_key)]
    readings = services.counter_get_many(keys=keys) if keys else {}  # one Redis round trip
    rows = [(a, readings[a.views_key].value, readings[a.likes_key].value) for a in articles]
    return render(request, "counters/article_list.html", {"rows": rows})


def _visitor_id(request) -> str:
    if not request.session.session_key:
        request.session.save()
    return request.session.session_key


def _first_view(request, slug: str) -> bool:
    """Whether this session's view of the article counts: one per COUNTER_VIEW_WINDOW_S (a
    reload is not a reader). A cache that does not answer counts it."""
    window = settings.COUNTER_VIEW_WINDOW_S
    if window <= 0:
        return True
    try:
        seen = f"seen:{slug}:{_visitor_id(request)}"
        return bool(cache.client().set(seen, 1, nx=True, ex=window))
    except redis.exceptions.RedisError:
        return True


@require_http_methods(["GET"])
def article_detail(request, slug: str):
    article = selectors.article_get(slug=slug)
    if article is None:
        raise Http404("no such article")
    counted = True
    try:
        if _first_view(request, article.slug):
            services.counter_incr(key=article.views_key)
    except services.CounterUnavailable:
        counted = False  # the page still renders; this view just was not counted
    try:
        readers.readers_touch(article_slug=slug, visitor_id=_visitor_id(request))
        active = readers.readers_count(article_slug=slug)
    except redis.exceptions.RedisError:
        active = None  # ephemeral: unavailable is fine
    readings = services.counter_get_many(keys=[article.views_key, article.likes_key])
    context = {
        "article": article,
        "views": readings[article.views_key],
        "likes": readings[article.likes_key],
        "keys": {"views": article.views_key, "likes": article.likes_key},
        "active": active,
        "counted": counted,
        "liked": slug in request.session.get("liked", []),
    }
    return render(request, "counters/article_detail.html", context)


def _wants_json(request) -> bool:
    return "application/json" in request.headers.get("Accept", "")


@require_POST
def article_like(request, slug: str):
    """Like or unlike, once per session. The page's script asks for JSON (no reload); the form
    without JavaScript gets a redirect back to the article."""
    article = selectors.article_get(slug=slug)
    if article is None:
        raise Http404("no such article")
    liked = set(request.session.get("liked", []))
    like = request.POST.get("action", "like") == "like"
    value = None
    if like != (slug in liked):  # else nothing to change: no double like
        try:
            value = services.counter_incr(key=article.likes_key, amount=1 if like else -1).value
        except services.CounterUnavailable as exc:
            if _wants_json(request):
                return json_error(503, "likes are unavailable right now: try again")
            raise Http404("likes are unavailable right now") from exc
        liked.add(slug) if like else liked.discard(slug)
        request.session["liked"] = sorted(liked)
    if not _wants_json(request):
        return redirect("article_detail", slug=slug)
    if value is None:
        value = services.counter_get(key=article.likes_key).value
    return JsonResponse({"liked": slug in liked, "likes": value})
