from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from counters.models import Article
from orders.models import Account, Product
from orders.services import account_deposit

DEMO_ARTICLES = [
    (
        "redis-is-not-the-truth",
        "Redis is not the truth",
        "Count fast in Redis, carry every delta through a durable queue, trust PostgreSQL.",
    ),
    (
        "exactly-once-by-ledger",
        "Exactly once, by ledger",
        "A delta id goes into the ledger in the same transaction that adds its amount.",
    ),
    (
        "dead-letters-are-visible",
        "Dead letters are visible",
        "A delta that cannot be applied ends in the dead-letter queue and table, replayable.",
    ),
]
DEMO_PRODUCTS = [
    ("mug", "Queue mug", 1200, 50),
    ("tee", "Ledger T-shirt", 2500, 30),
    ("sticker", "Redis-is-not-the-truth sticker", 300, 500),
]


class Command(BaseCommand):
    help = "Create the demo data and the admin user (idempotent; run by `make run`)."

    def _admin(self):
        """The admin user, created once. An admin that exists is never changed: this runs at
        every `make run` and every `compose up`, and a password rotated, or an admin disabled or
        demoted since, must stay so (the password in the environment is the first one only)."""
        username = settings.DJANGO_ADMIN_USER
        user = get_user_model().objects.filter(username=username).first()
        if user is not None:
            self.stdout.write(f"admin user {username!r} exists; left unchanged")
            return user
        password = settings.DJANGO_ADMIN_PASSWORD
        if not password:
            raise CommandError(
                f"admin user {username!r} does not exist and DJANGO_ADMIN_PASSWORD is not set "
                "(`make run` generates one)."
            )
        user = get_user_model().objects.create_superuser(username=username, password=password)
        self.stdout.write(f"admin user {username!r} created")
        return user

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--admin-only",
            action="store_true",
            help="Only create the admin user if absent (production: no demo articles or products).",
        )

    def handle(self, *args, **options) -> None:
        user = self._admin()
        if options["admin_only"]:
            return
        for slug, title, body in DEMO_ARTICLES:
            Article.objects.get_or_create(slug=slug, defaults={"title": title, "body": body})
        self.stdout.write(f"{len(DEMO_ARTICLES)} demo articles")
        for sku, name, price, stock in DEMO_PRODUCTS:
            Product.objects.get_or_create(
                sku=sku, defaults={"name": name, "price": price, "stock": stock}
            )
        account, created = Account.objects.get_or_create(
            owner=user, name="Demo account", defaults={"balance": 0}
        )
        if created:
            account_deposit(account_id=account.pk, amount=100_000, idempotency_key="seed-demo")
        self.stdout.write(f"{len(DEMO_PRODUCTS)} demo products, account {account.pk}")
