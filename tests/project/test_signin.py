"""Issue 27 (5): sign-in guesses are limited, on the site's login and the admin's (a staff
account can replay dead letters and deposit money). Wrong passwords for one account, or from one
client, lock for the production cool-off with a page saying when to come back; the right password
works again after it; lockouts are shown and cleared in the admin; a forged X-Forwarded-For does
not buy a fresh counter; a database that refuses writes gives a clear page, not a traceback."""

from datetime import timedelta

import pytest
from axes.models import AccessAttempt
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import connection
from django.db.models import F
from django.test import Client

LIMIT = settings.AXES_FAILURE_LIMIT
COOLOFF = settings.AXES_COOLOFF_TIME
PAGES = ["/accounts/login/", "/admin/login/"]  # the site's and the admin's
WRONG = {"/accounts/login/": "Wrong username or password", "/admin/login/": "correct username"}
ATTACKER = "203.0.113.66"


@pytest.fixture
def accounts(db):
    """Staff accounts (the admin's login takes staff only), each with the password pw-<name>."""
    users = get_user_model().objects
    return [users.create_user(f"user{i}", password=f"pw-user{i}", is_staff=True) for i in range(8)]


def sign_in(page: str, username: str, password: str, address: str = ATTACKER, **headers):
    client = Client(REMOTE_ADDR=address, **headers)
    return client, client.post(page, {"username": username, "password": password})


def signed_in(client: Client) -> bool:
    # Client.session would save a new session when there is none: read only an existing one.
    if settings.SESSION_COOKIE_NAME not in client.cookies:
        return False
    return "_auth_user_id" in client.session


def assert_locked_out(client: Client, response) -> None:
    body = response.content.decode()
    assert response.status_code == 429, body[:500]
    assert "Too many sign-in attempts" in body and "Try again after" in body
    assert "You have not been signed in" in body
    # The production window: the page says when, and Retry-After agrees.
    assert COOLOFF - timedelta(minutes=1) < timedelta(seconds=int(response["Retry-After"]))
    assert timedelta(seconds=int(response["Retry-After"])) <= COOLOFF
    assert not signed_in(client)


def fail(page: str, username: str, address: str = ATTACKER, **headers):
    return sign_in(page, username, "not-the-password", address, **headers)[1]


def lock(page: str, username: str, address: str = ATTACKER) -> None:
    """LIMIT wrong passwords: all but the last are the form's error, the last the lockout."""
    for _ in range(LIMIT - 1):
        response = fail(page, username, address)
        assert response.status_code == 200 and WRONG[page] in response.content.decode()
    assert fail(page, username, address).status_code == 429


@pytest.mark.parametrize("page", PAGES)
def test_wrong_passwords_for_one_account_from_many_addresses_lock_it(accounts, page):
    victim = accounts[0].username
    for i in range(LIMIT - 1):  # a botnet: each address guesses once
        response = fail(page, victim, address=f"198.51.100.{i + 1}")
        assert response.status_code == 200 and WRONG[page] in response.content.decode()
    assert fail(page, victim, address="198.51.100.200").status_code == 429
    # Now even the right password, from an address that never failed, is refused.
    client, response = sign_in(page, victim, f"pw-{victim}", address="192.0.2.7")
    assert_locked_out(client, response)
    # Another account from that address is not caught by the victim's lockout.
    client, response = sign_in(page, accounts[1].username, "pw-user1", address="192.0.2.7")
    assert response.status_code == 302 and signed_in(client)


@pytest.mark.parametrize("page", PAGES)
def test_one_client_guessing_several_accounts_is_locked(accounts, page):
    for account in accounts[: LIMIT - 1]:  # a spray: one guess at each account
        response = fail(page, account.username)
        assert response.status_code == 200 and WRONG[page] in response.content.decode()
    assert fail(page, accounts[LIMIT - 1].username).status_code == 429
    # From that client, even an untried account with its right password is refused ...
    fresh = accounts[LIMIT]
    client, response = sign_in(page, fresh.username, f"pw-{fresh.username}")
    assert_locked_out(client, response)
    # ... while its owner, elsewhere, signs in: the address was locked, not the accounts.
    client, response = sign_in(page, fresh.username, f"pw-{fresh.username}", address="192.0.2.8")
    assert response.status_code == 302 and signed_in(client)
    # A locked address adds nothing to the accounts it goes on naming: it cannot lock them all.
    for _ in range(2 * LIMIT):
        assert fail(page, accounts[0].username).status_code == 429
    client, response = sign_in(page, accounts[0].username, "pw-user0", address="192.0.2.8")
    assert response.status_code == 302 and signed_in(client)


def test_signing_in_to_ones_own_account_does_not_erase_guesses_at_another(accounts):
    """A success must not reset the failures counted from its address (axes' reset on success
    would delete every row of the address): else an attacker with an account of their own signs
    in to it between guesses at someone else's and never reaches the limit."""
    page, victim, own = "/accounts/login/", accounts[0].username, accounts[7].username
    for _ in range(LIMIT - 1):
        fail(page, victim)
    client, response = sign_in(page, own, f"pw-{own}")
    assert response.status_code == 302 and signed_in(client)
    for _ in range(LIMIT - 1):
        fail(page, victim)
    client, response = sign_in(page, victim, f"pw-{victim}", address="192.0.2.10")
    assert_locked_out(client, response)


