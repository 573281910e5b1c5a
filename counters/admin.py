from django.contrib import admin

from . import services
from .models import AppliedDelta, Article, Counter


@admin.register(Counter)
class CounterAdmin(admin.ModelAdmin):
    list_display = ["key", "value", "version", "pending", "cache_value", "updated_at"]
    search_fields = ["key"]
    readonly_fields = ["key", "value", "version", "updated_at"]

    def _reading(self, obj):
        return services.counter_get(key=obj.key)

    @admin.display(description="pending")
    def pending(self, obj) -> int:
        return self._reading(obj).pending

    @admin.display(description="cache value")
    def cache_value(self, obj) -> int:
        return self._reading(obj).value

    def has_add_permission(self, request) -> bool:
        return False  # counters change only through deltas

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # a deleted row would restart at 0 and refuse cache fills for good


@admin.register(AppliedDelta)
class AppliedDeltaAdmin(admin.ModelAdmin):
    list_display = ["delta_id", "key", "amount", "applied_at"]
    search_fields = ["key", "delta_id"]
    date_hierarchy = "applied_at"

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # a deleted id could be applied a second time (G2)


@admin.register(Article)
class ArticleAdmin(admin.ModelAdmin):
    list_display = ["title", "slug"]
    prepopulated_fields = {"slug": ["title"]}
