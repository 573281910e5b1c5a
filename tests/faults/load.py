"""The load process of a fault scenario: ``python -m tests.faults.load CONFIG``.

Sends increments over HTTP and through the Python API, places orders over HTTP, and reads the
counters, until the stop file appears. With ``tx_keys`` it also increments inside database
transactions (``with transaction.atomic(): counter_incr(...)``: outbox rows the relay publishes),
logged as ``via: "tx"``; with ``hold_file`` the orders and those increments wait for that file
(a scenario starts them when its fault is on).

Every operation is logged as one JSON line with its start (``t0``) and end (``t``) time and its
outcome, as a Jepsen client would: ``ok`` (success), ``failed`` (a clear answer that nothing
happened: a 503 ``"counted": false``, a 4xx, a refused connection) or ``unknown`` (it may or may
not have happened: a timeout, a lost connection, a 503 ``"counted": null``). Anything else (a 500,
a 502, a 503 without its verdict, an exception the API should not let out) is logged as ``unknown``
with the cause ``unexpected``, which fails the run. Orders whose outcome is unknown are retried
with the same Idempotency-Key at the end, until each has a definite answer.

Every read is logged with its start and end time, its answer and the floor known at its start:
the largest durable value observed in PostgreSQL so far (a thread of its own polls it, with client
timeouts, so a read is never skipped because PostgreSQL is down or hung). The load only sends
positive deltas, so the durable value only grows and the last one observed is a valid floor. The
checker computes the ceiling afterwards from the log (G5). With signed deltas the floor would be
the durable value plus the acknowledged negative deltas not yet applied.
"""

from __future__ import annotations

import hashlib
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
NO_ANSWER = ("timeout", "connection lost")  # the only causes of an "unknown" without a verdict


def no_answer_cause(exc: BaseException) -> str:
    """Why a request got no HTTP answer: timeout, connection lost, refused (never sent) or
    other (e.g. a body that is not JSON)."""
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, TimeoutError):
        return "timeout"
    if isinstance(reason, ConnectionRefusedError):
        return "refused"
    if isinstance(reason, ConnectionError | http.client.HTTPException):
        return "connection lost"
    return "other"


# The harness counts any namespace by any amount over HTTP, as a service does: with a service
# token (counters/access.py). Its digest is in every web's COUNTER_SERVICE_TOKENS (cluster.py).
SERVICE_TOKEN = "fault-suite-service-token"
SERVICE_TOKEN_DIGEST = hashlib.sha256(SERVICE_TOKEN.encode()).hexdigest()
SERVICE_AUTH = {"Authorization": f"Bearer {SERVICE_TOKEN}"}


