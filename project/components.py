"""Each component's state for the operations page: green, amber or red, with the reason in words.

Red: the component does not do its job (nothing is written, applied or published). Amber: it
works, but something needs a look before it becomes red. The judgement reads the document
``project.ops.ops_status`` builds, so status.json and the page never disagree."""

from __future__ import annotations

from dataclasses import dataclass

# A backlog of deltas this deep means the workers do not keep up (bench: one worker applies
# thousands a second, so this is seconds of work piled up).
PENDING_AMBER = 10_000
# Deltas older than this when applied: the durable count trails the shown one noticeably.
LAG_AMBER_S = 5.0
# Outbox rows older than this wait for a relay that is slow, failing, or gone.
OUTBOX_AMBER_S = 30.0
# A cache this full evicts: correct (PostgreSQL refills it) but slower.
CACHE_MEMORY_AMBER = 0.9


@dataclass(frozen=True)
class Component:
    name: str
    state: str  # "green" | "amber" | "red"
    reason: str


def _database(status: dict) -> Component:
    db = status.get("database", {})
    if "database" in status["errors"]:
        return Component("PostgreSQL", "red", f"does not answer: {status['errors']['database']}")
    if db.get("read_only"):
        return Component(
            "PostgreSQL", "red", "read-only: orders and counters cannot be written (deltas wait)"
        )
    return Component("PostgreSQL", "green", "answers and accepts writes")


def _cache(status: dict) -> Component:
    if "cache" in status["errors"]:
        return Component(
            "Cache Redis",
            "red",
            f"does not answer: {status['errors']['cache']}. Counts are read from PostgreSQL "
            "(slower); increments still go through the queue",
        )
    cache = status["cache"]
    used, limit = cache.get("used_memory", 0), cache.get("maxmemory", 0)
    if limit and used / limit >= CACHE_MEMORY_AMBER:
        return Component(
            "Cache Redis",
            "amber",
            f"{used / limit:.0%} of its memory limit: evicting, refilled from PostgreSQL",
        )
    ratio = cache.get("hit_ratio")
    hits = f"hit ratio {ratio:.0%}" if ratio is not None else "no reads yet"
    return Component("Cache Redis", "green", f"answers; {hits}")


def _broker(status: dict) -> Component:
    if "queues" in status["errors"]:
        return Component("Broker", "red", f"does not answer: {status['errors']['queues']}")
    pending = status["pending_deltas"]
    if pending >= PENDING_AMBER:
        return Component("Broker", "amber", f"{pending:,} deltas waiting: workers fall behind")
    return Component("Broker", "green", f"answers ({status['broker']}); {pending:,} deltas pending")


def _workers(status: dict) -> Component:
    workers = status["workers"]
    if "workers" in status["errors"] or not workers:
        why = status["errors"].get("workers", "no worker answers a ping")
        return Component("Workers", "red", f"{why}: nothing is applied or sent")
    lag = status.get("lag_seconds")
    if lag is not None and lag >= LAG_AMBER_S:
        return Component("Workers", "amber", f"applying {lag:.1f} s behind the increments")
    return Component("Workers", "green", f"{len(workers)} answering")


def _outbox(status: dict) -> Component:
    if "outbox" in status["errors"]:
        return Component("Outbox", "red", f"cannot be read: {status['errors']['outbox']}")
    outbox = status["outbox"]
    relays = len(outbox["relays_alive"])
    waiting, oldest = outbox["waiting"], outbox["oldest_age_s"]
    if waiting and not relays:
        return Component("Outbox", "red", f"{waiting} rows waiting and no relay alive")
    if oldest is not None and oldest >= OUTBOX_AMBER_S:
        return Component("Outbox", "amber", f"oldest row waits {oldest:.0f} s ({waiting} waiting)")
    if outbox["retrying"]:
        return Component("Outbox", "amber", f"{outbox['retrying']} rows failed to publish once")
    alive = f"{relays} relay{'s' if relays != 1 else ''} alive"
    return Component("Outbox", "green", f"{waiting} rows waiting; {alive}")


def _dead_letters(status: dict) -> Component:
    if "dead_letters" in status["errors"]:
        return Component("Dead letters", "red", status["errors"]["dead_letters"])
    dead = sum(row["count"] for row in status["dead_letters"])
    if dead:
        return Component("Dead letters", "amber", f"{dead} wait for a replay or a discard")
    return Component("Dead letters", "green", "none")


def components_state(*, status: dict) -> list[Component]:
    return [
        judge(status) for judge in (_database, _cache, _broker, _workers, _outbox, _dead_letters)
    ]
