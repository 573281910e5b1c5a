"""The Jepsen-style checker: the load's history against what PostgreSQL holds after the drain.

Counters (G1, G2, G3): for each key, the durable value lies between the sum of ok deltas (less
the ok deltas that were dead-lettered) and the sum of ok + unknown deltas; it equals the sum of
its ledger entries; every ok delta id is applied or dead-lettered (else: lost); no failed delta
id is applied (a 503 that says "not counted" must be true). Reads during the run never broke G5.
Orders (G4): every account's balance is the sum of its payments and never negative; every
product's stock is its initial stock less what placed orders hold; every order has exactly its
payments (a debit of its total, and a refund if cancelled); every ok order exists; every order
in the database is the answer of exactly one Idempotency-Key.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path


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
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


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


def check(*, verdict: Verdict, history: list[dict], db, initial_stock: dict[str, int]) -> Verdict:
    incr = [e for e in history if e["op"] == "incr"]
    orders = [e for e in history if e["op"] == "order"]
    for entry in incr + orders:
        setattr(verdict, entry["outcome"], getattr(verdict, entry["outcome"]) + 1)
    reads = [e for e in history if e["op"] == "read"]
    errors = [e for e in incr + orders + reads if e.get("status") == 500]
    if errors:  # a 500 is a traceback: every failure must have a clear answer
        verdict.problems.append(f"{len(errors)} answers were HTTP 500, e.g. {errors[0]}")
    _check_counters(verdict, incr, db)
    _check_reads(verdict, history)
    _check_orders(verdict, orders, [e for e in history if e["op"] == "order_retry"], db,
                  initial_stock)  # fmt: skip
    return verdict


def _check_counters(verdict: Verdict, incr: list[dict], db) -> None:
    keys = sorted({e["key"] for e in incr})
    values = dict(db.execute("SELECT key, value FROM counters_counter WHERE key = ANY(%s)",
                             [keys]).fetchall())  # fmt: skip
    ledger = {
        str(delta_id): (key, amount)
        for delta_id, key, amount in db.execute(
            "SELECT delta_id, key, amount FROM counters_applieddelta WHERE key = ANY(%s)", [keys]
        ).fetchall()
    }
    applied = {i for i, (_, amount) in ledger.items() if amount != 0}
    cancelled = {i for i, (_, amount) in ledger.items() if amount == 0}
    dead = {
        str(args[0])
        for (args,) in db.execute(
            "SELECT args FROM tasks_deadletter WHERE task_name = %s", ["counters.apply_deltas"]
        ).fetchall()
        if args
    }
    verdict.applied = len(applied)
    by_key: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for entry in incr:
        by_key[entry["key"]][entry["outcome"]].append(entry)
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
        dead_ok = sum(e["amount"] for e in ok if e["delta_id"] in dead)
        verdict.dead_lettered += sum(1 for e in ok if e["delta_id"] in dead)
        low = sum(e["amount"] for e in ok) - dead_ok
        high = low + sum(e["amount"] for e in unknown if e.get("delta_id") not in cancelled)
        value = values.get(key, 0)
        ledger_sum = sum(amount for k, amount in ledger.values() if k == key)
        if value != ledger_sum:
            verdict.doubled += abs(value - ledger_sum)
            verdict.problems.append(f"{key}: value {value} != ledger sum {ledger_sum}")
        if value > high:
            verdict.doubled += value - high
            verdict.problems.append(f"{key}: durable {value} above ok+unknown {high}")
        if value < low and not lost:
            verdict.problems.append(f"{key}: durable {value} below ok {low}")
        known = ok_ids | {e.get("delta_id") for e in unknown + failed}
        stray = applied & {i for i, (k, _) in ledger.items() if k == key} - known
        unknown_without_id = sum(1 for e in unknown if not e.get("delta_id"))
        if len(stray) > unknown_without_id:
            verdict.problems.append(f"{key}: {len(stray)} applied deltas nobody sent")


def _check_reads(verdict: Verdict, history: list[dict]) -> None:
    violations = [e for e in history if e["op"] == "read_violation"]
    reads = sum(e.get("reads", 0) for e in history if e["op"] == "done")
    verdict.notes.append(f"{reads} reads checked")
    if violations:
        first = violations[0]
        verdict.problems.append(
            f"{len(violations)} reads out of bounds, e.g. {first['key']}: "
            f"{first['floor']} <= {first['value']} <= {first['ceiling']} broken"
        )
    if not reads:
        verdict.problems.append("no read was checked")


def _check_orders(verdict: Verdict, orders: list[dict], retries: list[dict], db,
                  initial_stock: dict[str, int]) -> None:  # fmt: skip
    for account_id, balance, paid in db.execute(
        "SELECT a.id, a.balance, COALESCE(SUM(p.amount), 0) FROM orders_account a "
        "LEFT JOIN orders_payment p ON p.account_id = a.id GROUP BY a.id, a.balance"
    ).fetchall():
        if balance != paid or balance < 0:
            verdict.problems.append(f"account {account_id}: balance {balance}, payments {paid}")
    held = dict(db.execute(
        "SELECT pr.sku, COALESCE(SUM(l.qty) FILTER (WHERE o.status = 'placed'), 0) "
        "FROM orders_product pr LEFT JOIN orders_orderline l ON l.product_id = pr.id "
        "LEFT JOIN orders_order o ON o.id = l.order_id GROUP BY pr.sku"
    ).fetchall())  # fmt: skip
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
    unresolved = {e["key"] for e in orders if e["outcome"] == "unknown"} - {
        e["key"] for e in retries
    }
    if unresolved:
        verdict.problems.append(f"{len(unresolved)} orders still unknown after retrying")
    verdict.notes.append(f"{len(in_db)} orders")
