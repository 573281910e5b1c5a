"""The batch partition and envelope unpacking (counters/services/partition.py): pure functions,
so tested without servers."""

import uuid

from counters.services.partition import IncomingDelta, deltas_partition, envelope_unpack


def delta(*, key="article_views:a", amount=1, deliveries=1, args=None) -> IncomingDelta:
    delta_id = str(uuid.uuid4())
    return IncomingDelta(
        message_id=delta_id,
        args=args if args is not None else [delta_id, key, amount],
        deliveries=deliveries,
    )


def test_first_deliveries_go_together_first_and_each_redelivered_single_alone():
    """A single's deliveries count towards its limit: from its second, it runs alone."""
    first, second = delta(), delta(amount=2)
    again, again_too = delta(deliveries=2), delta(deliveries=5)
    partition = deltas_partition(
        deltas=[again, first, again_too, second], max_deliveries=5, applied=set()
    )
    assert [[d for d, _ in group] for group in partition.groups] == [
        [first, second],
        [again],
        [again_too],
    ]
    assert partition.groups[0][1][1] == (second.message_id, "article_views:a", 2)
    assert not (partition.done or partition.over_limit or partition.malformed)


def test_over_the_limit_is_dead_lettered_unless_the_ledger_has_it():
    lost, applied_before = delta(deliveries=6), delta(deliveries=6)
    copy = delta(args=list(applied_before.args))  # a first-delivery copy of the applied one
    partition = deltas_partition(
        deltas=[lost, applied_before, copy],
        max_deliveries=5,
        applied={applied_before.args[0]},
    )
    assert partition.over_limit == [lost]
    assert partition.done == [applied_before, copy]
    assert partition.groups == []


def test_malformed_deltas_are_set_aside_with_their_reason():
    cases = {
        "arity": delta(args=["only-one"]),
        "id": delta(args=["not-a-uuid", "article_views:a", 1]),
        "ephemeral": delta(key="active_readers:a"),
        "undeclared": delta(key="nope:a"),
        "amount": delta(amount=0),
        "boolean": delta(amount=True),
    }
    good = delta()
    partition = deltas_partition(deltas=[*cases.values(), good], max_deliveries=5, applied=set())
    assert [d for d, _ in partition.malformed] == list(cases.values())
    assert all(reason.startswith("InvalidCounter: ") for _, reason in partition.malformed)
    assert [[d for d, _ in group] for group in partition.groups] == [[good]]


def test_an_envelope_delivered_a_second_time_is_applied_whole_with_the_second_deliveries():
    """What a lost connection or a restarted broker node gives back (thousands of envelopes) is
    applied in batches again, not one transaction per delta; the ledger's deltas are done."""
    envelope_id = str(uuid.uuid4())
    again, also, applied_before = delta(deliveries=2), delta(deliveries=2), delta(deliveries=2)
    for member in (again, also, applied_before):
        member.envelope_id = envelope_id
    other_envelope, single_again, fresh = delta(deliveries=2), delta(deliveries=2), delta()
    other_envelope.envelope_id = str(uuid.uuid4())
    partition = deltas_partition(
        deltas=[again, single_again, applied_before, other_envelope, also, fresh],
        max_deliveries=5,
        applied={applied_before.args[0]},
    )
    assert partition.explode == []
    assert partition.done == [applied_before]
    assert [[d for d, _ in group] for group in partition.groups] == [
        [fresh],
        [again, other_envelope, also],
        [single_again],
    ]


