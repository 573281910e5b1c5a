"""The envelope publisher's thread (tasks/envelopes.py), with a real thread and a send function
that records: every caller gets its own after-confirm result; a failing after-confirm leaves the
callers confirmed; a failed send fails exactly the callers of that envelope."""

import threading

import pytest

from tasks.envelopes import NOTHING, EnvelopeNotConfirmed, EnvelopePublisher


def publish_together(publisher: EnvelopePublisher, items: list[int]) -> dict[int, object]:
    start, outcomes = threading.Barrier(len(items)), {}

    def caller(item: int) -> None:
        start.wait()
        try:
            outcomes[item] = publisher.publish([item], timeout_s=10, context=item * 10)
        except EnvelopeNotConfirmed as exc:
            outcomes[item] = exc

    threads = [threading.Thread(target=caller, args=(i,)) for i in items]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def test_each_caller_gets_the_after_confirm_result_of_its_own_item():
    sent: list[list] = []
    gate = threading.Event()

    def send(envelope_id: str, items: list[list]) -> None:
        gate.wait(5)  # the first envelope's confirm is slow: the others queue up behind it
        sent.append(items)

    publisher = EnvelopePublisher(
        send=send,
        name="test",
        after_confirm=lambda entries: [f"{item[0]}:{context}" for item, context in entries],
    )
    threading.Timer(0.3, gate.set).start()
    outcomes = publish_together(publisher, list(range(20)))
    assert outcomes == {i: f"{i}:{i * 10}" for i in range(20)}
    assert sorted(i for items in sent for [i] in items) == list(range(20))
    assert len(sent) < 20  # they shared envelopes


def test_a_failing_after_confirm_leaves_its_callers_confirmed():
    def after_confirm(entries):
        raise ConnectionError("the cache is down")

    publisher = EnvelopePublisher(
        send=lambda _id, _items: None, name="t", after_confirm=after_confirm
    )
    assert publish_together(publisher, [1, 2, 3]) == {1: NOTHING, 2: NOTHING, 3: NOTHING}


@pytest.mark.parametrize("bad", [2, 5])
def test_a_failed_send_fails_exactly_the_callers_of_its_envelope(bad):
    def send(envelope_id: str, items: list[list]) -> None:
        if [bad] in items:
            raise ConnectionError("no confirm")

    publisher = EnvelopePublisher(send=send, name="t")
    # One caller at a time: each in an envelope of its own, so only the bad one fails.
    outcomes = {i: publish_together(publisher, [i])[i] for i in range(1, 7)}
    assert [i for i, o in outcomes.items() if isinstance(o, EnvelopeNotConfirmed)] == [bad]
    assert all(o is NOTHING for i, o in outcomes.items() if i != bad)
