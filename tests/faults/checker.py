"""The Jepsen-style checker: the load's history against what PostgreSQL and the cache hold after
the drain. It takes nothing on trust from the harness: every rule is checked here, from the log.

Answers: an increment is ok (HTTP 200 / the call returned), failed (a 503 ``"counted": false``,
or a refused connection: nothing was sent) or unknown, and unknown only for a timeout, a lost
connection or an explicit ``"counted": null``; any other answer (a 500, a 502, a 503 without its
verdict, an exception) fails the run, for increments, orders and reads alike.
Recovery: after the fault is over, at least ``RECOVERY_OKS`` ok increments by HTTP and by the
Python API, and no increment without success once it has been over for ``RECOVERY_GRACE_S``.
Counters (G1, G2, G3): every ok delta id is applied or dead-lettered (else lost); no failed delta
is applied; each ledger entry has the key and amount its client sent; each counter's durable value
equals the sum of its ledger entries and the acknowledged total (ok deltas not dead-lettered, plus
unknown ones that were applied), and so do the cache and a read after the drain (G5, exact).
Dead letters: none, except in the poison scenarios, where exactly the poison deltas.
Reads during the run (G5): floor <= value <= ceiling, where the floor is the durable value the load
had seen when the read started and the ceiling the sum of the ok and unknown increments that had
started when it ended (positive deltas only; with signed deltas the floor would be the durable
value plus the acknowledged negative deltas not yet applied). A read that timed out breaks G7.
``republished`` (deltas the broker lost, re-published by reconcile) must be 0 on RabbitMQ.
Orders (G4): every account's balance is the sum of its payments and never negative; every
product's stock is its initial stock less what placed orders hold; every order has exactly its
payments (a debit of its total, and a refund if cancelled); every ok order exists; every order
in the database is the answer of exactly one Idempotency-Key; every unknown order was resolved.
Order follow-ups (the transactional outbox): every outbox row is published; every order has
exactly one confirmation mail (none missing, none double) and its sent-marker; ``orders_placed:all``
equals the number of orders and each product's ``product_units_sold:<id>`` its quantity sold, each
equal to its ledger sum.
"""

from __future__ import annotations

import bisect
import json
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .load import SERVICE_AUTH, http_json

APPLY = "counters.apply_deltas"
RECOVERY_OKS = 10  # ok increments after the fault, by HTTP and by the Python API each
RECOVERY_GRACE_S = 5.0  # after the fault has been over this long, every increment succeeds


@dataclass
class Verdict:
    scenario: str
    broker: str
    ok: int = 0
    failed: int = 0
    unknown: int = 0
    applied: int = 0
    dead_lettered: int = 0
    lost: int = 0
    doubled: int = 0
    republished: int = 0  # stranded deltas `counters reconcile` published again after the drain
    restarts: int = 0  # processes that died and were restarted (as compose's restart policy does)
    drain_s: float = 0.0
    max_answer_s: float = 0.0  # the longest an increment waited for its answer
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


@dataclass
class Expect:
    """Where to read the system back, and what one scenario expects besides the common rules."""

    web_url: str
    cache_url: str
    initial_stock: dict[str, int]
    fault_over: float  # time.time() when the fault ended
    dead_key: str | None = None  # poison: the dead letters are exactly this key's ok deltas
    answer_bound_s: float | None = None  # every increment answers ok or failed within this
    apply_within_s: float | None = None  # every ok delta applied this soon after its answer
    mails: Counter | None = None  # confirmation mails written, per order id


def history_since(path: Path, after: float, *, margin: float = 5.0) -> list[dict]:
    """The entries of one history logged from about ``after`` on, without reading a soak's whole
    file: lines are appended in the order of their ``t`` (give or take a lock's wait), so a binary
    search over byte offsets finds where ``t >= after - margin`` begins."""
    if not path.exists():
        return []
    with open(path, "rb") as f:
        lo, hi = 0, path.stat().st_size
        while hi - lo > 65536:
            mid = (lo + hi) // 2
            f.seek(mid)
            f.readline()  # the rest of a line cut in the middle
            try:
                t = json.loads(f.readline())["t"]
            except (ValueError, KeyError):
                t = after  # the end of the file (or a line still being written)
            lo, hi = (mid, hi) if t < after - margin else (lo, mid)
        f.seek(lo)
        if lo:
            f.readline()
        entries = []
        for line in f.read().splitlines():
            try:
                entries.append(json.loads(line))
            except ValueError:
                continue
    return entries


