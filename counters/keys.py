"""Counter keys and amounts: what is valid, with a clear error for what is not (G6)."""

import re

from django.conf import settings

# namespace:rest — lowercase letters, digits and "_" in the namespace; lowercase letters, digits
# and "_ - . :" after it; 200 characters at most.
KEY_PATTERN = re.compile(r"([a-z][a-z0-9_]*):([a-z0-9_.:-]+)")
MAX_KEY_LENGTH = 200


class InvalidCounter(ValueError):
    """Bad key or amount: the caller's mistake (HTTP 400)."""


def key_validate(*, key: object) -> tuple[str, str]:
    """Return ``(namespace, data_class)`` of a valid key, else raise InvalidCounter."""
    if not isinstance(key, str) or not key:
        raise InvalidCounter("key must be a non-empty string")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidCounter(f"key is longer than {MAX_KEY_LENGTH} characters")
    # fullmatch: with match() and "$", "article_views:x\n" was a second, look-alike key.
    match = KEY_PATTERN.fullmatch(key)
    if not match:
        raise InvalidCounter(
            "key must look like namespace:name, lowercase, using a-z 0-9 _ and, after the "
            "namespace, also - . :"
        )
    namespace = match.group(1)
    data_class = settings.COUNTER_NAMESPACES.get(namespace)
    if data_class is None:
        raise InvalidCounter(f"unknown counter namespace {namespace!r}")
    return namespace, data_class


def amount_validate(*, amount: object) -> int:
    # bool is an int in Python (and true is a number in JSON to Python): refuse it explicitly.
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise InvalidCounter("amount must be an integer")
    bound = settings.COUNTER_MAX_AMOUNT
    if amount == 0 or abs(amount) > bound:
        raise InvalidCounter(f"amount must be a non-zero integer between -{bound} and {bound}")
    return amount
