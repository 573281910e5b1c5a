"""Group commit of publisher confirms (tasks/publisher.py), on the real RabbitMQ."""

from __future__ import annotations

import threading
import uuid
from urllib.parse import quote, urlparse

import pytest
from kombu import Connection

from project.celery import app
from project.devservers import free_port
from tasks import metrics
from tasks.broker import rabbitmq_api
from tasks.publisher import GroupPublisher, PublishNotConfirmed

from ..helpers import declare_and_purge, publishing_to, read_queue, wait_for

TASK = "counters.apply_deltas"


@pytest.fixture
def rabbit(amqp_url):
    declare_and_purge(amqp_url)
    with publishing_to(amqp_url):
        yield amqp_url
    declare_and_purge(amqp_url)


def group_sizes() -> tuple[float, float]:
    """(groups published, messages in them) so far, from the histogram."""
    samples = {s.name: s.value for m in metrics.publish_group_size.collect() for s in m.samples}
    return samples["publish_group_size_count"], samples["publish_group_size_sum"]


def publish(publisher: GroupPublisher, task_id: str) -> None:
    publisher.publish(name=TASK, task_id=task_id, args=[task_id, "article_views:p", 1], kwargs={})


def test_concurrent_publishes_share_confirms_and_each_message_lands_once(rabbit):
    publisher = GroupPublisher(app=app, queue_name="counters", timeout_s=10)
    ids = [[str(uuid.uuid4()) for _ in range(10)] for _ in range(40)]
    errors = []
    start = threading.Barrier(len(ids))

    def client(mine: list[str]) -> None:
        start.wait()
        for task_id in mine:
            try:
                publish(publisher, task_id)
            except Exception as exc:  # collected, asserted below
                errors.append(exc)

    groups_before, messages_before = group_sizes()
    threads = [threading.Thread(target=client, args=(mine,)) for mine in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert errors == []
    groups, messages = group_sizes()
    assert messages - messages_before == 400
    # Shared: fewer waits for the broker than messages (40 callers at once).
    assert groups - groups_before < 400
    landed = [m.headers["id"] for m in read_queue(rabbit, "counters")]
    assert sorted(landed) == sorted(task_id for mine in ids for task_id in mine)


def test_a_connection_the_broker_closed_is_replaced(rabbit):
    publisher = GroupPublisher(app=app, queue_name="counters", timeout_s=10)
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    publish(publisher, first)
    vhost = urlparse(rabbit).path.lstrip("/") or "/"

    def ours():
        return [c["name"] for c in rabbitmq_api(f"vhosts/{quote(vhost, safe='')}/connections")]

    for name in wait_for(ours, what="the publisher's connection"):
        rabbitmq_api(f"connections/{quote(name, safe='')}", method="DELETE")
    publish(publisher, second)
    assert sorted(m.headers["id"] for m in read_queue(rabbit, "counters")) == sorted(
        [first, second]
    )


def test_unroutable_message_is_not_confirmed_and_the_queue_comes_back(rabbit):
    publisher = GroupPublisher(app=app, queue_name="counters", timeout_s=10)
    publish(publisher, str(uuid.uuid4()))
    with Connection(rabbit) as conn:
        conn.channel().queue_delete("counters")
    lost = str(uuid.uuid4())
    with pytest.raises(PublishNotConfirmed, match="unroutable"):
        publish(publisher, lost)
    after = str(uuid.uuid4())
    publish(publisher, after)  # declared again: it has a queue to go to
    assert [m.headers["id"] for m in read_queue(rabbit, "counters")] == [after]


def test_unreachable_broker_is_an_error_not_a_hang():
    closed = f"amqp://guest:guest@127.0.0.1:{free_port()}//"
    with publishing_to(closed):
        publisher = GroupPublisher(app=app, queue_name="counters", timeout_s=2)
        with pytest.raises(PublishNotConfirmed, match=r"unreachable|no confirm"):
            publish(publisher, str(uuid.uuid4()))


def test_a_nacked_message_goes_once_more_on_a_new_connection_then_fails(rabbit, caplog):
    """A policy makes the queue refuse every publish (max-length 0, reject-publish): the broker
    nacks. The publisher sends the message once more on a new connection (a channel can nack for
    good after a quorum queue's leader election, docs/cluster.md), then fails it; once the queue
    accepts again, the same publisher delivers."""
    vhost = quote(urlparse(rabbit).path[1:] or "/", safe="")
    policy = f"policies/{vhost}/refuse-all"
    definition = {"max-length": 0, "overflow": "reject-publish"}
    rabbitmq_api(
        policy,
        method="PUT",
        body={"pattern": "^counters$", "definition": definition, "apply-to": "queues"},
    )
    publisher = GroupPublisher(app=app, queue_name="counters", timeout_s=10)
    try:
        # A policy takes effect a moment after it is set: until the first nack.
        def nacked() -> bool:
            try:
                publish(publisher, str(uuid.uuid4()))
            except PublishNotConfirmed as exc:
                return "nack" in str(exc)
            return False

        wait_for(nacked, timeout=30, what="a nacked publish")
    finally:
        rabbitmq_api(policy, method="DELETE")
    assert "publishing 1 messages again" in caplog.text  # the second attempt
    declare_and_purge(rabbit)
    after = str(uuid.uuid4())

    def delivered() -> bool:
        try:
            publish(publisher, after)
            return True
        except PublishNotConfirmed:  # the policy's removal takes a moment too
            return False

    wait_for(delivered, timeout=30, what="a confirmed publish")
    assert after in [m.headers["id"] for m in read_queue(rabbit, "counters")]