def test_an_envelope_delivered_a_third_time_explodes_except_what_the_ledger_holds():
    """The deltas of an envelope that came back twice are published again one by one (each then
    has a delivery count of its own); those the ledger holds are done; a first-delivery
    envelope's deltas are applied with the other first deliveries."""
    envelope_id, fresh_envelope = str(uuid.uuid4()), str(uuid.uuid4())
    again, applied_before = delta(deliveries=3), delta(deliveries=3)
    for member in (again, applied_before):
        member.envelope_id = envelope_id
    fresh, single = delta(), delta()
    fresh.envelope_id = fresh_envelope
    partition = deltas_partition(
        deltas=[again, applied_before, fresh, single],
        max_deliveries=5,
        applied={applied_before.args[0]},
    )
    assert [d for d, _ in partition.explode] == [again]
    assert partition.done == [applied_before]
    assert [[d for d, _ in group] for group in partition.groups] == [[fresh, single]]


def test_an_envelope_unpacks_into_deltas_under_their_own_ids_malformed_items_alone():
    good = [str(uuid.uuid4()), "article_views:a", 2, 1700000000.5]
    deltas = envelope_unpack(
        envelope_id="env", items=[good, 42, ["short"]], deliveries=3, retries=0
    )
    assert [(d.message_id, d.args, d.envelope_id, d.deliveries) for d in deltas] == [
        (good[0], good[:3], "env", 3),
        ("env#1", [42], "env", 3),
        ("env#2", [["short"]], "env", 3),
    ]
    assert deltas[0].published_at == 1700000000.5 and deltas[0].delivered_as == "env"
    partition = deltas_partition(deltas=deltas, max_deliveries=5, applied=set())
    assert [d.message_id for d, _ in partition.malformed] == ["env#1", "env#2"]
    assert [d for d, _ in partition.explode] == [deltas[0]]
    (single,) = envelope_unpack(envelope_id="env2", items="not a list", deliveries=1, retries=0)
    assert single.args == ["not a list"]


def test_an_envelope_over_the_limit_still_goes_alone_and_an_exploded_delta_runs_alone():
    """An envelope that comes back twice is not run again, so its deliveries do not dead-letter
    its deltas;
    a delta published alone out of it is applied in a group of its own from its first delivery."""
    enveloped, exploded, fresh = delta(deliveries=9), delta(), delta()
    enveloped.envelope_id = str(uuid.uuid4())
    exploded.alone = True
    partition = deltas_partition(
        deltas=[enveloped, exploded, fresh], max_deliveries=5, applied=set()
    )
    assert partition.over_limit == []
    assert [d for d, _ in partition.explode] == [enveloped]
    assert [[d for d, _ in group] for group in partition.groups] == [[fresh], [exploded]]


def test_only_envelopes_delivered_a_second_time_share_pool_jobs_with_each_other():
    """tasks/batches.py: fresh messages together, envelopes RabbitMQ counts as delivered once
    before together, everything else redelivered (a single, an envelope seen twice, one the Redis
    broker gave back without a count, one marked alone) in a job of its own."""
    from types import SimpleNamespace

    from tasks.batches import ALONE_KWARG, delivery_tiers
    from tasks.envelopes import ENVELOPE_KWARG

    def request(count=None, *, envelope=True, redelivered=False, alone=False):
        kwargs = {ENVELOPE_KWARG: [[str(uuid.uuid4()), "article_views:a", 1, 0.0]]}
        kwargs = kwargs if envelope else {}
        if alone:
            kwargs[ALONE_KWARG] = True
        headers = {} if count is None else {"x-delivery-count": count}
        return SimpleNamespace(
            request_dict=headers, kwargs=kwargs, delivery_info={"redelivered": redelivered}
        )

    fresh, fresh_single = request(), request(envelope=False)
    second, second_too = request(1, redelivered=True), request("1", redelivered=True)
    single_again = request(1, envelope=False, redelivered=True)
    third = request(2, redelivered=True)
    from_redis = request(redelivered=True)
    alone = request(envelope=False, alone=True)
    tiers = delivery_tiers(
        [fresh, second, single_again, third, fresh_single, from_redis, second_too, alone]
    )
    assert tiers == (
        [fresh, fresh_single],
        [second, second_too],
        [single_again, third, from_redis, alone],
    )
