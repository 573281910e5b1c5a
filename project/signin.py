"""Sign-in guesses are limited (the site's login and the admin's): django-axes counts failed
sign-ins in PostgreSQL (``AccessAttempt`` rows, shown and cleared in the admin) and refuses a
username, or a client address, after ``AXES_FAILURE_LIMIT`` failures within ``AXES_COOLOFF_TIME``.
The settings and why each is what it is are in project/settings/base.py; this module is what the
settings point at: the client's address, the lockout page, and the page shown when the database
cannot count attempts."""

from __future__ import annotations

import ipaddress
import logging
import math
from datetime import datetime

from axes.handlers.proxy import AxesProxyHandler
from axes.helpers import get_cool_off, get_failure_limit
from django.db import DatabaseError
from django.shortcuts import render
from django.utils import timezone

from counters.ratelimit import client_of

logger = logging.getLogger(__name__)

# Seconds a client is told to wait when sign-in cannot be counted (Retry-After).
UNAVAILABLE_RETRY_S = 60
SIGNIN_VIEWS = ("login", "admin:login")


def client_address(request) -> str | None:
    """The address the counters' rate limit uses (a proxy header believed only from
    COUNTER_TRUSTED_PROXIES), so a client cannot escape its lockout by writing a fresh
    X-Forwarded-For. Axes stores it in an inet column: a peer without an IP address (only
    ``client_of``'s "unknown") is None, one shared bucket rather than a database error."""
    client = client_of(request)
    try:
        ipaddress.ip_address(client)
    except ValueError:
        return None
    return client


def lockout_ends(request, credentials: dict | None) -> datetime:
    """When the refused request may sign in again: each failure counts for the cool-off after
    it, so the lockout ends once enough of the oldest have aged out to fall under the limit, for
    the username and for the address alike (the later of the two)."""
    cool_off = get_cool_off(request)
    limit = get_failure_limit(request, credentials)
    ends = timezone.now()
    handler = AxesProxyHandler.get_implementation()
    for attempts in handler.get_user_attempts(request, credentials):
        rows = list(
            attempts.order_by("attempt_time").values_list("attempt_time", "failures_since_start")
        )
        total = sum(failures for _, failures in rows)
        for attempt_time, failures in rows:
            if total < limit:
                break
            total -= failures
            ends = max(ends, attempt_time + cool_off)
    return ends


def lockout_response(request, original_response=None, credentials: dict | None = None):
    """AXES_LOCKOUT_CALLABLE: a page saying that nothing was signed in and when to try again,
    with 429 and Retry-After. Not the login form: a form invites the next guess."""
    try:
        ends = lockout_ends(request, credentials)
    except DatabaseError:  # the attempts cannot be read now: the whole window from now
        ends = timezone.now() + get_cool_off(request)
    wait_s = max(math.ceil((ends - timezone.now()).total_seconds()), 1)
    response = render(
        request,
        "registration/locked_out.html",
        {"ends": ends, "wait_minutes": math.ceil(wait_s / 60)},
        status=429,
    )
    response["Retry-After"] = str(wait_s)
    return response


class SigninUnavailableMiddleware:
    """A sign-in whose attempt cannot be counted (PostgreSQL down, or refusing writes after a
    failover) is refused with a page saying so and 503, not Django's bare 500: refused, since an
    uncounted guess would be an unlimited one, and a right password could not keep its session
    (also in PostgreSQL) anyway."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        match = request.resolver_match
        if not isinstance(exception, DatabaseError) or match is None:
            return None
        if request.method != "POST" or match.view_name not in SIGNIN_VIEWS:
            return None
        logger.warning("sign-in refused: attempts cannot be counted: %r", exception)
        response = render(request, "registration/signin_unavailable.html", status=503)
        response["Retry-After"] = str(UNAVAILABLE_RETRY_S)
        return response
