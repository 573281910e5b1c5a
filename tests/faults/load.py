"""The load process of a fault scenario: ``python -m tests.faults.load CONFIG``.

Sends increments over HTTP and through the Python API, places orders over HTTP, and reads the
counters, until the stop file appears. Every operation is logged as one JSON line with its
outcome, as a Jepsen client would: ``ok`` (success), ``failed`` (a clear error: nothing happened)
or ``unknown`` (timeout, connection lost, a server error: it may or may not have happened).
A read is logged when it breaks G5 (below the durable value read just before it, or above every
amount sent so far). Orders whose outcome is unknown are retried with the same Idempotency-Key
at the end, until each has a definite answer.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import django

# Above the longest wait for a 503 (two attempts, each a 3 s confirm timeout and a 3 s socket
# timeout here), so the answer comes before the client gives up.
HTTP_TIMEOUT_S = 20.0


def http_json(method: str, url: str, body: dict | None = None, *, headers: dict | None = None,
              timeout: float) -> tuple[int, dict]:  # fmt: skip
    """One JSON request: (status, decoded body); status 0 and ``{"exception": ...}`` when no
    answer came (timeout, connection lost)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data=data, method=method,
        headers={"Content-Type": "application/json", **(headers or {})},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"{}")
        except ValueError:
            return exc.code, {}
    except (OSError, ValueError, http.client.HTTPException) as exc:
        return 0, {"exception": repr(exc)}


class Load:
    def __init__(self, config: dict):
        self.config = config
        self.base = config["web"]
        self.keys: list[str] = config["keys"]
        self.stop_file = Path(config["stop_file"])
        self.log = open(config["log"], "a", buffering=1)
        self.lock = threading.Lock()
        self.sent: dict[str, int] = {k: 0 for k in self.keys}  # amounts sent so far (ceiling)
        self.reads = 0

    def record(self, **entry) -> None:
        entry["t"] = time.time()
        with self.lock:
            self.log.write(json.dumps(entry) + "\n")

    def running(self) -> bool:
        return not self.stop_file.exists()

    def http(self, method: str, path: str, body: dict | None = None,
             headers: dict | None = None) -> tuple[int, dict]:  # fmt: skip
        return http_json(method, self.base + path, body, headers=headers, timeout=HTTP_TIMEOUT_S)

    # --- increments -------------------------------------------------------------------------
    def _pick(self, rng: random.Random) -> tuple[str, int]:
        key = rng.choice(self.keys)
        amount = rng.randint(1, 3)
        with self.lock:
            self.sent[key] += amount
        return key, amount

    def http_increments(self, seed: int) -> None:
        rng = random.Random(seed)
        while self.running():
            key, amount = self._pick(rng)
            status, body = self.http("POST", f"/api/counters/{key}/incr", {"amount": amount})
            if status == 200:
                outcome = "ok"
            elif status == 503 and body.get("counted") is False:
                outcome = "failed"
            else:  # no answer, a 5xx without a verdict, or "may or may not be counted"
                outcome = "unknown"
            self.record(op="incr", via="http", key=key, amount=amount, outcome=outcome,
                        delta_id=body.get("delta_id"), status=status,
                        detail=body.get("error") or body.get("exception"))  # fmt: skip
            time.sleep(self.config["pause"])

    def api_increments(self, seed: int) -> None:
        from counters import services

        rng = random.Random(seed)
        while self.running():
            key, amount = self._pick(rng)
            try:
                increment = services.counter_incr(key=key, amount=amount)
                entry = {"outcome": "ok", "delta_id": increment.delta_id}
            except services.CounterUnavailable as exc:
                outcome = "failed" if exc.counted is False else "unknown"
                entry = {"outcome": outcome, "delta_id": exc.delta_id, "detail": str(exc)}
            except Exception as exc:  # the service let something else escape: record it
                entry = {"outcome": "unknown", "detail": repr(exc)}
            self.record(op="incr", via="api", key=key, amount=amount, **entry)
            time.sleep(self.config["pause"])

    # --- orders -----------------------------------------------------------------------------
    def place(self, order_key: str, sku: str, qty: int) -> tuple[str, int, dict]:
        status, body = self.http(
            "POST", "/api/orders", {"account": self.config["account"],
                                    "lines": [{"sku": sku, "qty": qty}]},
            headers={"Authorization": f"Bearer {self.config['token']}",
                     "Idempotency-Key": order_key},
        )  # fmt: skip
        if status == 201:
            return "ok", status, body
        if 400 <= status < 500:
            return "failed", status, body
        return "unknown", status, body

    def orders(self, seed: int) -> None:
        rng = random.Random(seed)
        unknown: list[tuple[str, str, int]] = []
        while self.running():
            order_key, sku, qty = (
                uuid.uuid4().hex,
                rng.choice(self.config["skus"]),
                rng.randint(1, 2),
            )
            outcome, status, body = self.place(order_key, sku, qty)
            self.record(op="order", key=order_key, sku=sku, qty=qty, outcome=outcome,
                        status=status, order_id=body.get("id"),
                        detail=body.get("error") or body.get("exception"))  # fmt: skip
            if outcome == "unknown":
                unknown.append((order_key, sku, qty))
            time.sleep(self.config["pause"] * 4)
        # Resolve: the same Idempotency-Key gets the first answer, or runs now if it never ran.
        deadline = time.monotonic() + 60
        while unknown and time.monotonic() < deadline:
            order_key, sku, qty = unknown[0]
            outcome, status, body = self.place(order_key, sku, qty)
            if outcome == "unknown":
                time.sleep(1)
                continue
            unknown.pop(0)
            self.record(op="order_retry", key=order_key, outcome=outcome, status=status,
                        order_id=body.get("id"))  # fmt: skip

    # --- reads ------------------------------------------------------------------------------
    def reader(self) -> None:
        import psycopg

        conn = None
        while self.running():
            for key in self.keys:
                try:
                    if conn is None or conn.closed:
                        conn = psycopg.connect(self.config["database_url"], autocommit=True,
                                               connect_timeout=2)  # fmt: skip
                    row = conn.execute("SELECT value FROM counters_counter WHERE key = %s",
                                       [key]).fetchone()  # fmt: skip
                    floor = row[0] if row else 0
                except Exception:
                    conn = None  # PostgreSQL is down: no floor to compare with
                    continue
                status, body = self.http("GET", f"/api/counters/{key}")
                if status == 500:
                    self.record(op="read", key=key, status=status, outcome="error")
                if status != 200:
                    continue
                with self.lock:
                    ceiling = self.sent[key]
                    self.reads += 1
                value = body["value"]
                if not floor <= value <= ceiling:
                    self.record(op="read_violation", key=key, floor=floor, value=value,
                                ceiling=ceiling)  # fmt: skip
            time.sleep(0.05)

    def run(self) -> None:
        workers = [
            threading.Thread(target=self.http_increments, args=(1,)),
            threading.Thread(target=self.http_increments, args=(2,)),
            threading.Thread(target=self.api_increments, args=(3,)),
            threading.Thread(target=self.orders, args=(4,)),
            threading.Thread(target=self.reader),
        ]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join()
        self.record(op="done", reads=self.reads)
        self.log.close()


def main() -> None:
    config = json.loads(Path(sys.argv[1]).read_text())
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings.test")
    django.setup()
    Load(config).run()


if __name__ == "__main__":
    main()
