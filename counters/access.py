"""Who may count and read what over HTTP (docs/design.md, "Threat model").

* **No token: the beacon.** ``+1`` on ``COUNTER_BEACON_NAMESPACES`` only, reads of
  ``COUNTER_PUBLIC_READ`` only, and the key's name must name an existing object. A page on any
  site can make its visitors' browsers send these requests, so nothing more is allowed without
  a token: no other namespace, no other amount, no key for an object that does not exist (it
  would fill the cache and the database with junk).
* **A service token** (``Authorization: Bearer``, its sha256 in ``COUNTER_SERVICE_TOKENS``): any
  declared namespace, any amount within ``COUNTER_MAX_AMOUNT``, every read; never rate-limited,
  like the Python API. Checked without PostgreSQL, so a service counts while it is down.
* **Staff** signed in with the ``counters.view_counter`` permission: reads of the namespaces that
  are not public too (of a public one, like anyone else: only keys of existing objects).

Whether an object exists is remembered per process for ``OBJECT_RECHECK_S``: a hot key costs no
PostgreSQL query (``make bench``, "ours"), a new key one indexed lookup after the rate limit.
"""

from __future__ import annotations

import hashlib
import hmac
import time

from django.apps import apps
from django.conf import settings
from django.db import DatabaseError


class Refused(Exception):
    """The caller may not do this (HTTP ``status``); nothing was counted."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# An object seen to exist is believed for this long (a deleted article's key stays countable
# that long); a miss is never remembered, so a new article counts at once.
OBJECT_RECHECK_S = 60.0
# Names remembered per process, at most: past it the memory starts again empty.
OBJECT_MEMORY_MAX = 10_000
_seen: dict[tuple[str, str], float] = {}


def service_caller(request) -> bool:
    """Whether the request carries a valid service token; Refused (401) for a wrong one."""
    scheme, _, secret = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":  # the scheme is case-insensitive (RFC 7235)
        # Not a token (none, or a proxy's Basic auth a browser sends with every request): the
        # request is anonymous, so a site behind basic auth keeps its public beacon and reads.
        return False
    if not secret.strip():
        raise Refused(401, "the Bearer token is empty")
    digest = hashlib.sha256(secret.strip().encode()).hexdigest()
    # Every known digest is compared, in constant time each: no timing tells a near miss.
    matches = [hmac.compare_digest(digest, known) for known in settings.COUNTER_SERVICE_TOKENS]
    if not any(matches):
        raise Refused(401, "invalid service token")
    return True


def beacon_check(*, namespace: str, amount: int) -> None:
    """What the anonymous beacon may count: Refused (403) for anything but +1 on its namespaces."""
    if namespace not in settings.COUNTER_BEACON_NAMESPACES:
        public = ", ".join(sorted(settings.COUNTER_BEACON_NAMESPACES)) or "none"
        raise Refused(
            403,
            f"{namespace} is not counted through the public beacon (public: {public}); "
            "use a service token",
        )
    if amount != 1:
        raise Refused(403, "the public beacon adds 1 only; use a service token for other amounts")


def read_check(*, request, namespace: str) -> None:
    """Refused unless the namespace is public (its key must then name an object: object_check)
    or the reader is staff with the view permission on counters."""
    if namespace in settings.COUNTER_PUBLIC_READ:
        return
    user = request.user
    if not user.is_authenticated:
        raise Refused(401, f"{namespace} is not public: sign in as staff or send a service token")
    if not (user.is_staff and user.has_perm("counters.view_counter")):
        raise Refused(403, f"reading {namespace} needs staff with counters.view_counter")


def object_check(*, namespace: str, name: str) -> None:
    """Refused (404) unless ``name`` names an existing object of the namespace's model; 503
    when PostgreSQL cannot say and the object was not seen before."""
    target = settings.COUNTER_PUBLIC_READ.get(namespace)
    if target is None:  # a beacon namespace with no object declared: any name
        return
    now = time.monotonic()
    seen = _seen.get((namespace, name))
    if seen is not None and now - seen < OBJECT_RECHECK_S:
        return
    label, field = target.rsplit(".", 1)
    model = apps.get_model(label)
    try:
        exists = model._default_manager.filter(**{field: name}).exists()
    except DatabaseError:
        if seen is not None:  # seen before the database went away: still counted
            return
        raise Refused(
            503, f"cannot check that {name!r} exists: the database is unavailable"
        ) from None
    if not exists:
        _seen.pop((namespace, name), None)
        raise Refused(404, f"no {model._meta.verbose_name} {name!r}")
    if len(_seen) >= OBJECT_MEMORY_MAX:
        _seen.clear()
    _seen[(namespace, name)] = now
