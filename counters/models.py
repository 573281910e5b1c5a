from django.db import models


class Counter(models.Model):
    """The truth about a durable counter: the sum of every delta applied to it."""

    key = models.CharField(max_length=200, primary_key=True)
    value = models.BigIntegerField(default=0)
    # Bumped by every batch that changes the row; the cache keeps the version it holds, so an
    # older durable value can never overwrite a newer one in Redis.
    version = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.key} = {self.value}"


class AppliedDelta(models.Model):
    """The ledger of applied deltas: a delta id is inserted in the same transaction that adds its
    amount to the counter, so a redelivered or duplicated delta is applied at most once (G2)."""

    delta_id = models.UUIDField(primary_key=True)
    key = models.CharField(max_length=200)
    amount = models.BigIntegerField()
    applied_at = models.DateTimeField(db_index=True)

    class Meta:
        indexes = [models.Index(fields=["key", "applied_at"])]

    def __str__(self) -> str:
        return f"{self.delta_id} {self.key} {self.amount:+d}"


class Article(models.Model):
    """Demo content whose views and likes are durable hot counters."""

    slug = models.SlugField(unique=True)
    title = models.CharField(max_length=200)
    body = models.TextField()

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.title

    @property
    def views_key(self) -> str:
        return f"article_views:{self.slug}"

    @property
    def likes_key(self) -> str:
        return f"article_likes:{self.slug}"
