import re

import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import Error as PlaywrightError

from counters import services as counter_services
from counters.models import Article, Counter
from orders.models import Account, Product
from orders.services import account_deposit
from tasks.models import DeadLetter

from ..helpers import delta_dead_letter, flower_server, wait_for
from .conftest import log_in

pytestmark = pytest.mark.django_db(transaction=True)


def number(page, selector: str) -> int:
    return int(page.locator(selector).inner_text())


def test_article_views_rise_and_a_like_registers(page, system):
    Article.objects.create(slug="browser", title="Seen in a browser", body="Hello.")
    page.goto(f"{system}/articles/browser/")
    first = number(page, "#views")
    page.reload()
    assert number(page, "#views") == first + 1
    # The like goes through the page's script: no reload (the marker survives), the count and
    # the button change in place.
    page.evaluate("window.notReloaded = true")
    page.click("button:has-text('Like')")
    page.wait_for_function("document.getElementById('likes').textContent === '1'")
    assert page.locator("#like-button").inner_text() == "Unlike"
    assert page.evaluate("window.notReloaded") is True
    assert number(page, "#active") == 1
    # What is on the way becomes stored: the script polls until nothing is pending.
    page.wait_for_function(
        "document.getElementById('likes-stored').textContent === '1' && "
        "document.getElementById('views-pending').textContent === '0'",
        timeout=30_000,
    )
    wait_for(
        lambda: Counter.objects.filter(key="article_likes:browser", value=1).exists(),
        what="the like to reach PostgreSQL",
    )


def test_placing_an_order_on_the_shop_page_lowers_the_balance(page, system):
    user = get_user_model().objects.create_user("buyer", "b@example.com", "pw-buyer-1")
    account = Account.objects.create(owner=user, name="Buyer")
    account_deposit(account_id=account.pk, amount=5_000, idempotency_key="browser")
    Product.objects.create(sku="mug", name="Mug", price=1_200, stock=5)
    Product.objects.create(sku="lamp", name="Lamp", price=1_234_567, stock=1)
    log_in(page, system, "buyer", "pw-buyer-1", "/shop/")
    # Money as money: two decimals and the currency; minor units only in data attributes.
    assert page.locator(f"#balance-{account.pk}").inner_text() == "50.00 EUR"
    assert page.locator("td.price").all_inner_texts() == ["12,345.67 EUR", "12.00 EUR"]
    page.fill("input[aria-label='qty mug']", "2")
    page.click("button:has-text('Place order')")
    assert page.locator("#status").inner_text() == "placed"
    assert page.locator("#total").inner_text() == "24.00 EUR"
    page.goto(f"{system}/shop/")
    assert page.locator(f"#balance-{account.pk}").inner_text() == "26.00 EUR"
    assert page.locator(f"#balance-{account.pk}").get_attribute("data-minor") == "2600"


def test_admin_replays_a_dead_letter_and_it_is_applied_once(page, system):
    get_user_model().objects.create_superuser("boss", "boss@example.com", "pw-boss-1")
    letter = delta_dead_letter(
        key="article_views:replayed",
        amount=4,
        reason=DeadLetter.Reason.PERMANENT_ERROR,
        exception="InjectedFault: fixed since",
    )
    log_in(page, system, "boss", "pw-boss-1", "/admin/tasks/deadletter/")
    page.check(f"input[name=_selected_action][value='{letter.pk}']")
    page.select_option("select[name=action]", "replay")
    page.click("button[name=index]")
    assert "Replayed 1 dead letter" in page.locator(".messagelist").inner_text()
    wait_for(
        lambda: Counter.objects.filter(key="article_views:replayed", value=4).exists(),
        what="the replayed delta to be applied",
    )
    letter.refresh_from_db()
    assert letter.status == DeadLetter.Status.REPLAYED


def test_ops_page_numbers_move(page, system):
    get_user_model().objects.create_user("op", "op@example.com", "pw-op-1", is_staff=True)
    log_in(page, system, "op", "pw-op-1", "/ops/")
    page.wait_for_selector("#workers li:not(.none)", timeout=30_000)
    for _ in range(30):
        counter_services.counter_incr(key="article_views:ops-browser")
    page.wait_for_function(
        "parseFloat(document.getElementById('applied').textContent) > 0", timeout=30_000
    )
    page.wait_for_function("document.getElementById('lag').textContent !== '-'", timeout=30_000)


@pytest.fixture
def flower(one_broker_url):
    with flower_server(broker_url=one_broker_url) as url:
        yield url


def refused(browser, url: str, **context) -> bool:
    """Headless Chromium shows a refused login as a 401 page or as this network error."""
    ctx = browser.new_context(**context)
    try:
        return ctx.new_page().goto(url).status == 401
    except PlaywrightError as exc:
        return "ERR_INVALID_AUTH_CREDENTIALS" in str(exc)
    finally:
        ctx.close()


def test_flower_needs_its_credentials(browser, flower):
    assert refused(browser, flower)
    assert refused(browser, flower, http_credentials={"username": "fl", "password": "nope"})
    allowed = browser.new_context(http_credentials={"username": "fl", "password": "secret-pw"})
    page = allowed.new_page()
    assert page.goto(flower).status == 200
    assert re.search("flower", page.title(), re.IGNORECASE)
    allowed.close()