def read_history(*paths: Path) -> list[dict]:
    entries = []
    for path in paths:
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    entries.append(json.loads(line))
                except ValueError:
                    continue  # the last line, still being written by the load process
    return entries


def _problem(verdict: Verdict, entries: list, what: str) -> None:
    if entries:
        verdict.problems.append(f"{len(entries)} {what}, e.g. {str(entries[0])[:400]}")


def check(*, verdict: Verdict, history: list[dict], db, expect: Expect) -> Verdict:
    incr = [e for e in history if e["op"] == "incr"]
    orders = [e for e in history if e["op"] == "order"]
    for entry in incr + orders:
        setattr(verdict, entry["outcome"], getattr(verdict, entry["outcome"]) + 1)
    verdict.max_answer_s = max((e.get("dur", 0.0) for e in incr), default=0.0)
    unexpected = [e for e in history if e.get("cause") == "unexpected"]
    _problem(verdict, unexpected, "answers neither a success, a clear error, a timeout nor a loss")
    _check_recovery(verdict, incr, expect)
    timeouts = [e for e in history if e.get("cause") == "timeout" and e["op"] != "read"]
    if timeouts:
        ops = sorted({e["op"] for e in timeouts})
        verdict.notes.append(f"{len(timeouts)} {ops} got no answer within the client's timeout")
    if expect.answer_bound_s is not None:
        bound = expect.answer_bound_s
        slow = [e for e in incr if e["outcome"] == "unknown" or e.get("dur", 0) > bound]
        _problem(verdict, slow, f"increments without a definite answer within {bound:g} s (G7)")
    totals = _check_counters(verdict, incr, db, expect)
    _check_reads(verdict, history, incr)
    _check_readback(verdict, totals, db, expect.web_url, expect.cache_url)
    if verdict.republished and verdict.broker.startswith("amqp"):
        verdict.problems.append(f"{verdict.republished} deltas re-published: RabbitMQ lost them")
    elif verdict.republished:
        verdict.notes.append(
            f"{verdict.republished} deltas re-published by reconcile from the broker's record of "
            "published deltas (tasks/inflight.py): messages the Redis broker lost (kombu's BRPOP "
            "and its unacked record are two commands; a worker or broker dying in between loses "
            "the message), or pushes a killed web process never finished"
        )
    retries = [e for e in history if e["op"] == "order_retry"]
    _check_orders(verdict, orders, retries, db, expect.initial_stock)
    if expect.mails is not None:
        _check_followups(verdict, db, expect.mails)
    return verdict


def _check_recovery(verdict: Verdict, incr: list[dict], expect: Expect) -> None:
    after = [e for e in incr if e.get("t0", e["t"]) >= expect.fault_over]
    for via in ("http", "api"):
        oks = sum(1 for e in after if e.get("via") == via and e["outcome"] == "ok")
        if oks < RECOVERY_OKS:
            verdict.problems.append(f"not recovered: {oks} ok increments by {via} after the fault")
    settled = expect.fault_over + RECOVERY_GRACE_S
    late = [e for e in after if e["outcome"] != "ok" and e.get("t0", e["t"]) > settled]
    _problem(verdict, late, f"increments not ok {RECOVERY_GRACE_S:g} s after the fault was over")


