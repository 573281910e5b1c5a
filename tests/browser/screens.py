"""`make screens`: every page at 1280 and 375 px wide, as docs/screens/<page>-<width>.png (shown
in the README). Runs on the test servers and real workers, with the browser tests' fixtures; not
a test (pytest collects it only when named, as `make screens` does)."""

from pathlib import Path

import pytest

from counters import services as counter_services

from ..helpers import outbox_relay, wait_for
from .conftest import log_in, visit

pytestmark = pytest.mark.django_db(transaction=True)

SCREENS = Path(__file__).resolve().parents[2] / "docs" / "screens"
WIDTHS = {1280: 900, 375: 812}


@pytest.fixture
def relay(system, one_broker_url, database_url, worker_log_dir):
    """The outbox relay too, as `make run` has it (the order's follow-ups go through it)."""
    with outbox_relay(broker_url=one_broker_url, database_url=database_url, log_dir=worker_log_dir):
        yield


def _movement(page, base: str) -> None:
    """Something for the operations page's charts: bursts of increments, the page read between
    them (each read samples the pending deltas)."""
    log_in(page, base, "staff", "pw-staff-1", "/ops/status.json")
    for burst in range(8):
        for _ in range(60 * (burst % 4 + 1)):
            counter_services.counter_incr(key=f"article_views:screen-{burst % 3}")
        page.goto(f"{base}/ops/status.json")
        page.wait_for_timeout(1500)  # spread the samples over the chart's time axis
    wait_for(lambda: counter_services.counter_get(key="article_views:screen-0").pending == 0)
    page.context.clear_cookies()


def test_screens(browser, furnished, system, relay):
    SCREENS.mkdir(parents=True, exist_ok=True)
    written = []
    for width, height in WIDTHS.items():
        context = browser.new_context(viewport={"width": width, "height": height})
        page = context.new_page()
        if not written:
            _movement(page, system)
        for name, (path, login) in furnished.items():
            visit(page, system, path, login)
            target = SCREENS / f"{name}-{width}.png"
            page.screenshot(path=str(target), full_page=True)
            written.append(target)
            context.clear_cookies()
        context.close()
    print("\n".join(str(p.relative_to(SCREENS.parents[1])) for p in written))
