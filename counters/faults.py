"""Fault injection points, for the fault tests only.

``settings.COUNTER_FAULTS`` maps a point to counter keys; it is empty except in the test settings
(which read ``COUNTER_FAULTS`` from the environment), so production code paths never fire them.

* ``raise``: the apply of a batch holding the key raises (a poison delta that raises);
* ``kill_before_commit`` / ``kill_after_commit``: the worker process SIGKILLs itself inside the
  transaction, or after the commit and before the acknowledgement;
* ``transient``: the apply raises a database OperationalError while the cache key
  ``fault:transient`` exists (the test removes it to let the database "come back");
* ``kill_after_publish``: the web process SIGKILLs itself after the broker confirmed the delta and
  before its Redis update;
* ``publish_twice``: the delta is published an extra time (a duplicate in the broker), a second
  later;
* ``before_bump``: runs the callable a test registered in ``HOOKS`` between an increment's
  publish and its Redis update.

A point fires every time, unless the cache Redis holds a budget ``fault:budget:<point>``: then it
fires while the budget lasts (the fault suite kills a worker a few times, not on every batch).
"""

import os
import signal
from collections.abc import Callable

from django.conf import settings
from django.db import OperationalError
from django_redis import get_redis_connection


class InjectedFault(Exception):
    pass


def _within_budget(point: str) -> bool:
    client = get_redis_connection("default")
    budget_key = f"fault:budget:{point}"
    if not client.exists(budget_key):
        return True
    return client.decr(budget_key) >= 0


# In-process tests register a callable for a point: it runs there, deterministically (e.g. the
# cache evicted and refilled between an increment's publish and its bump).
HOOKS: dict[str, Callable[..., object]] = {}


def fault_point(
    point: str, *, keys: set[str], publish: Callable[[], object] | None = None, **context
) -> None:
    targets = settings.COUNTER_FAULTS.get(point)
    if not targets or not keys.intersection(targets):
        return
    if point in HOOKS:
        HOOKS[point](keys=keys, **context)
        return
    if point == "transient":
        if get_redis_connection("default").exists("fault:transient"):
            raise OperationalError("injected: the database is unreachable")
        return
    if not _within_budget(point):
        return
    if point == "raise":
        raise InjectedFault(f"injected fault for {sorted(keys.intersection(targets))}")
    if point == "publish_twice":
        if publish is not None:
            publish()
        return
    os.kill(os.getpid(), signal.SIGKILL)