def _check_counters(verdict: Verdict, incr: list[dict], db, expect: Expect) -> dict[str, int]:
    """The counter rules; return each key's acknowledged total."""
    keys = sorted({e["key"] for e in incr})
    values = dict(db.execute("SELECT key, value FROM counters_counter").fetchall())
    ledger = {
        delta_id: (key, amount, applied_at)
        for delta_id, key, amount, applied_at in db.execute(
            "SELECT delta_id::text, key, amount, extract(epoch FROM applied_at)::float8 "
            "FROM counters_applieddelta"
        ).fetchall()
    }
    applied = {i for i, (_, amount, _) in ledger.items() if amount != 0}
    rows = db.execute("SELECT task_id, task_name, args, reason FROM tasks_deadletter").fetchall()
    dead = {str(args[0]) for _, name, args, _ in rows if name == APPLY and args}
    poison = {e["delta_id"] for e in incr if e["key"] == expect.dead_key and e["outcome"] == "ok"}
    if len(rows) != len(poison) or dead != poison:
        found = [(task_id, reason) for task_id, _, _, reason in rows]
        verdict.problems.append(
            f"dead letters {found[:5]} ({len(rows)}), expected exactly the {len(poison)} poison "
            f"deltas {sorted(poison)[:5]}"
        )
    verdict.applied = sum(1 for i in applied if ledger[i][0] in keys)
    sent = {e["delta_id"]: (e["key"], e["amount"]) for e in incr if e.get("delta_id") in ledger}
    mismatched = [
        (delta_id, (key, amount), ledger[delta_id][:2])
        for delta_id, (key, amount) in sent.items()
        if ledger[delta_id][0] != key or ledger[delta_id][1] not in (0, amount)
    ]
    _problem(verdict, mismatched, "ledger entries whose key or amount is not what was sent")
    if expect.apply_within_s is not None:
        ok = [e for e in incr if e["outcome"] == "ok" and e["delta_id"] in applied]
        lag = max((ledger[e["delta_id"]][2] - e["t"] for e in ok), default=0.0)
        verdict.notes.append(f"slowest ok delta applied {lag:.1f} s after its answer")
        if max(lag, verdict.drain_s) > expect.apply_within_s:
            verdict.problems.append(f"deltas not applied within {expect.apply_within_s:g} s")
    by_key: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for entry in incr:
        by_key[entry["key"]][entry["outcome"]].append(entry)
    # Grouped once: a soak has hundreds of keys and a million ledger rows.
    ledger_by_key: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for delta_id, (key, amount, _) in ledger.items():
        ledger_by_key[key].append((delta_id, amount))
    totals = {}
    for key in keys:
        ok, unknown, failed = (by_key[key][o] for o in ("ok", "unknown", "failed"))
        ok_ids = {e["delta_id"] for e in ok}
        lost = [i for i in ok_ids if i not in applied and i not in dead]
        if lost:
            verdict.lost += len(lost)
            verdict.problems.append(f"{key}: {len(lost)} acknowledged deltas lost, e.g. {lost[0]}")
        failed_applied = [e["delta_id"] for e in failed if e.get("delta_id") in applied]
        if failed_applied:
            verdict.problems.append(
                f"{key}: {len(failed_applied)} deltas answered 'not counted' were applied"
            )
        verdict.dead_lettered += sum(1 for e in ok if e["delta_id"] in dead)
        # An unknown answer without an id (its connection was lost) may have been applied: every
        # applied delta nobody knows the id of must be one of them, with its amount.
        known = ok_ids | {e.get("delta_id") for e in unknown + failed}
        stray = Counter(a for i, a in ledger_by_key[key] if i in applied and i not in known)
        unsent = stray - Counter(e["amount"] for e in unknown if not e.get("delta_id"))
        if unsent:
            n = sum(unsent.values())
            verdict.problems.append(f"{key}: {n} applied deltas nobody sent: {dict(unsent)}")
        totals[key] = sum(e["amount"] for e in ok if e["delta_id"] not in dead) + sum(
            e["amount"] for e in unknown if e.get("delta_id") in applied
        )
        totals[key] += sum(amount * n for amount, n in stray.items())
        # The most the value can be: every ok delta, and every unknown one that adds (an unknown
        # negative delta may not have been applied).
        high = sum(e["amount"] for e in ok if e["delta_id"] not in dead) + sum(
            max(0, e["amount"]) for e in unknown if e.get("delta_id") not in dead
        )
        value = values.get(key, 0)
        ledger_sum = sum(amount for _, amount in ledger_by_key[key])
        if value != ledger_sum:
            verdict.doubled += abs(value - ledger_sum)
            verdict.problems.append(f"{key}: value {value} != ledger sum {ledger_sum}")
        verdict.doubled += max(0, value - high)
        if value != totals[key]:
            verdict.problems.append(f"{key}: durable {value} != acknowledged total {totals[key]}")
    return totals


