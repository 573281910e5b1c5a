import pytest

from counters.keys import InvalidCounter, amount_validate, key_validate


@pytest.mark.parametrize(
    "key, data_class",
    [
        ("article_views:hello-world", "durable"),
        ("article_likes:a.b_c:9", "durable"),
        ("active_readers:x", "ephemeral"),
        ("article_views:" + "a" * 186, "durable"),  # 200 characters
    ],
)
def test_valid_keys(key, data_class):
    assert key_validate(key=key)[1] == data_class


@pytest.mark.parametrize(
    "key, message",
    [
        ("", "non-empty"),
        (None, "non-empty"),
        (42, "non-empty"),
        ("article_views", "namespace:name"),
        ("Article_views:x", "namespace:name"),
        ("article_views:Hello", "namespace:name"),
        ("article_views:a b", "namespace:name"),
        ("article_views:", "namespace:name"),
        ("article_views:é", "namespace:name"),
        ("article_views:x\n", "namespace:name"),  # not a second, look-alike key of x
        ("nope:x", "unknown counter namespace"),
        ("article_views:" + "a" * 187, "longer than 200"),
    ],
)
def test_invalid_keys_are_refused_with_a_reason(key, message):
    with pytest.raises(InvalidCounter, match=message):
        key_validate(key=key)


@pytest.mark.parametrize("amount", [1, -1, 7, 1_000_000, -1_000_000])
def test_valid_amounts(amount):
    assert amount_validate(amount=amount) == amount


@pytest.mark.parametrize("amount", [0, 1_000_001, -1_000_001, True, False, 1.5, "1", None, [1]])
def test_invalid_amounts(amount):
    with pytest.raises(InvalidCounter):
        amount_validate(amount=amount)
