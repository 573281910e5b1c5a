"""Flower configuration (``celery flower --conf=project/flowerconfig.py``).

Flower shows task arguments and can revoke tasks and shut workers down, so it never runs open:
without ``FLOWER_BASIC_AUTH`` (``user:password``, comma-separated for several) it refuses to start.
"""

import os

_credentials = os.environ.get("FLOWER_BASIC_AUTH", "")
if ":" not in _credentials:
    raise SystemExit("FLOWER_BASIC_AUTH must be set to user:password; Flower never runs open.")

basic_auth = _credentials.split(",")
# Keep the broker's management API out of it: queue lengths are on the operations page.
inspect_timeout = 5000.0
