"""API tokens: expiry and revocation (orders/tokens.py), through ``manage.py api_token``, the
admin's action and the API's 401."""

import datetime as dt

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.test import Client
from django.utils import timezone

from orders.models import ApiToken

pytestmark = pytest.mark.django_db(transaction=True)


def api_token(capsys, *args: str) -> str:
    call_command("api_token", *args)
    return capsys.readouterr().out.strip()


def reads(token: str, account) -> int:
    return Client(HTTP_AUTHORIZATION=f"Bearer {token}").get(f"/api/accounts/{account.pk}")


def test_a_token_works_until_it_expires_then_gets_401_with_the_reason(capsys, account):
    token = api_token(capsys, "alice", "--expires-in", "30")
    assert reads(token, account).status_code == 200
    row = ApiToken.objects.get(prefix=token[:8])
    assert dt.timedelta(days=29) < row.expires_at - timezone.now() <= dt.timedelta(days=30)
    ApiToken.objects.filter(pk=row.pk).update(expires_at=timezone.now() - dt.timedelta(seconds=1))
    refused = reads(token, account)
    assert (refused.status_code, refused.json()) == (401, {"error": "token expired"})


def test_a_revoked_token_gets_401_and_the_others_still_work(capsys, account):
    kept, revoked = api_token(capsys, "alice"), api_token(capsys, "alice")
    out = api_token(capsys, "alice", "--revoke", revoked[:6])
    assert out == f"revoked 1 token(s) of 'alice' starting '{revoked[:6]}'"
    refused = reads(revoked, account)
    assert (refused.status_code, refused.json()) == (401, {"error": "token revoked"})
    assert reads(kept, account).status_code == 200


def test_the_list_shows_first_characters_and_age_never_the_token(capsys, alice):
    token = api_token(capsys, "alice", "--expires-in", "7")
    api_token(capsys, "alice", "--revoke", token)  # the whole token works too
    other = api_token(capsys, "alice")
    listed = api_token(capsys, "alice", "--list").splitlines()
    assert len(listed) == 2
    assert listed[0].startswith(f"{token[:8]}...") and listed[0].endswith("token revoked")
    assert listed[1].startswith(f"{other[:8]}...") and listed[1].endswith("active")
    assert "created 0 h ago" in listed[1]
    assert token not in "\n".join(listed) and other not in "\n".join(listed)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nobody"], "no user 'nobody'"),
        (["alice", "--expires-in", "0"], "--expires-in must be between 1 and 3650 days"),
        (["alice", "--revoke", "ab"], "give at least the first 4 characters"),
        (["alice", "--revoke", "zzzzzzzz"], "no token of 'alice' starts with 'zzzzzzzz'"),
    ],
)
def test_bad_input_is_a_clear_error_and_changes_nothing(alice, args, message):
    with pytest.raises(CommandError, match=message):
        call_command("api_token", *args)
    assert not ApiToken.objects.filter(revoked_at__isnull=False).exists()
    assert ApiToken.objects.count() == 0


def test_staff_revoke_tokens_in_the_admin_and_cannot_add_one_there(capsys, account):
    token = api_token(capsys, "alice")
    staff = get_user_model().objects.create_superuser("root", "root@example.com", "pw")
    admin = Client()
    admin.force_login(staff)
    page = admin.get("/admin/orders/apitoken/")
    assert page.status_code == 200 and token[:8] in page.text and token not in page.text
    assert admin.get("/admin/orders/apitoken/add/").status_code == 403
    row = ApiToken.objects.get()
    done = admin.post(
        "/admin/orders/apitoken/",
        {"action": "revoke", "_selected_action": [row.pk]},
        follow=True,
    )
    assert "1 token(s) revoked." in done.text
    assert reads(token, account).status_code == 401
