import uuid

import pytest
from django.contrib.auth import get_user_model

from orders.models import Account, Product
from orders.services import account_deposit


@pytest.fixture
def alice(transactional_db):
    return get_user_model().objects.create_user("alice", "alice@example.com", "pw-alice")


@pytest.fixture
def bob(transactional_db):
    return get_user_model().objects.create_user("bob", "bob@example.com", "pw-bob")


@pytest.fixture
def account(alice, cache_redis):
    account = Account.objects.create(owner=alice, name="alice's")
    account_deposit(account_id=account.pk, amount=10_000, idempotency_key=uuid.uuid4().hex)
    account.refresh_from_db()
    return account


@pytest.fixture
def product(transactional_db):
    return Product.objects.create(sku="mug", name="Mug", price=300, stock=20)
