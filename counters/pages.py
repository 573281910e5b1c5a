"""The article pages: the list, an article (its view counted, its readers now, its counts stored
and on the way) and like/unlike.

Readers are told apart by a random ``visitor`` cookie, not by a session: reading an article
writes nothing to PostgreSQL (it reads the article there). A like is remembered in the session
(PostgreSQL), written before the like is counted, so a failure leaves nothing counted twice."""

import contextlib
import logging
import math
import secrets
from collections.abc import Iterator

import redis.exceptions
from django.conf import settings
from django.contrib.sessions.backends.base import UpdateError
from django.db import DatabaseError
from django.http import Http404, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from common.json_api import json_error

from . import cache, ratelimit, readers, selectors, services

logger = logging.getLogger(__name__)

VISITOR_COOKIE = "visitor"
VISITOR_COOKIE_AGE_S = 365 * 24 * 3600


def article_list(request):
    articles = selectors.articles_list()
    keys = [k for a in articles for k in (a.views_key, a.likes_key)]
    readings = services.counter_get_many(keys=keys) if keys else {}  # one Redis round trip
    rows = [(a, readings[a.views_key].value, readings[a.likes_key].value) for a in articles]
    return render(request, "counters/article_list.html", {"rows": rows})


def _visitor_id(request) -> tuple[str, bool]:
    """The reader's id from their cookie, or a new one (and whether it is new). Only views and
    "reading now" use it: forging one buys no more than clearing cookies does."""
    visitor = request.COOKIES.get(VISITOR_COOKIE, "")
    if 16 <= len(visitor) <= 64 and visitor.isalnum():
        return visitor, False
    return secrets.token_hex(16), True


def _first_view(visitor: str, slug: str) -> bool:
    """Whether this reader's view of the article counts: one per COUNTER_VIEW_WINDOW_S (a reload
    is not a reader). A cache that does not answer counts it."""
    window = settings.COUNTER_VIEW_WINDOW_S
    if window <= 0:
        return True
    try:
        return bool(cache.client().set(f"seen:{slug}:{visitor}", 1, nx=True, ex=window))
    except redis.exceptions.RedisError:
        return True


def _liked(request) -> set[str]:
    return set(request.session.get("liked", []))


def _shown_as_liked(request, slug: str) -> bool:
    try:
        return slug in _liked(request)
    except DatabaseError:  # the session cannot be read: the page still renders
        return False


@require_http_methods(["GET"])
def article_detail(request, slug: str):
    article = selectors.article_get(slug=slug)
    if article is None:
        raise Http404("no such article")
    visitor, new_visitor = _visitor_id(request)
    counted = True
    # The page counts a view as the beacon does, under the same per-client limit: a client that
    # drops its cookie is a new reader with every request. Past the limit the page still renders.
    wait = ratelimit.beacon_wait(namespace="article_views", client=ratelimit.client_of(request))
    try:
        if wait > 0:
            counted = False
        elif _first_view(visitor, article.slug):
            services.counter_incr(key=article.views_key)
    except services.CounterUnavailable:
        counted = False  # the page still renders; this view just was not counted
    try:
        readers.readers_touch(article_slug=slug, visitor_id=visitor)
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
        "liked": _shown_as_liked(request, slug),
    }
    response = render(request, "counters/article_detail.html", context)
    if new_visitor:
        response.set_cookie(
            VISITOR_COOKIE,
            visitor,
            max_age=VISITOR_COOKIE_AGE_S,
            httponly=True,
            samesite="Lax",
            secure=request.is_secure(),
        )
    return response


def _session_save(request, *, liked: list[str]) -> None:
    """Save now, while the lock is held. An existing session is then left unmodified, so the
    middleware does not save it again after the lock is released (over a change another request
    made meanwhile); a new one stays modified, for the middleware to send its cookie (no other
    request can know it yet)."""
    existed = request.session.session_key is not None
    request.session["liked"] = liked
    request.session.save()
    if existed:
        request.session.modified = False


def _wants_json(request) -> bool:
    return "application/json" in request.headers.get("Accept", "")


