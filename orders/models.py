"""Critical data: written to PostgreSQL first, cached only after the commit (design G4)."""

from django.conf import settings
from django.db import models
from django.db.models import Q


class Account(models.Model):
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="accounts"
    )
    name = models.CharField(max_length=100)
    balance = models.BigIntegerField(default=0, help_text="Minor units (cents).")
    # Bumped by every committed change: the cache never keeps an older version than it has.
    version = models.BigIntegerField(default=1)

    class Meta:
        constraints = [models.CheckConstraint(condition=Q(balance__gte=0), name="balance_gte_0")]
        # Money enters an account only by this explicit grant (superusers have it implicitly);
        # change_account lets staff rename an account, never credit it.
        permissions = [("deposit", "Can deposit into any account")]

    def __str__(self) -> str:
        return f"{self.name} ({self.balance})"


class Product(models.Model):
    sku = models.CharField(max_length=64, unique=True)
    name = models.CharField(max_length=200)
    price = models.BigIntegerField(help_text="Minor units (cents).")
    stock = models.IntegerField(default=0)
    version = models.BigIntegerField(default=1)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(stock__gte=0), name="stock_gte_0"),
            models.CheckConstraint(condition=Q(price__gt=0), name="price_gt_0"),
        ]

    def __str__(self) -> str:
        return f"{self.sku} {self.name}"


class Order(models.Model):
    class Status(models.TextChoices):
        PLACED = "placed", "placed"
        CANCELLED = "cancelled", "cancelled"

    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="orders")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PLACED)
    total = models.BigIntegerField()
    version = models.BigIntegerField(default=1)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"order {self.pk} ({self.status})"


class OrderLine(models.Model):
    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="lines")
    product = models.ForeignKey(Product, on_delete=models.PROTECT)
    qty = models.PositiveIntegerField()
    unit_price = models.BigIntegerField()

    def __str__(self) -> str:
        return f"{self.qty} x {self.product_id}"


class Payment(models.Model):
    """Append-only ledger of balance changes: an account's balance is the sum of its payments."""

    class Kind(models.TextChoices):
        DEPOSIT = "deposit", "deposit"
        ORDER_DEBIT = "order_debit", "order debit"
        REFUND = "refund", "refund"

    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="payments")
    order = models.ForeignKey(
        Order, on_delete=models.PROTECT, null=True, blank=True, related_name="payments"
    )
    kind = models.CharField(max_length=16, choices=Kind.choices)
    amount = models.BigIntegerField(help_text="Signed: + credits the account, - debits it.")
    # Who moved the money, when it was not the owner's own order or cancel: every deposit, and an
    # order placed or cancelled by staff on someone else's account. Null: the owner (or a script).
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.kind} {self.amount:+d}"


class IdempotencyRecord(models.Model):
    """The first answer to a request with an Idempotency-Key, replayed for any retry of it."""

    scope = models.CharField(max_length=100, help_text='What the key belongs to: "account:7".')
    key = models.CharField(max_length=200)
    fingerprint = models.CharField(max_length=64, help_text="sha256 of the operation and input.")
    status_code = models.PositiveSmallIntegerField()
    response = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["scope", "key"], name="one_answer_per_key")]

    def __str__(self) -> str:
        return f"{self.scope} {self.key} -> {self.status_code}"


class ApiToken(models.Model):
    """A bearer token for API clients (``Authorization: Bearer <token>``); only its hash is kept,
    and its first characters, to tell tokens apart in lists. Created, listed and revoked with
    ``manage.py api_token`` (orders/tokens.py); revoked in the admin too. An expired or revoked
    token is refused (401); one without the scope a request needs gets 403. Scopes only narrow:
    the user's own permissions still apply."""

    SCOPES = ("orders:read", "orders:write", "accounts:deposit")
    DEFAULT_SCOPES = "orders:read orders:write"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    token_hash = models.CharField(max_length=64, unique=True)
    prefix = models.CharField(max_length=8, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)  # null: never
    revoked_at = models.DateTimeField(null=True, blank=True)
    scopes = models.CharField(
        max_length=200, default=DEFAULT_SCOPES, help_text="Space-separated: " + " ".join(SCOPES)
    )

    def __str__(self) -> str:
        return f"{self.prefix or '?'}... of user {self.user_id}"

    @property
    def scope_set(self) -> frozenset[str]:
        return frozenset(self.scopes.split())

    def refusal(self, *, now) -> str | None:
        """Why this token cannot be used now, or None."""
        if self.revoked_at is not None:
            return "token revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "token expired"
        return None


class StockChange(models.Model):
    """Append-only record of every stock change staff make (orders are recorded by their lines):
    who, by how much, why, and the stock it left."""

    product = models.ForeignKey(Product, on_delete=models.PROTECT, related_name="stock_changes")
    change = models.IntegerField()
    stock_after = models.IntegerField()
    reason = models.CharField(max_length=200)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.product_id} {self.change:+d} ({self.reason})"


class OrderConfirmation(models.Model):
    """The sent-marker of an order's confirmation mail, claimed in the transaction that sends it:
    a task run twice (a redelivery, a second publish) mails once."""

    order = models.OneToOneField(
        Order, on_delete=models.PROTECT, primary_key=True, related_name="confirmation"
    )
    sent_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"order {self.order_id} confirmed at {self.sent_at}"
