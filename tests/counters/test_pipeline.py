"""The write-behind pipeline end to end: real worker subprocesses, both brokers."""

import uuid

import pytest
from django.core.management import call_command

from counters import services
from counters.models import AppliedDelta, Counter
from tasks.models import DeadLetter

pytestmark = pytest.mark.django_db(transaction=True)


def drain(timeout: float = 90) -> None:
    call_command("counters", "drain", "--timeout", str(timeout))


def durable(key: str) -> int:
    row = Counter.objects.filter(key=key).first()
    return row.value if row else 0


def test_increments_reach_postgresql_exactly_once_and_cache_equals_database(worker):
    keys = [f"article_views:exact-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    expected = dict.fromkeys(keys, 0)
    for i in range(60):
        key = keys[i % 3]
        amount = 1 if i % 5 else 3
        value = services.counter_incr(key=key, amount=amount)
        expected[key] += amount
        assert value == expected[key]  # the caller sees its own increment at once
    drain()
    for key, total in expected.items():
        assert durable(key) == total
        reading = services.counter_get(key=key)
        assert (reading.value, reading.durable, reading.pending) == (total, total, 0)
    assert AppliedDelta.objects.count() == 60
    assert not DeadLetter.objects.exists()
