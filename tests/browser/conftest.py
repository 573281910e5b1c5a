"""Headless Chromium (Debian's package) driven by Playwright, against a live Django server, real
workers and real brokers. A failing test leaves a screenshot in test-artifacts/."""

import os
import shutil
from pathlib import Path

import pytest

from ..helpers import celery_worker, counters_worker, delta_dead_letter, publishing_to

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Playwright's sync API runs an event loop; the ORM calls in these tests happen outside it.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed (.ci/run installs Debian's chromium)")
        pytest.skip("chromium is not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser, request):
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
    context.close()


@pytest.fixture
def system(one_broker_url, database_url, cache_redis, worker_log_dir, live_server):
    """The live site plus a counters worker and a general worker. The pages work the same on
    either broker (the pipeline and delivery tests run on both), so these run once."""
    broker_url = one_broker_url
    with (
        publishing_to(broker_url),
        counters_worker(broker_url=broker_url, database_url=database_url, log_dir=worker_log_dir),
        celery_worker(
            broker_url=broker_url,
            database_url=database_url,
            log_dir=worker_log_dir,
            queues="orders,default",
        ),
    ):
        yield live_server.url


AXE = Path(__file__).resolve().parent / "vendor" / "axe.min.js"


@pytest.fixture
def furnished(system):
    """Something on every page: articles with views and likes, a shopper with an account and an
    order, a staff user, a dead letter. Returns the pages to visit (path, who must be logged in)."""
    from django.contrib.auth import get_user_model

    from counters import services as counter_services
    from counters.models import Article
    from orders.models import Account, Product
    from orders.services import account_deposit, order_place
    from tasks.models import DeadLetter

    for slug, title, views in [
        ("pipeline", "How a view reaches PostgreSQL", 1204),
        ("orders", "Why orders never trust Redis", 317),
    ]:
        Article.objects.create(
            slug=slug,
            title=title,
            body="Counted in Redis, carried through a durable queue, stored exactly once.",
        )
        counter_services.counter_incr(key=f"article_views:{slug}", amount=views)
    counter_services.counter_incr(key="article_likes:pipeline", amount=42)
    users = get_user_model().objects
    shopper = users.create_user("shopper", "s@example.com", "pw-shopper-1")
    users.create_superuser("staff", "staff@example.com", "pw-staff-1")
    account = Account.objects.create(owner=shopper, name="Everyday")
    account_deposit(account_id=account.pk, amount=250_000, idempotency_key="furnish")
    Product.objects.create(sku="mug", name="Mug", price=1_200, stock=40)
    Product.objects.create(sku="lamp", name="Desk lamp", price=4_950, stock=7)
    Product.objects.create(sku="chair", name="Office chair", price=129_900, stock=3)
    order = order_place(
        account_id=account.pk,
        lines=[{"sku": "mug", "qty": 2}, {"sku": "lamp", "qty": 1}],
        idempotency_key="furnish-order",
    ).body["id"]
    delta_dead_letter(
        key="article_views:pipeline",
        reason=DeadLetter.Reason.DELIVERY_LIMIT,
        exception="WorkerLostError: the worker died while applying this delta",
        attempts=6,
        deliveries=6,
        broker="amqp",
    )
    return {
        "home": ("/", None),
        "articles": ("/articles/", None),
        "article": ("/articles/pipeline/", None),
        "login": ("/accounts/login/", None),
        "shop": ("/shop/", ("shopper", "pw-shopper-1")),
        "order": (f"/shop/orders/{order}/", ("shopper", "pw-shopper-1")),
        "ops": ("/ops/", ("staff", "pw-staff-1")),
    }


def axe_violations(page, impacts=("serious", "critical")) -> list[dict]:
    """axe-core's WCAG 2 A/AA checks on the page as it stands; the violations of these impacts."""
    page.add_script_tag(path=str(AXE))
    result = page.evaluate(
        "() => axe.run(document, {runOnly: {type: 'tag', values: "
        "['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice']}})"
    )
    return [
        {"id": v["id"], "impact": v["impact"], "nodes": [n["target"] for n in v["nodes"]][:5]}
        for v in result["violations"]
        if v["impact"] in impacts
    ]


def log_in(page, base: str, username: str, password: str, next_path: str) -> None:
    """The site's login page (staff pages redirect there too)."""
    page.goto(f"{base}/accounts/login/?next={next_path}")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("button[type=submit]")


def visit(page, base: str, path: str, login: tuple[str, str] | None) -> None:
    """Open a page as the furnished fixture lists it, logging in first where it needs a user."""
    if login:
        log_in(page, base, *login, path)
    else:
        page.goto(f"{base}{path}")
    page.wait_for_load_state("networkidle")
