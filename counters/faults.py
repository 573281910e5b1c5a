"""Fault injection points in the apply path, for the fault tests only.

``settings.COUNTER_FAULTS`` maps a point to counter keys; it is empty except in the test settings
(which read ``COUNTER_FAULTS`` from the environment), so production code paths never fire them.

* ``raise``: the apply of a batch holding the key raises (a poison delta that raises);
* ``kill_before_commit`` / ``kill_after_commit``: the worker process SIGKILLs itself inside the
  transaction, or after the commit and before the acknowledgement;
* ``transient``: the apply raises a database OperationalError while the cache key
  ``fault:transient`` exists (the test removes it to let the database "come back").
"""

import os
import signal

from django.conf import settings


class InjectedFault(Exception):
    pass


def fault_point(point: str, *, keys: set[str]) -> None:
    targets = settings.COUNTER_FAULTS.get(point)
    if not targets or not keys.intersection(targets):
        return
    if point == "raise":
        raise InjectedFault(f"injected fault for {sorted(keys.intersection(targets))}")
    if point == "transient":
        from django.db import OperationalError
        from django_redis import get_redis_connection

        if get_redis_connection("default").exists("fault:transient"):
            raise OperationalError("injected: the database is unreachable")
        return
    os.kill(os.getpid(), signal.SIGKILL)
