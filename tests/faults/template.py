"""The fault suite's PostgreSQL template: a data directory migrated and seeded once (a user with an
API token, an account with a balance, three products), stopped; each scenario, and the soak, runs
on a copy of it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from project import devservers

from ..helpers import BASE_DIR

TOKEN = "faults-suite-token-not-a-secret"
PRODUCTS = {"FAULT-A": 100, "FAULT-B": 250, "FAULT-C": 75}  # sku: price
INITIAL_STOCK = 1_000_000
INITIAL_BALANCE = 10**12

SEED = f"""
from django.contrib.auth import get_user_model
from orders.auth import token_hash
from orders.models import Account, ApiToken, Payment, Product
user = get_user_model().objects.create_user("loader")
ApiToken.objects.create(user=user, token_hash=token_hash({TOKEN!r}))
account = Account.objects.create(owner=user, name="load", balance={INITIAL_BALANCE})
Payment.objects.create(account=account, kind="deposit", amount={INITIAL_BALANCE})
for sku, price in {PRODUCTS!r}.items():
    Product.objects.create(sku=sku, name=sku, price=price, stock={INITIAL_STOCK})
print(account.pk)
"""


def seeded_template(root: Path) -> dict:
    """Migrate and seed a new PostgreSQL under ``root``, stop it, and say what it holds."""
    server = devservers.start_postgres(root=root)
    env = {
        **os.environ,
        "DATABASE_URL": server.url,
        "DJANGO_SETTINGS_MODULE": "project.settings.test",
    }
    try:
        for argv in (["migrate", "-v0"], ["shell", "-c", SEED]):
            done = subprocess.run(
                [sys.executable, "manage.py", *argv],
                cwd=BASE_DIR,
                env=env,
                capture_output=True,
                text=True,
                timeout=180,
            )
            assert done.returncode == 0, done.stderr
        account = int(done.stdout.strip().splitlines()[-1])
    finally:
        server.stop()
    return {
        "root": root,
        "account": account,
        "token": TOKEN,
        "skus": sorted(PRODUCTS),
        "stock": dict.fromkeys(PRODUCTS, INITIAL_STOCK),
    }