def _check_reads(verdict: Verdict, history: list[dict], incr: list[dict]) -> None:
    """G5 for every read of the run; the ceiling is computed here, from the increments."""
    starts: dict[str, list[float]] = defaultdict(list)
    sums: dict[str, list[int]] = defaultdict(lambda: [0])
    for e in sorted(incr, key=lambda e: e.get("t0", e["t"])):
        if e["outcome"] != "failed":
            starts[e["key"]].append(e.get("t0", e["t"]))
            sums[e["key"]].append(sums[e["key"]][-1] + e["amount"])
    reads = [e for e in history if e["op"] == "read"]
    checked, broken = 0, []
    for read in reads:
        if read["cause"]:
            continue
        checked += 1
        ceiling = sums[read["key"]][bisect.bisect_left(starts[read["key"]], read["t"])]
        if not read["floor"] <= read["value"] <= ceiling:
            broken.append({**read, "ceiling": ceiling})
    _problem(verdict, broken, "reads out of bounds (floor <= value <= ceiling broken)")
    _problem(verdict, [e for e in reads if e["cause"] == "timeout"], "reads without an answer (G7)")
    unavailable = sum(1 for e in reads if e["cause"] == "unavailable")
    verdict.notes.append(f"{checked} reads checked, {unavailable} answered 503 (not cached)")
    if not checked:
        verdict.problems.append("no read was checked")


def _check_readback(verdict: Verdict, totals: dict, db, web_url: str, cache_url: str) -> None:
    """After the drain: cache = database = acknowledged total, for every counter."""
    import redis

    values = dict(db.execute("SELECT key, value FROM counters_counter").fetchall())
    cache = redis.Redis.from_url(cache_url, socket_timeout=5)
    try:
        for key, total in totals.items():
            status, body = http_json(
                "GET", f"{web_url}/api/counters/{key}", headers=SERVICE_AUTH, timeout=10
            )
            cached = cache.hmget(f"cnt:{key}", "durable", "pending")
            in_cache = sum(int(v) for v in cached) if None not in cached else None
            seen = (status, body.get("value"), in_cache, values.get(key, 0))
            if seen != (200, total, total, total):
                verdict.problems.append(
                    f"{key} after the drain: (status, read, cache, database) {seen}, "
                    f"acknowledged total {total}"
                )
    finally:
        cache.close()


