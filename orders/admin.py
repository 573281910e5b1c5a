from django.contrib import admin

from .models import Account, IdempotencyRecord, Order, OrderLine, Payment, Product


class PaymentInline(admin.TabularInline):
    """The payment ledger is append-only: shown, never edited."""

    model = Payment
    extra = 0
    can_delete = False
    readonly_fields = ["kind", "amount", "order", "created_at"]

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Account)
class AccountAdmin(admin.ModelAdmin):
    list_display = ["id", "name", "owner", "balance", "version"]
    readonly_fields = ["balance", "version"]  # balances change only through services
    inlines = [PaymentInline]


@admin.register(Product)
class ProductAdmin(admin.ModelAdmin):
    list_display = ["sku", "name", "price", "stock", "version"]
    search_fields = ["sku", "name"]
    readonly_fields = ["version"]


class OrderLineInline(admin.TabularInline):
    model = OrderLine
    extra = 0
    can_delete = False
    readonly_fields = ["product", "qty", "unit_price"]

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Order)
class OrderAdmin(admin.ModelAdmin):
    list_display = ["id", "account", "status", "total", "created_at"]
    list_filter = ["status"]
    readonly_fields = ["account", "status", "total", "version", "created_at"]
    inlines = [OrderLineInline]

    def has_add_permission(self, request) -> bool:
        return False


@admin.register(IdempotencyRecord)
class IdempotencyRecordAdmin(admin.ModelAdmin):
    list_display = ["scope", "key", "status_code", "created_at"]
    search_fields = ["scope", "key"]

    def has_change_permission(self, request, obj=None) -> bool:
        return False
