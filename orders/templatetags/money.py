from django import template

from ..money import money_format

register = template.Library()


@register.filter
def money(minor) -> str:
    """``{{ order.total|money }}``: minor units shown with two decimals and the currency."""
    if minor is None or minor == "":
        return ""
    return money_format(minor=int(minor))
