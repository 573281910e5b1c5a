"""The orders HTTP API: authentication, authorization, idempotency headers and error codes."""

import json
import uuid

import pytest
from django.core.management import call_command
from django.test import Client

from orders.models import Order

from ..helpers import publishing_to

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def token(alice, capsys):
    call_command("api_token", "alice")
    return capsys.readouterr().out.strip()


@pytest.fixture
def api(token, broker_url):
    client = Client(HTTP_AUTHORIZATION=f"Bearer {token}")
    with publishing_to(broker_url):
        yield client


def post(client, path, body, key="k"):
    headers = {"HTTP_IDEMPOTENCY_KEY": key} if key else {}
    return client.post(path, data=json.dumps(body), content_type="application/json", **headers)


def test_place_read_and_cancel_an_order_with_a_token(api, account, product):
    created = post(api, "/api/orders", {"account": account.pk, "lines": [{"sku": "mug", "qty": 2}]})
    assert created.status_code == 201
    order = created.json()
    assert order["total"] == 600 and order["lines"] == [{"sku": "mug", "qty": 2, "unit_price": 300}]
    again = post(api, "/api/orders", {"account": account.pk, "lines": [{"sku": "mug", "qty": 2}]})
    assert (again.status_code, again.json()) == (201, order)
    other_body = post(
        api, "/api/orders", {"account": account.pk, "lines": [{"sku": "mug", "qty": 3}]}
    )
    assert other_body.status_code == 422
    assert Order.objects.count() == 1
    assert api.get(f"/api/orders/{order['id']}").json()["status"] == "placed"
    assert api.get(f"/api/accounts/{account.pk}").json()["balance"] == 9_400
    cancelled = post(api, f"/api/orders/{order['id']}/cancel", {}, key="c")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    # Deposits are for staff with orders.deposit (tests/orders/test_permissions.py).
    deposit = post(api, f"/api/accounts/{account.pk}/deposit", {"amount": 100}, key="d")
    assert deposit.status_code == 403
    assert api.get(f"/api/accounts/{account.pk}").json()["balance"] == 10_000


def test_error_codes(api, account, product):
    ok_lines = [{"sku": "mug", "qty": 1}]
    assert (
        post(api, "/api/orders", {"account": account.pk, "lines": ok_lines}, key=None).status_code
        == 400
    )
    assert post(api, "/api/orders", {"account": "1", "lines": ok_lines}).status_code == 400
    assert (
        post(
            api,
            "/api/orders",
            {"account": account.pk, "lines": [{"sku": "x", "qty": 1}]},
            key=uuid.uuid4().hex,
        ).status_code
        == 400
    )
    assert post(api, "/api/orders", {"account": 999999, "lines": ok_lines}).status_code == 404
    big = post(
        api,
        "/api/orders",
        {"account": account.pk, "lines": [{"sku": "mug", "qty": 500}]},
        key="big",
    )
    assert big.status_code == 409 and "insufficient" in big.json()["error"]
    bad_json = api.post(
        "/api/orders", data="{nope", content_type="application/json", HTTP_IDEMPOTENCY_KEY="j"
    )
    assert bad_json.status_code == 400 and "error" in bad_json.json()
    assert api.get("/api/orders/999999").status_code == 404
    assert not Order.objects.exists()


def test_a_user_cannot_read_or_spend_another_users_account(api, account, product, bob, broker_url):
    body = {"account": account.pk, "lines": [{"sku": "mug", "qty": 1}]}
    order_id = post(api, "/api/orders", body).json()["id"]
    mallory = Client()
    mallory.force_login(bob)
    lines = [{"sku": "mug", "qty": 1}]
    with publishing_to(broker_url):
        assert mallory.get(f"/api/accounts/{account.pk}").status_code == 403
        assert mallory.get(f"/api/orders/{order_id}").status_code == 403
        spend = post(mallory, "/api/orders", {"account": account.pk, "lines": lines}, key="m")
        # A session request without a CSRF token is refused before anything else.
        assert spend.status_code == 403
        csrf_ok = Client(enforce_csrf_checks=False)
        csrf_ok.force_login(bob)
        assert (
            post(
                csrf_ok, "/api/orders", {"account": account.pk, "lines": lines}, key="m2"
            ).status_code
            == 403
        )
        assert post(csrf_ok, f"/api/orders/{order_id}/cancel", {}, key="m3").status_code == 403
        assert (
            post(
                csrf_ok, f"/api/accounts/{account.pk}/deposit", {"amount": 5}, key="m4"
            ).status_code
            == 403
        )
    assert Client().get(f"/api/accounts/{account.pk}").status_code == 401
    assert (
        Client(HTTP_AUTHORIZATION="Bearer wrong").get(f"/api/accounts/{account.pk}").status_code
        == 401
    )
    assert Order.objects.count() == 1


def test_shop_page_order_and_cancel(alice, account, product, broker_url):
    client = Client()
    client.force_login(alice)
    with publishing_to(broker_url):
        page = client.get("/shop/").content.decode()
        assert 'data-minor="10000">100.00 EUR<' in page
        key = page.split('name="form_key" value="')[1].split('"')[0]
        response = client.post(
            "/shop/order", {"account": account.pk, "form_key": key, "sku": ["mug"], "qty": ["2"]}
        )
        assert response.status_code == 302
        order_page = client.get(response["Location"]).content.decode()
        assert 'id="status">placed<' in order_page
        assert 'data-minor="600">6.00 EUR<' in order_page  # the total, 2 x 3.00
        assert 'data-minor="9400">94.00 EUR<' in client.get("/shop/").content.decode()
        # The same form submitted twice (a double click) places one order.
        client.post(
            "/shop/order", {"account": account.pk, "form_key": key, "sku": ["mug"], "qty": ["2"]}
        )
        assert Order.objects.count() == 1
