"""A load of increments from several threads, recording what was acknowledged, and a reader that
checks G5 while it runs."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable

from django.db import connection

from counters import services
from counters.models import Counter


def durable(key: str) -> int:
    row = Counter.objects.filter(key=key).first()
    return row.value if row else 0


class Load:
    def __init__(self, keys: list[str], *, threads: int = 4, per_thread: int = 100,
                 pause: float = 0.002):  # fmt: skip
        self.keys = keys
        self.threads = threads
        self.per_thread = per_thread
        self.pause = pause
        self.acknowledged: dict[str, int] = defaultdict(int)
        self.failed = 0
        self.read_violations: list[str] = []
        self.reads = 0
        self._lock = threading.Lock()
        self._done = threading.Event()

    def _writer(self, index: int) -> None:
        try:
            for i in range(self.per_thread):
                key = self.keys[(index + i) % len(self.keys)]
                amount = 1 + (i % 3)
                try:
                    services.counter_incr(key=key, amount=amount)
                except services.CounterUnavailable:
                    with self._lock:
                        self.failed += 1
                    continue
                with self._lock:
                    self.acknowledged[key] += amount
                time.sleep(self.pause)
        finally:
            connection.close()

    def _reader(self) -> None:
        """G5 while the load runs: a read is never below the durable value read before it, and
        never above what was acknowledged or is in flight."""
        try:
            while not self._done.is_set():
                for key in self.keys:
                    floor = durable(key)
                    with self._lock:
                        ceiling = self.acknowledged[key] + 3 * self.threads  # in-flight calls
                    value = services.counter_get(key=key).value
                    self.reads += 1
                    if not floor <= value <= ceiling:
                        self.read_violations.append(f"{key}: {floor} <= {value} <= {ceiling}")
                time.sleep(0.01)
        finally:
            connection.close()

    def run(self, during: Callable[[], None] | None = None) -> dict[str, int]:
        writers = [threading.Thread(target=self._writer, args=(i,)) for i in range(self.threads)]
        reader = threading.Thread(target=self._reader)
        for thread in [*writers, reader]:
            thread.start()
        try:
            if during:
                during()
        finally:
            for thread in writers:
                thread.join(120)
            self._done.set()
            reader.join(30)
        return dict(self.acknowledged)
