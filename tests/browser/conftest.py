"""Headless Chromium (Debian's package) driven by Playwright, against a live Django server, real
workers and real brokers. A failing test leaves a screenshot in test-artifacts/."""

import os
import shutil
from pathlib import Path

import pytest

from ..helpers import celery_worker, counters_worker, publishing_to

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
