import uuid

from django import forms
from django.contrib import admin, messages

from . import staff
from .models import (
    Account,
    ApiToken,
    IdempotencyRecord,
    Order,
    OrderLine,
    Payment,
    Product,
    StockChange,
)
from .services import IdempotencyConflict, OrderInputError, account_deposit, order_cancel
from .tokens import api_tokens_revoke


class PaymentInline(admin.TabularInline):
    """The payment ledger is append-only: shown, never edited."""

    model = Payment
    extra = 0
    can_delete = False
    readonly_fields = ["kind", "amount", "order", "actor", "created_at"]

    def has_add_permission(self, request, obj=None) -> bool:
        return False


def _changed(form, fields) -> dict:
    return {name: form.cleaned_data[name] for name in form.changed_data if name in fields}


class AccountForm(forms.ModelForm):
    deposit = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=10**9,
        help_text="Deposit this amount (minor units), through the deposit service.",
    )
    # One idempotency key per rendered form: a double submit deposits once.
    deposit_key = forms.CharField(required=False, widget=forms.HiddenInput)

    class Meta:
        model = Account
        fields = ["name", "owner"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not self.is_bound:
            self.initial["deposit_key"] = uuid.uuid4().hex


@admin.register(Account)
class AccountAdmin(admin.ModelAdmin):
    form = AccountForm
    list_display = ["id", "name", "owner", "balance", "version"]
    readonly_fields = ["balance", "version"]  # balances change only through services

    def get_readonly_fields(self, request, obj=None):
        # An existing account's owner is not edited: the owner may spend the balance, so moving
        # it would let anyone with change_account take over a customer's money.
        return [*self.readonly_fields, "owner"] if obj else self.readonly_fields

    inlines = [PaymentInline]

    def _may_deposit(self, request) -> bool:
        # change_account lets staff rename an account; crediting it is a grant of its own.
        return request.user.has_perm("orders.deposit")

    def get_fields(self, request, obj=None):
        fields = ["name", "owner", "balance", "version"]
        return [*fields, "deposit", "deposit_key"] if obj and self._may_deposit(request) else fields

    def get_form(self, request, obj=None, **kwargs):
        form = super().get_form(request, obj, **kwargs)
        if not self._may_deposit(request):
            # Declared form fields survive get_fields(): drop them, so a deposit posted by hand
            # is ignored, not made. (A fresh class per call: this changes no other request.)
            form.base_fields.pop("deposit", None)
            form.base_fields.pop("deposit_key", None)
        return form

    def save_model(self, request, obj, form, change) -> None:
        if not change:
            super().save_model(request, obj, form, change)
            return
        # Only the fields this form changed, under the row lock, with a new version (the cached
        # copy is replaced after the commit); never the balance the form was opened with.
        changes = _changed(form, staff.ACCOUNT_FIELDS)
        if changes:
            staff.account_update(account_id=obj.pk, changes=changes)
        amount = form.cleaned_data.get("deposit")
        if amount and self._may_deposit(request):
            key = form.cleaned_data.get("deposit_key") or uuid.uuid4().hex
            try:
                outcome = account_deposit(
                    account_id=obj.pk,
                    amount=amount,
                    idempotency_key=f"admin-deposit:{key}",
                    actor=request.user,
                )
            except IdempotencyConflict:  # the form's key reused with another amount
                messages.error(
                    request, "This deposit form was submitted before with another amount."
                )
            else:
                if outcome.replayed:
                    messages.warning(
                        request, "This deposit form was submitted before: not repeated."
                    )
        obj.refresh_from_db()

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # an account with payments is history


class ProductForm(forms.ModelForm):
    stock_change = forms.IntegerField(
        required=False, help_text="Add (or, negative, remove) this many units, under a row lock."
    )
    stock_change_reason = forms.CharField(
        required=False, max_length=200, help_text="Why the stock changes (recorded)."
    )

    class Meta:
        model = Product
        fields = ["sku", "name", "price", "stock"]

    def clean(self):
        data = super().clean()
        if data.get("stock_change") and not (data.get("stock_change_reason") or "").strip():
            self.add_error("stock_change_reason", "Say why the stock changes.")
        return data


class StockChangeInline(admin.TabularInline):
    """Append-only: who changed the stock, by how much, why."""

    model = StockChange
    extra = 0
    can_delete = False
    fields = readonly_fields = ["created_at", "change", "stock_after", "reason", "actor"]

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Product)
class ProductAdmin(admin.ModelAdmin):
    form = ProductForm
    list_display = ["sku", "name", "price", "stock", "version"]
    search_fields = ["sku", "name"]
    inlines = [StockChangeInline]

    def get_readonly_fields(self, request, obj=None):
        # The stock of an existing product changes through orders and stock changes only.
        return ["stock", "version"] if obj else ["version"]

    def get_fields(self, request, obj=None):
        fields = ["sku", "name", "price", "stock", "version"]
        return [*fields, "stock_change", "stock_change_reason"] if obj else fields

    def save_model(self, request, obj, form, change) -> None:
        if not change:
            super().save_model(request, obj, form, change)
            return
        changes = _changed(form, staff.PRODUCT_FIELDS)
        try:
            if changes:
                staff.product_update(product_id=obj.pk, changes=changes)
            if form.cleaned_data.get("stock_change"):
                staff.product_stock_adjust(
                    product_id=obj.pk,
                    change=form.cleaned_data["stock_change"],
                    reason=form.cleaned_data["stock_change_reason"],
                    actor=request.user,
                )
        except OrderInputError as exc:
            messages.error(request, str(exc))
        obj.refresh_from_db()

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # ordered products are history


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
    actions = ["cancel_and_refund"]

    # Refunding moves money: change_order, not the view permission that lists the orders.
    @admin.action(
        description="Cancel and refund the selected orders (restocks)", permissions=["change"]
    )
    def cancel_and_refund(self, request, queryset) -> None:
        # Through the cancel service; one key per order, so a second click refunds nothing more.
        # The key is in the staff's idempotency scope, which no customer request writes into;
        # an order that cannot be cancelled is reported and the others still are.
        done = already = 0
        for order_id in queryset.order_by("pk").values_list("pk", flat=True):
            try:
                outcome = order_cancel(
                    order_id=order_id,
                    idempotency_key=f"admin-cancel:{order_id}",
                    actor=request.user,
                    staff_action=True,
                )
            except (IdempotencyConflict, OrderInputError, Order.DoesNotExist) as exc:
                messages.error(request, f"Order {order_id} was not cancelled: {exc}")
                continue
            if outcome.status == 200 and not outcome.replayed:
                done += 1
            else:
                already += 1
        messages.info(request, f"{done} cancelled and refunded; {already} already cancelled.")

    def has_add_permission(self, request) -> bool:
        return False


@admin.register(IdempotencyRecord)
class IdempotencyRecordAdmin(admin.ModelAdmin):
    list_display = ["scope", "key", "status_code", "created_at"]
    search_fields = ["scope", "key"]

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Tokens are created with ``manage.py api_token`` (the secret is shown once); here they are
    listed (first characters, never the token) and revoked."""

    list_display = ["prefix", "user", "scopes", "created_at", "expires_at", "revoked_at", "state"]
    list_filter = ["revoked_at"]
    search_fields = ["user__username", "prefix"]
    readonly_fields = ["user", "prefix", "scopes", "created_at", "expires_at", "revoked_at"]
    exclude = ["token_hash"]
    actions = ["revoke"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # revoked, not deleted: the list keeps who had access

    @admin.display(description="state")
    def state(self, obj: ApiToken) -> str:
        from django.utils import timezone

        return obj.refusal(now=timezone.now()) or "active"

    @admin.action(description="Revoke the selected tokens", permissions=["change"])
    def revoke(self, request, queryset) -> None:
        count = api_tokens_revoke(ids=list(queryset.values_list("pk", flat=True)))
        self.message_user(request, f"{count} token(s) revoked.", messages.SUCCESS)