@pytest.mark.parametrize("page", PAGES)
def test_the_right_password_works_again_after_the_production_cool_off(accounts, page):
    victim = accounts[0].username
    lock(page, victim)
    # The rows are aged, not the window shortened: a minute before its end, still locked ...
    AccessAttempt.objects.update(attempt_time=F("attempt_time") - (COOLOFF - timedelta(minutes=1)))
    client, response = sign_in(page, victim, f"pw-{victim}")
    assert response.status_code == 429 and not signed_in(client), response.status_code
    assert 0 < int(response["Retry-After"]) <= 60
    # ... and past it the right password signs in, from the same address too.
    AccessAttempt.objects.update(attempt_time=F("attempt_time") - timedelta(minutes=1, seconds=1))
    client, response = sign_in(page, victim, f"pw-{victim}")
    assert response.status_code == 302 and signed_in(client)


def test_lockouts_are_shown_and_cleared_in_the_admin(accounts):
    victim = accounts[0].username
    lock("/accounts/login/", victim)
    root = get_user_model().objects.create_superuser("root", "root@example.invalid", "pw-root")
    admin = Client(REMOTE_ADDR="192.0.2.9")
    admin.force_login(root)

    listing = admin.get("/admin/axes/accessattempt/")
    assert listing.status_code == 200
    assert victim in listing.content.decode() and ATTACKER in listing.content.decode()

    ids = list(AccessAttempt.objects.values_list("pk", flat=True))
    response = admin.post(
        "/admin/axes/accessattempt/",
        {"action": "delete_selected", "_selected_action": ids, "post": "yes"},
    )
    assert response.status_code == 302 and not AccessAttempt.objects.exists()
    client, response = sign_in("/accounts/login/", victim, f"pw-{victim}")
    assert response.status_code == 302 and signed_in(client)


def test_manage_py_axes_reset_clears_lockouts(accounts):
    victim = accounts[0].username
    lock("/admin/login/", victim)
    call_command("axes_reset_username", victim)
    call_command("axes_reset_ip", ATTACKER)
    client, response = sign_in("/admin/login/", victim, f"pw-{victim}")
    assert response.status_code == 302 and signed_in(client)


@pytest.mark.parametrize("page", PAGES)
def test_a_forged_forwarded_for_does_not_escape_the_address_lockout(accounts, page, settings):
    """The client's address is the counters' rate limit's (counters.ratelimit.client_of): a
    header is believed only from COUNTER_TRUSTED_PROXIES, so an untrusted peer writing a new
    X-Forwarded-For with every request is still one client."""
    settings.COUNTER_CLIENT_IP_HEADER = "X-Forwarded-For"
    settings.COUNTER_TRUSTED_PROXIES = ["10.9.0.0/24"]
    for i, account in enumerate(accounts[:LIMIT]):
        fail(page, account.username, HTTP_X_FORWARDED_FOR=f"198.51.100.{i + 1}")
    fresh = accounts[LIMIT]
    client, response = sign_in(
        page, fresh.username, f"pw-{fresh.username}", HTTP_X_FORWARDED_FOR="198.51.100.99"
    )
    assert_locked_out(client, response)
    assert set(AccessAttempt.objects.values_list("ip_address", flat=True)) == {ATTACKER}
    # Through the trusted proxy the header names the client, as for the rate limit: the same
    # attacker is still locked there, and another client behind the same proxy is not.
    password = f"pw-{fresh.username}"
    proxy = "10.9.0.1"
    client, response = sign_in(page, fresh.username, password, proxy, HTTP_X_FORWARDED_FOR=ATTACKER)
    assert_locked_out(client, response)
    client, response = sign_in(
        page, fresh.username, password, proxy, HTTP_X_FORWARDED_FOR=f"{ATTACKER}, 198.51.100.99"
    )
    assert response.status_code == 302 and signed_in(client)


@pytest.mark.parametrize("page", PAGES)
def test_a_database_refusing_writes_gives_a_clear_page_and_signs_no_one_in(accounts, page):
    """Each failure is a row in PostgreSQL. A database that refuses writes (read-only after a
    failover; down altogether fails the same way) must not turn the login into a traceback, nor
    into unlimited uncounted guesses: the sign-in is refused with a page saying so."""
    with connection.cursor() as cursor:
        cursor.execute("SET TRANSACTION READ ONLY")
    victim = accounts[0].username
    for password in ("not-the-password", f"pw-{victim}"):
        client, response = sign_in(page, victim, password)
        body = response.content.decode()
        assert response.status_code == 503, body[:500]
        assert "Sign-in is unavailable right now" in body and "Traceback" not in body
        assert response["Retry-After"] == "60" and not signed_in(client)
    assert client.get(page).status_code == 200  # the form itself still shows
