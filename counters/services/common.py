"""What the counters' paths share: the data classes, the task and queue of deltas, and two
database helpers.
"""

from __future__ import annotations

import logging
import uuid

from django.db import connection

from tasks.topology import COUNTERS_QUEUE

logger = logging.getLogger(__name__)
__all__ = [
    "APPLY_TASK",
    "COUNTERS_QUEUE",
    "DURABLE",
    "EPHEMERAL",
    "close_connection",
    "valid_uuids",
]
DURABLE = "durable"
EPHEMERAL = "ephemeral"
APPLY_TASK = "counters.apply_deltas"


def close_connection() -> None:
    try:
        connection.close()
    except Exception:  # closing a broken connection can itself fail; it is gone either way
        logger.debug("closing the database connection failed", exc_info=True)


def valid_uuids(values: list[str]) -> list[uuid.UUID]:
    result = []
    for value in values:
        try:
            result.append(uuid.UUID(value))
        except ValueError:
            continue
    return result
