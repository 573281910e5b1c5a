"""The dead-letter admin's actions need the change permission (issue 26, finding 4): replay and
discard had no ``permissions=``, so anyone who could list dead letters could publish them again
or give them up."""

import pytest

from tasks.models import DeadLetter

from ..helpers import delta_dead_letter, publishing_to, read_queue, staff_with

URL = "/admin/tasks/deadletter/"


@pytest.mark.django_db(transaction=True)
def test_staff_who_may_only_view_dead_letters_can_neither_replay_nor_discard(
    cache_redis, one_broker_url
):
    letters = [
        delta_dead_letter(reason=DeadLetter.Reason.PERMANENT_ERROR, key=f"article_views:d{i}")
        for i in range(2)
    ]
    viewer = staff_with("viewer", "view_deadletter")
    listing = viewer.get(URL)
    assert listing.status_code == 200 and letters[0].task_id in listing.text
    assert 'value="replay"' not in listing.text and 'value="discard"' not in listing.text
    with publishing_to(one_broker_url):
        # Posted by hand all the same: Django finds no such action for this user.
        for action in ("replay", "discard"):
            viewer.post(URL, {"action": action, "_selected_action": [d.pk for d in letters]})
        assert read_queue(one_broker_url, "counters") == []
    assert set(DeadLetter.objects.values_list("status", flat=True)) == {"dead"}

    operator = staff_with("operator", "view_deadletter", "change_deadletter")
    page = operator.get(URL).text
    assert 'value="replay"' in page and 'value="discard"' in page
    with publishing_to(one_broker_url):
        replayed = operator.post(
            URL, {"action": "replay", "_selected_action": [letters[0].pk]}, follow=True
        )
        published = read_queue(one_broker_url, "counters")
    assert "Replayed 1 dead letter(s)." in replayed.text
    assert [m.headers["id"] for m in published] == [letters[0].task_id]
    discarded = operator.post(
        URL, {"action": "discard", "_selected_action": [letters[1].pk]}, follow=True
    )
    assert "Discarded 1 dead letter(s)." in discarded.text
    statuses = dict(DeadLetter.objects.values_list("pk", "status"))
    assert (statuses[letters[0].pk], statuses[letters[1].pk]) == ("replayed", "discarded")
