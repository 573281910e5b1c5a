"""The operations page turning red and green with a real cache Redis stopped and started, and
axe-core's accessibility check on every page of the site."""

import pytest
from django.contrib.auth import get_user_model

from project import devservers

from .conftest import axe_violations, log_in, visit

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def own_cache(settings, tmp_path):
    """A cache Redis of this test's own (the fault is injected there, never in the shared one),
    used by the live server; stopped and started again on the same port."""
    port = devservers.free_port()
    server = devservers.start_redis(root=tmp_path, role="cache", port=port)
    settings.CACHES = {
        **settings.CACHES,
        "default": {**settings.CACHES["default"], "LOCATION": server.url},
    }

    class Cache:
        def stop(self):
            server.stop()

        def start(self):
            nonlocal server
            server = devservers.start_redis(root=tmp_path, role="cache", port=port)

    yield Cache()
    server.stop()


def component_state(page, name: str) -> str:
    return page.locator(f"[data-component='{name}']").get_attribute("data-state")


def test_ops_page_turns_the_cache_red_when_it_stops_and_green_when_it_is_back(
    page, system, own_cache
):
    get_user_model().objects.create_user("op", "op@example.com", "pw-op-1", is_staff=True)
    log_in(page, system, "op", "pw-op-1", "/ops/")
    page.wait_for_selector("[data-component='Cache Redis'][data-state='green']")
    assert component_state(page, "PostgreSQL") == "green"

    own_cache.stop()
    page.wait_for_selector("[data-component='Cache Redis'][data-state='red']", timeout=30_000)
    reason = page.locator("[data-component='Cache Redis'] .reason").inner_text()
    assert reason.startswith("does not answer")
    # Only the cache: the database and the broker still answer (and the page still loads, its
    # session read from PostgreSQL).
    assert component_state(page, "PostgreSQL") == "green"
    assert component_state(page, "Broker") == "green"

    own_cache.start()
    page.wait_for_selector("[data-component='Cache Redis'][data-state='green']", timeout=30_000)
    assert page.locator("#refresh-error").inner_text() == ""


def test_every_page_passes_axe_with_no_serious_violation(page, furnished, system):
    found = {}
    for name, (path, login) in furnished.items():
        visit(page, system, path, login)
        if violations := axe_violations(page):
            found[name] = violations
        page.context.clear_cookies()
    assert found == {}


def test_the_axe_check_finds_what_it_should(page, system):
    """The check itself can fail: a field without a label and grey-on-white text are found."""
    page.goto(f"{system}/")
    page.evaluate(
        """() => {
          const main = document.querySelector('main');
          main.insertAdjacentHTML('beforeend',
            '<input type="text" id="unlabelled"><p style="color:#bbb">faint text</p>');
        }"""
    )
    ids = {v["id"] for v in axe_violations(page)}
    assert {"label", "color-contrast"} <= ids


def test_keyboard_focus_is_visible_from_the_first_tab(page, system):
    """The first Tab lands on the skip link, shown with an outline; the next ones on the links."""
    page.goto(f"{system}/")
    outlines = []
    for _ in range(3):
        page.keyboard.press("Tab")
        outlines.append(
            page.evaluate(
                "() => { const e = document.activeElement, s = getComputedStyle(e);"
                " return [e.textContent.trim(), s.outlineStyle, parseFloat(s.outlineWidth)]; }"
            )
        )
    assert outlines[0][0] == "Skip to the content"
    assert all(style != "none" and width >= 2 for _, style, width in outlines), outlines
