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

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--admin-only",
            action="store_true",
            help="Only create or update the admin user (production: no demo articles or products).",
        )

    def handle(self, *args, **options) -> None:
        username = settings.DJANGO_ADMIN_USER
        password = settings.DJANGO_ADMIN_PASSWORD
        if not password:
            raise CommandError("DJANGO_ADMIN_PASSWORD is not set; `make run` generates one.")
        user, created = get_user_model().objects.get_or_create(
            username=username, defaults={"is_staff": True, "is_superuser": True}
        )
        user.is_staff = user.is_superuser = True
        user.set_password(password)
        user.save()
        self.stdout.write(f"admin user {username!r} {'created' if created else 'updated'}")
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