def _like_failed(request, slug: str, message: str):
    if _wants_json(request):
        return json_error(503, message)
    raise Http404(message)


def _too_many_likes(request, wait: float):
    retry_after = max(1, math.ceil(wait))
    message = f"too many likes from your address: try again in {retry_after} s"
    if _wants_json(request):
        response = json_error(429, message)
    else:
        response = HttpResponse(message, status=429, content_type="text/plain; charset=utf-8")
    response["Retry-After"] = str(retry_after)
    return response


# A browser's like requests run one at a time: seconds the lock may be held, above the longest
# a like can take (a publish that is never confirmed gives up after about 11 s).
LIKE_LOCK_S = 30


@contextlib.contextmanager
def _one_like_at_a_time(request) -> Iterator[bool]:
    """Two like requests of one browser at once (a double click on the form without JavaScript,
    two tabs) would both read "not liked" and both count. A lock in the cache Redis serializes
    them (redis-py's Lock: a token, released only by its holder); the second one, refused,
    changes nothing. It is keyed by the visitor cookie, which a browser has before its first
    like creates the session, else by the session's key (reading the key does not load the
    session). Without the cache there is no lock: a rare double like then, rather than no likes."""
    visitor, new_visitor = _visitor_id(request)
    owner = visitor if not new_visitor else request.session.session_key
    if not owner:  # no cookie at all: nothing else can be using this session
        yield True
        return
    lock = cache.client().lock(f"lock:like:{owner}", timeout=LIKE_LOCK_S, blocking=False)
    try:
        held = lock.acquire()
    except redis.exceptions.RedisError:
        yield True
        return
    try:
        yield held
    finally:
        if held:
            with contextlib.suppress(redis.exceptions.RedisError):  # LockError: expired
                lock.release()


@require_POST
def article_like(request, slug: str):
    """Like or unlike, once per session. The page's script asks for JSON (no reload); the form
    without JavaScript gets a redirect back to the article."""
    # First, before the article is read or a session made: a client that drops its cookies
    # likes again with every POST, and every like makes a session row.
    wait = ratelimit.like_wait(client=ratelimit.client_of(request))
    if wait > 0:
        return _too_many_likes(request, wait)
    article = selectors.article_get(slug=slug)
    if article is None:
        raise Http404("no such article")
    like = request.POST.get("action", "like") == "like"
    with _one_like_at_a_time(request) as alone:
        if not alone:
            if _wants_json(request):
                return json_error(409, "a like of this session is in progress: try again")
            return redirect("article_detail", slug=slug)
        return _like_change(request, article=article, like=like)


def _like_change(request, *, article, like: bool):
    """The session records the change first (saved in PostgreSQL), then the like is counted: a
    session that cannot be saved counts nothing, and a count that fails puts the session back.
    A count whose outcome is unknown (the broker did not confirm) stays recorded, so that the
    like is not counted twice by a retry."""
    slug = article.slug
    try:
        liked = _liked(request)
    except DatabaseError:
        return _like_failed(request, slug, "likes are unavailable right now: try again later")
    value = None
    if like != (slug in liked):  # else nothing to change: no double like
        before = sorted(liked)
        liked.add(slug) if like else liked.discard(slug)
        try:
            _session_save(request, liked=sorted(liked))
        except (DatabaseError, UpdateError):
            return _like_failed(request, slug, "likes are unavailable right now: try again later")
        try:
            value = services.counter_incr(key=article.likes_key, amount=1 if like else -1).value
        except services.CounterUnavailable as exc:
            if exc.counted is False:  # not counted: the session says so again, under the lock
                with contextlib.suppress(DatabaseError, UpdateError):
                    _session_save(request, liked=before)
            return _like_failed(request, slug, "likes are unavailable right now: try again")
    if not _wants_json(request):
        return redirect("article_detail", slug=slug)
    if value is None:
        try:
            value = services.counter_get(key=article.likes_key).value
        except (DatabaseError, redis.exceptions.RedisError):
            value = None  # the script keeps the count it shows
    return JsonResponse({"liked": slug in liked, "likes": value})
