"""The retry policy: which errors are transient, and how long to wait before the next attempt."""

import random
from collections.abc import Callable

import kombu.exceptions
import redis.exceptions
from django import db

# Errors that another attempt may cure: the database, a Redis or the broker was unreachable,
# timed out, or aborted the transaction (deadlock, serialization failure, statement timeout are
# OperationalError subclasses in psycopg). Everything else is permanent and dead-letters at once,
# except the database errors whose SQLSTATE says the server, not the statement, is the problem
# (``is_transient`` below): catch ``MAYBE_TRANSIENT`` and ask ``is_transient``.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    db.OperationalError,
    db.InterfaceError,
    kombu.exceptions.OperationalError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    ConnectionError,
    TimeoutError,
)
MAYBE_TRANSIENT: tuple[type[BaseException], ...] = (*TRANSIENT_ERRORS, db.DatabaseError)

# SQLSTATE classes of conditions that pass: connection exception (08), transaction rollback
# (40: deadlock, serialization failure), insufficient resources (53: disk full, too many
# connections), operator intervention (57: shutdown, cannot connect now) and system error (58).
TRANSIENT_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "57", "58"})
# And single codes from other classes: a read-only transaction (25006: a standby during a
# failover, or default_transaction_read_only, which psycopg raises as an InternalError, not an
# OperationalError) and a lock not available (55P03: lock_timeout).
TRANSIENT_SQLSTATES = frozenset({"25006", "55P03"})


def sqlstate(exc: BaseException) -> str | None:
    """The PostgreSQL error code of ``exc`` or of the driver error Django wrapped in it."""
    for error in (exc, exc.__cause__):
        code = getattr(error, "sqlstate", None)
        if code:
            return str(code)
    return None


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, TRANSIENT_ERRORS):
        return True
    code = sqlstate(exc) or ""
    return code[:2] in TRANSIENT_SQLSTATE_CLASSES or code in TRANSIENT_SQLSTATES


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