def _check_orders(
    verdict: Verdict, orders: list[dict], retries: list[dict], db, initial_stock: dict[str, int]
) -> None:
    for account_id, balance, paid in db.execute(
        "SELECT a.id, a.balance, COALESCE(SUM(p.amount), 0) FROM orders_account a "
        "LEFT JOIN orders_payment p ON p.account_id = a.id GROUP BY a.id, a.balance"
    ).fetchall():
        if balance != paid or balance < 0:
            verdict.problems.append(f"account {account_id}: balance {balance}, payments {paid}")
    held = dict(
        db.execute(
            "SELECT pr.sku, COALESCE(SUM(l.qty) FILTER (WHERE o.status = 'placed'), 0) "
            "FROM orders_product pr LEFT JOIN orders_orderline l ON l.product_id = pr.id "
            "LEFT JOIN orders_order o ON o.id = l.order_id GROUP BY pr.sku"
        ).fetchall()
    )
    for sku, stock in db.execute("SELECT sku, stock FROM orders_product").fetchall():
        if stock != initial_stock.get(sku, stock) - held.get(sku, 0) or stock < 0:
            verdict.problems.append(f"product {sku}: stock {stock}, orders hold {held.get(sku)}")
    for order_id, status, total, payments in db.execute(
        "SELECT o.id, o.status, o.total, array_agg(p.kind || ':' || p.amount ORDER BY p.id) "
        "FROM orders_order o LEFT JOIN orders_payment p ON p.order_id = o.id "
        "GROUP BY o.id, o.status, o.total"
    ).fetchall():
        expected = [f"order_debit:{-total}"] + (
            [f"refund:{total}"] if status == "cancelled" else []
        )
        if payments != expected:
            verdict.problems.append(f"order {order_id}: payments {payments}, expected {expected}")
    in_db = {row[0] for row in db.execute("SELECT id FROM orders_order").fetchall()}
    answered = [
        response.get("id")
        for (response,) in db.execute(
            "SELECT response FROM orders_idempotencyrecord WHERE status_code = 201"
        ).fetchall()
    ]
    if sorted(answered) != sorted(in_db):
        verdict.problems.append(
            f"orders {sorted(in_db)[:5]}... vs Idempotency-Key answers {sorted(answered)[:5]}..."
        )
    ok_ids = {e["order_id"] for e in orders + retries if e["outcome"] == "ok"}
    missing = ok_ids - in_db
    if missing:
        verdict.lost += len(missing)
        verdict.problems.append(f"{len(missing)} acknowledged orders missing")
    resolved = {e["key"] for e in retries if e["outcome"] != "unknown"}
    unresolved = {e["key"] for e in orders if e["outcome"] == "unknown"} - resolved
    if unresolved:
        verdict.problems.append(f"{len(unresolved)} orders still unknown after retrying")
    verdict.notes.append(f"{len(in_db)} orders")


def _check_followups(verdict: Verdict, db, mails: Counter) -> None:
    """Each order's follow-ups, published by the outbox relay: exactly one mail, and the order
    counters equal to what the orders table holds (the load never cancels)."""
    orders = {order_id for (order_id,) in db.execute("SELECT id FROM orders_order").fetchall()}
    unsent = db.execute(
        "SELECT count(*) FROM tasks_outboxmessage WHERE sent_at IS NULL"
    ).fetchone()[0]
    if unsent:
        verdict.problems.append(f"{unsent} outbox rows never published")
    missing = sorted(o for o in orders if mails[o] == 0)
    double = sorted((o, mails[o]) for o in orders if mails[o] > 1)
    stray = sorted(o for o in mails if o not in orders)
    _problem(verdict, missing, "orders without a confirmation mail")
    _problem(verdict, double, "orders with more than one confirmation mail (order, mails)")
    _problem(verdict, stray, "mails for orders that do not exist")
    verdict.lost += len(missing)
    verdict.doubled += sum(n - 1 for _, n in double)
    markers = {o for (o,) in db.execute("SELECT order_id FROM orders_orderconfirmation")}
    if markers != orders:
        verdict.problems.append(
            f"sent-markers vs orders: {len(orders - markers)} orders unmarked, "
            f"{len(markers - orders)} markers without an order"
        )
    values = dict(
        db.execute(
            "SELECT key, value FROM counters_counter "
            "WHERE key = 'orders_placed:all' OR key LIKE 'product_units_sold:%'"
        ).fetchall()
    )
    ledger = dict(
        db.execute(
            "SELECT key, sum(amount) FROM counters_applieddelta "
            "WHERE key = 'orders_placed:all' OR key LIKE 'product_units_sold:%' GROUP BY key"
        ).fetchall()
    )
    expected = {"orders_placed:all": len(orders)}
    for product_id, qty in db.execute(
        "SELECT product_id, sum(qty) FROM orders_orderline GROUP BY product_id"
    ).fetchall():
        expected[f"product_units_sold:{product_id}"] = qty
    for key in sorted(set(expected) | set(values)):
        value, want, in_ledger = values.get(key, 0), expected.get(key, 0), ledger.get(key, 0)
        if value != want or value != in_ledger:
            verdict.problems.append(
                f"{key}: durable {value}, ledger sum {in_ledger}, expected {want} (from the orders)"
            )
            verdict.doubled += max(0, value - want)
    verdict.notes.append(
        f"follow-ups: {len(orders)} orders, {sum(mails.values())} mails, "
        + ", ".join(f"{k} {values.get(k, 0)}" for k in sorted(expected))
    )
