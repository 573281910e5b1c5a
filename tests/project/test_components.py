"""The operations page's red/amber/green judgement, on status documents as ops_status builds them
(the browser test turns the cache red and green again on real servers)."""

import copy

from project.components import components_state

HEALTHY = {
    "errors": {},
    "database": {"read_only": False},
    "broker": "amqp",
    "pending_deltas": 12,
    "lag_seconds": 0.3,
    "workers": ["celery@a", "counters@b"],
    "cache": {"hit_ratio": 0.97, "used_memory": 10, "maxmemory": 100},
    "outbox": {"waiting": 0, "retrying": 0, "oldest_age_s": None, "relays_alive": [{"name": "r"}]},
    "dead_letters": [],
}


def states(status: dict) -> dict[str, tuple[str, str]]:
    return {c.name: (c.state, c.reason) for c in components_state(status=status)}


def changed(**changes) -> dict:
    status = copy.deepcopy(HEALTHY)
    status.update(changes)
    return status


def test_a_healthy_system_is_green_everywhere_with_reasons():
    judged = states(HEALTHY)
    assert list(judged) == [
        "PostgreSQL",
        "Cache Redis",
        "Broker",
        "Workers",
        "Outbox",
        "Dead letters",
    ]
    assert {state for state, _ in judged.values()} == {"green"}
    assert judged["Workers"][1] == "2 answering"
    assert judged["Cache Redis"][1] == "answers; hit ratio 97%"


def test_each_source_that_fails_turns_its_component_red_and_only_that_one():
    for source, component in [
        ("database", "PostgreSQL"),
        ("cache", "Cache Redis"),
        ("queues", "Broker"),
        ("workers", "Workers"),
        ("outbox", "Outbox"),
        ("dead_letters", "Dead letters"),
    ]:
        judged = states(changed(errors={source: "ConnectionError: refused"}))
        red = {name for name, (state, _) in judged.items() if state == "red"}
        assert red == {component}, source
        assert "refused" in judged[component][1]


def test_read_only_database_no_workers_and_an_orphaned_outbox_are_red():
    assert states(changed(database={"read_only": True}))["PostgreSQL"][0] == "red"
    assert states(changed(workers=[]))["Workers"] == (
        "red",
        "no worker answers a ping: nothing is applied or sent",
    )
    orphaned = {"waiting": 3, "retrying": 0, "oldest_age_s": 2.0, "relays_alive": []}
    assert states(changed(outbox=orphaned))["Outbox"] == (
        "red",
        "3 rows waiting and no relay alive",
    )


def test_amber_names_what_needs_a_look():
    assert states(changed(pending_deltas=25_000))["Broker"] == (
        "amber",
        "25,000 deltas waiting: workers fall behind",
    )
    assert states(changed(lag_seconds=7.5))["Workers"][0] == "amber"
    full = {"hit_ratio": 0.5, "used_memory": 95, "maxmemory": 100}
    assert states(changed(cache=full))["Cache Redis"][0] == "amber"
    dead = [{"reason": "poison", "count": 2}, {"reason": "permanent_error", "count": 1}]
    assert states(changed(dead_letters=dead))["Dead letters"] == (
        "amber",
        "3 wait for a replay or a discard",
    )
