import re
import uuid

import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import Error as PlaywrightError

from counters import services as counter_services
from counters.models import Article, Counter
from orders.models import Account, Product
from orders.services import account_deposit
from tasks.models import DeadLetter
from tasks.services import FailedMessage, dead_letter_record

from ..helpers import flower_server, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def number(page, selector: str) -> int:
    return int(page.locator(selector).inner_text())


def log_in(page, base: str, username: str, password: str, next_path: str) -> None:
    """The site's login page (staff pages redirect there too)."""
    page.goto(f"{base}/accounts/login/?next={next_path}")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("button[type=submit]")


def test_article_views_rise_and_a_like_registers(page, system):
    Article.objects.create(slug="browser", title="Seen in a browser", body="Hello.")
    page.goto(f"{system}/articles/browser/")
    first = number(page, "#views")
    page.reload()
    assert number(page, "#views") == first + 1
    page.click("button:has-text('Like')")
    assert number(page, "#likes") == 1
    assert page.locator("button:has-text('Unlike')").is_visible()
    assert number(page, "#active") == 1
    wait_for(
        lambda: Counter.objects.filter(key="article_likes:browser", value=1).exists(),
        what="the like to reach PostgreSQL",
    )


def test_placing_an_order_on_the_shop_page_lowers_the_balance(page, system):
    user = get_user_model().objects.create_user("buyer", "b@example.com", "pw-buyer-1")
    account = Account.objects.create(owner=user, name="Buyer")
    account_deposit(account_id=account.pk, amount=5_000, idempotency_key="browser")
    Product.objects.create(sku="mug", name="Mug", price=1_200, stock=5)
    log_in(page, system, "buyer", "pw-buyer-1", "/shop/")
    assert number(page, f"#balance-{account.pk}") == 5_000
    page.fill("input[aria-label='qty mug']", "2")
    page.click("button:has-text('Place order')")
    assert page.locator("#status").inner_text() == "placed"
    page.goto(f"{system}/shop/")
    assert number(page, f"#balance-{account.pk}") == 2_600


def test_admin_replays_a_dead_letter_and_it_is_applied_once(page, system):
    get_user_model().objects.create_superuser("boss", "boss@example.com", "pw-boss-1")
    delta_id = str(uuid.uuid4())
    message = FailedMessage(
        task_id=delta_id,
        task_name="counters.apply_deltas",
        queue="counters",
        args=[delta_id, "article_views:replayed", 4],
        kwargs={},
        attempts=1,
        deliveries=1,
        broker="redis",
    )
    letter = dead_letter_record(
        message=message,
        reason=DeadLetter.Reason.PERMANENT_ERROR,
        exception="InjectedFault: fixed since",
        traceback="",
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
    page.wait_for_function("document.getElementById('broker').textContent !== '?'")
    assert page.locator("#workers li").count() >= 1
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
