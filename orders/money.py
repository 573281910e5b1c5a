"""Money as people read it. Amounts are integers in minor units (cents) everywhere they are
stored or exchanged (the models, the API, the cache); this is the one place that turns them into
"1,234.50 EUR", for the pages and the confirmation mail."""

from django.conf import settings


def money_format(*, minor: int, currency: str | None = None) -> str:
    """``123450`` -> ``"1,234.50 EUR"``; a negative amount keeps its sign in front."""
    sign = "-" if minor < 0 else ""
    major, cents = divmod(abs(int(minor)), 100)
    return f"{sign}{major:,}.{cents:02d} {currency or settings.SHOP_CURRENCY}"
