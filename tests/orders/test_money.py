"""Money shown as money (two decimals and the currency), from one filter; minor units stay the
storage and API format."""

import pytest
from django.template import Context, Template

from orders.money import money_format


@pytest.mark.parametrize(
    ("minor", "shown"),
    [
        (0, "0.00 EUR"),
        (5, "0.05 EUR"),
        (1200, "12.00 EUR"),
        (123450, "1,234.50 EUR"),
        (100_000_000_00, "100,000,000.00 EUR"),
        (-250, "-2.50 EUR"),
    ],
)
def test_minor_units_become_two_decimals_and_the_currency(minor, shown):
    assert money_format(minor=minor) == shown


def test_the_currency_comes_from_the_settings(settings):
    settings.SHOP_CURRENCY = "CHF"
    assert money_format(minor=199) == "1.99 CHF"


def test_the_template_filter_formats_and_leaves_nothing_blank_as_a_number():
    template = Template("{% load money %}[{{ a|money }}][{{ b|money }}]")
    assert template.render(Context({"a": 1200, "b": None})) == "[12.00 EUR][]"
