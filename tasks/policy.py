"""The retry policy: which errors are transient, and how long to wait before the next attempt."""

import random
from collections.abc import Callable

import kombu.exceptions
import redis.exceptions
from django import db

# Errors that another attempt may cure: the database, a Redis or the broker was unreachable,
# timed out, or aborted the transaction (deadlock, serialization failure, statement timeout are
# OperationalError subclasses in psycopg). Everything else is permanent and dead-letters at once.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    db.OperationalError,
    db.InterfaceError,
    kombu.exceptions.OperationalError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    ConnectionError,
    TimeoutError,
)


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, TRANSIENT_ERRORS)


def backoff_delay(
    *, attempt: int, base: float, cap: float, rng: Callable[[], float] = random.random
) -> float:
    """Seconds to wait before retry number ``attempt + 1`` (``attempt`` counts from 0).

    Exponential with a cap and "equal jitter": uniform in ``[d/2, d]`` with
    ``d = min(cap, base * 2**attempt)``. Jitter spreads a burst of failures (a database restart
    fails every in-flight task at once) so the retries do not all land together; keeping the lower
    half fixed means each delay is at least as long as the previous one could have been, so below
    the cap the delays really grow.
    """
    ceiling = min(cap, base * 2**attempt)
    return ceiling / 2 + rng() * ceiling / 2