def http_json(
    method: str, url: str, body: dict | None = None, *, headers: dict | None = None, timeout: float
) -> tuple[int, dict]:
    """One JSON request: (status, decoded body); status 0 and ``{"exception", "cause"}`` when no
    answer came."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url,
        data=data,
        method=method,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"{}")
        except (ValueError, OSError, http.client.HTTPException):
            return exc.code, {}
    except (OSError, ValueError, http.client.HTTPException) as exc:
        return 0, {"exception": repr(exc), "cause": no_answer_cause(exc)}


def incr_outcome(status: int, body: dict) -> tuple[str, str]:
    """(outcome, cause) of an increment over HTTP."""
    if status == 200 and body.get("delta_id"):
        return "ok", ""
    if status == 503 and "counted" in body and body["counted"] is False:
        return "failed", "not counted"
    if status == 503 and "counted" in body and body["counted"] is None:
        return "unknown", "maybe"  # an explicit "may or may not be counted"
    if status == 0 and body.get("cause") in NO_ANSWER:
        return "unknown", body["cause"]
    if status == 0 and body.get("cause") == "refused":
        return "failed", "refused"
    return "unknown", "unexpected"


def order_outcome(status: int, body: dict) -> tuple[str, str]:
    if status == 201:
        return "ok", ""
    if 400 <= status < 500:
        return "failed", str(status)
    if status == 503 and "Idempotency-Key" in str(body.get("error")):
        return "unknown", "retry"
    if status == 0 and body.get("cause") in NO_ANSWER:
        return "unknown", body["cause"]
    if status == 0 and body.get("cause") == "refused":
        return "failed", "refused"
    return "unknown", "unexpected"


def read_cause(status: int, body: dict) -> str:
    if status == 200 and isinstance(body.get("value"), int):
        return ""
    if status == 503 and body.get("error"):
        return "unavailable"  # not cached and PostgreSQL unreachable: a clear answer
    if status == 0 and body.get("cause") in (*NO_ANSWER, "refused"):
        return body["cause"]
    return "unexpected"


class Load:
    def __init__(self, config: dict):
        self.config = config
        # Several web servers (as on several machines): each request goes to one at random.
        self.bases: list[str] = config.get("webs") or [config["web"]]
        self.keys: list[str] = config["keys"]
        # A soak's Zipf weights (a few hot keys, a long tail); otherwise every key alike.
        self.weights: list[float] | None = config.get("weights")
        # Keys that get negative amounts too: never read-checked (their durable value is no floor).
        self.signed = set(config.get("signed_keys") or ())
        self.read_keys = [k for k in self.keys if k not in self.signed]
        self.stop_file = Path(config["stop_file"])
        self.log = open(config["log"], "a", buffering=1)
        self.lock = threading.Lock()
        self.floor: dict[str, int] = dict.fromkeys(self.read_keys, 0)  # largest durable value seen
        self.reads = 0

    def record(self, **entry) -> None:
        entry.setdefault("t", time.time())
        with self.lock:
            self.log.write(json.dumps(entry) + "\n")

    def running(self) -> bool:
        return not self.stop_file.exists()

    def held(self) -> None:
        """Wait for the hold file, if the scenario has one (or for the stop)."""
        hold = self.config.get("hold_file")
        while hold and self.running() and not Path(hold).exists():
            time.sleep(0.05)

    def http(
        self, method: str, path: str, body: dict | None = None, headers: dict | None = None
    ) -> tuple[int, dict]:
        base = random.choice(self.bases)
        return http_json(method, base + path, body, headers=headers, timeout=HTTP_TIMEOUT_S)

    # --- increments -------------------------------------------------------------------------
    def pick(self, rng: random.Random) -> tuple[str, int]:
        """A key and an amount: 1 to 3, or -3 to 3 (never 0) on a signed key."""
        key = rng.choices(self.keys, self.weights)[0] if self.weights else rng.choice(self.keys)
        if key in self.signed:
            return key, rng.choice((-3, -2, -1, 1, 2, 3))
        return key, rng.randint(1, 3)

    def http_increments(self, seed: int) -> None:
        rng = random.Random(seed)
        while self.running():
            key, amount = self.pick(rng)
            t0 = time.time()
            status, body = self.http(
                "POST", f"/api/counters/{key}/incr", {"amount": amount}, headers=SERVICE_AUTH
            )
            t = time.time()
            outcome, cause = incr_outcome(status, body)
            entry = {"outcome": outcome, "cause": cause, "status": status, "t0": t0, "t": t}
            entry.update(dur=round(t - t0, 3), delta_id=body.get("delta_id"))
            entry["detail"] = body.get("error") or body.get("exception")
            self.record(op="incr", via="http", key=key, amount=amount, **entry)
            time.sleep(self.config["pause"])

    def api_increments(self, seed: int) -> None:
        from counters import services

        rng = random.Random(seed)
        while self.running():
            key, amount = self.pick(rng)
            t0 = time.time()
            try:
                increment = services.counter_incr(key=key, amount=amount)
                entry = {"outcome": "ok", "cause": "", "delta_id": increment.delta_id}
            except services.CounterUnavailable as exc:
                outcome, cause = {False: ("failed", "not counted"), None: ("unknown", "maybe")}.get(
                    exc.counted, ("unknown", "unexpected")
                )
                entry = {"outcome": outcome, "cause": cause, "delta_id": exc.delta_id}
                entry["detail"] = str(exc)
            except Exception as exc:  # the service let something else escape: record it
                entry = {"outcome": "unknown", "cause": "unexpected", "detail": repr(exc)}
            t = time.time()
            entry.update(t0=t0, t=t, dur=round(t - t0, 3))
            self.record(op="incr", via="api", key=key, amount=amount, **entry)
            time.sleep(self.config["pause"])

    def tx_increments(self, seed: int) -> None:
        """Increments inside a transaction: ok once the block has committed (the delta is an
        outbox row of it); an exception at the commit leaves it unknown."""
        from django.db import connection, transaction

        from counters import services

        rng = random.Random(seed)
        self.held()
        while self.running():
            key, amount = rng.choice(self.config["tx_keys"]), rng.randint(1, 3)
            t0, entry = time.time(), {"delta_id": None}
            try:
                with transaction.atomic():
                    increment = services.counter_incr(key=key, amount=amount)
                    entry["delta_id"] = increment.delta_id
                entry.update(outcome="ok", cause="")
            except Exception as exc:  # PostgreSQL down: the commit may or may not have happened
                outcome = "failed" if entry["delta_id"] is None else "unknown"
                entry.update(outcome=outcome, cause="database", detail=repr(exc)[:300])
                connection.close()
            t = time.time()
            entry.update(t0=t0, t=t, dur=round(t - t0, 3))
            self.record(op="incr", via="tx", key=key, amount=amount, **entry)
            time.sleep(self.config["pause"] * 5)

    # --- orders -----------------------------------------------------------------------------
    def place(self, order_key: str, sku: str, qty: int) -> tuple[str, str, int, dict]:
        status, body = self.http(
            "POST",
            "/api/orders",
            {"account": self.config["account"], "lines": [{"sku": sku, "qty": qty}]},
            headers={
                "Authorization": f"Bearer {self.config['token']}",
                "Idempotency-Key": order_key,
            },
        )
        return (*order_outcome(status, body), status, body)

    def orders(self, seed: int) -> None:
        rng = random.Random(seed)
        unknown: list[tuple[str, str, int]] = []
        self.held()
        while self.running():
            order_key, sku = uuid.uuid4().hex, rng.choice(self.config["skus"])
            qty = rng.randint(1, 2)
            t0 = time.time()
            outcome, cause, status, body = self.place(order_key, sku, qty)
            entry = {"outcome": outcome, "cause": cause, "status": status, "t0": t0}
            entry.update(order_id=body.get("id"), detail=body.get("error") or body.get("exception"))
            self.record(op="order", key=order_key, sku=sku, qty=qty, **entry)
            if outcome == "unknown":
                unknown.append((order_key, sku, qty))
            time.sleep(self.config.get("order_pause", self.config["pause"] * 4))
        # Resolve: the same Idempotency-Key gets the first answer, or runs now if it never ran.
        deadline = time.monotonic() + 60
        while unknown and time.monotonic() < deadline:
            order_key, sku, qty = unknown[0]
            t0 = time.time()
            outcome, cause, status, body = self.place(order_key, sku, qty)
            entry = {"outcome": outcome, "cause": cause, "status": status, "t0": t0}
            entry.update(order_id=body.get("id"), detail=body.get("error") or body.get("exception"))
            if outcome != "unknown" or cause == "unexpected":
                self.record(op="order_retry", key=order_key, **entry)
            if outcome == "unknown":
                time.sleep(1)
                continue
            unknown.pop(0)

    # --- reads ------------------------------------------------------------------------------
    def floor_poller(self) -> None:
        """Keep ``self.floor`` at the largest durable values PostgreSQL has shown."""
        import psycopg

        conn = None
        while self.running():
            try:
                if conn is None:
                    url = self.config["database_url"]
                    conn = psycopg.connect(url, autocommit=True, connect_timeout=2)
                rows = conn.execute(
                    "SELECT key, value FROM counters_counter WHERE key = ANY(%s)",
                    [self.read_keys],
                ).fetchall()
            except Exception:
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.5)
                continue
            with self.lock:
                for key, value in rows:
                    self.floor[key] = max(self.floor[key], value)
            time.sleep(0.1)

    def reader(self) -> None:
        while self.running():
            for key in self.read_keys:
                with self.lock:
                    floor = self.floor[key]
                t0 = time.time()
                status, body = self.http("GET", f"/api/counters/{key}", headers=SERVICE_AUTH)
                t = time.time()
                cause = read_cause(status, body)
                entry = {"t0": t0, "t": t, "floor": floor, "status": status, "cause": cause}
                entry["value"] = None if cause else body["value"]
                entry["detail"] = None if status == 200 else str(body)[:200]
                self.record(op="read", key=key, **entry)
                if not cause:
                    self.reads += 1
            time.sleep(0.05)

    def run(self) -> None:
        # PostgreSQL may hang (SIGSTOP): the poller is a daemon, never waited for.
        threading.Thread(target=self.floor_poller, daemon=True).start()
        seed = self.config.get("seed", 0) * 1000
        http, api = self.config.get("http_threads", 2), self.config.get("api_threads", 1)
        workers = [
            *(
                threading.Thread(target=self.http_increments, args=(seed + 1 + i,))
                for i in range(http)
            ),
            *(
                threading.Thread(target=self.api_increments, args=(seed + 100 + i,))
                for i in range(api)
            ),
            threading.Thread(target=self.orders, args=(seed + 200,)),
            threading.Thread(target=self.reader),
        ]
        if self.config.get("tx_keys"):
            workers.append(threading.Thread(target=self.tx_increments, args=(seed + 300,)))
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
