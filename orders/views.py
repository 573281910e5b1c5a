"""Orders and accounts: JSON API (idempotent writes, cached reads) and the shop pages."""

import json
import logging
import uuid

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from tasks.policy import MAYBE_TRANSIENT, is_transient

from . import selectors, services
from .auth import CsrfFailed, NotAuthenticated, can_use_account, request_user
from .models import Account, Order, Product

logger = logging.getLogger(__name__)


def _error(status: int, message: str) -> JsonResponse:
    return JsonResponse({"error": message}, status=status)


class NotYourAccount(Exception):
    """The account exists but belongs to someone else (HTTP 403)."""


def _json_body(request) -> dict:
    try:
        payload = json.loads(request.body or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise services.OrderInputError(f"body is not valid JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise services.OrderInputError("body must be a JSON object")
    return payload


def _api(method: str):
    """Authentication, authorization errors and input errors as JSON, for every API view."""

    def decorate(view):
        @csrf_exempt  # checked in request_user() for session requests; tokens need none
        def wrapped(request, *args, **kwargs):
            if request.method != method:
                return _error(405, f"use {method}")
            try:
                user = request_user(request)
                return view(request, user, *args, **kwargs)
            except NotAuthenticated as exc:
                return _error(401, str(exc))
            except CsrfFailed as exc:
                return _error(403, str(exc))
            except services.OrderInputError as exc:
                return _error(400, str(exc))
            except services.IdempotencyConflict as exc:
                return _error(422, str(exc))
            except (Account.DoesNotExist, Order.DoesNotExist) as exc:
                return _error(404, str(exc))
            except NotYourAccount:
                return _error(403, "this account is not yours")
            except MAYBE_TRANSIENT as exc:
                if not is_transient(exc):
                    raise
                # PostgreSQL is unreachable: nothing was committed, or the commit's answer was
                # lost. Retrying with the same Idempotency-Key gives the one answer either way.
                logger.warning(
                    "API %s %s: database unavailable", request.method, request.path, exc_info=True
                )
                return _error(
                    503, "the database is unavailable; retry with the same Idempotency-Key"
                )

        return wrapped

    return decorate


def _idempotency_key(request) -> str:
    key = request.headers.get("Idempotency-Key")
    if not key:
        raise services.OrderInputError("the Idempotency-Key header is required")
    return key


def _owned_account(user, account_id) -> Account:
    account = Account.objects.filter(pk=account_id).first() if isinstance(account_id, int) else None
    if account is None:
        raise Account.DoesNotExist(f"no account {account_id}")
    if not can_use_account(user, account):
        raise NotYourAccount
    return account


def _respond(outcome: services.Outcome) -> JsonResponse:
    return JsonResponse(outcome.body, status=outcome.status)


@_api("POST")
def orders_create(request, user):
    key = _idempotency_key(request)
    payload = _json_body(request)
    unexpected = set(payload) - {"account", "lines"}
    if unexpected:
        raise services.OrderInputError(f"unexpected fields: {sorted(unexpected)}")
    account_id = payload.get("account")
    if isinstance(account_id, bool) or not isinstance(account_id, int):
        raise services.OrderInputError("account must be an integer id")
    _owned_account(user, account_id)
    outcome = services.order_place(
        account_id=account_id, lines=payload.get("lines"), idempotency_key=key
    )
    return _respond(outcome)


@_api("GET")
def order_detail(request, user, order_id: int):
    data = selectors.order_get_cached(order_id=order_id)
    if data is None:
        raise Order.DoesNotExist(f"no order {order_id}")
    _owned_account(user, data["account"])
    return JsonResponse(data)


@_api("POST")
def order_cancel(request, user, order_id: int):
    key = _idempotency_key(request)
    order = Order.objects.filter(pk=order_id).first()
    if order is None:
        raise Order.DoesNotExist(f"no order {order_id}")
    _owned_account(user, order.account_id)
    return _respond(services.order_cancel(order_id=order_id, idempotency_key=key))


@_api("GET")
def account_detail(request, user, account_id: int):
    _owned_account(user, account_id)
    return JsonResponse(selectors.account_get_cached(account_id=account_id))


@_api("POST")
def account_deposit(request, user, account_id: int):
    key = _idempotency_key(request)
    payload = _json_body(request)
    if set(payload) != {"amount"}:
        raise services.OrderInputError('body must be {"amount": n}')
    _owned_account(user, account_id)
    outcome = services.account_deposit(
        account_id=account_id, amount=payload["amount"], idempotency_key=key
    )
    return _respond(outcome)


# --- pages ------------------------------------------------------------------------------------


@login_required
def shop(request):
    accounts = [
        selectors.account_get_cached(account_id=a.pk)
        for a in Account.objects.filter(owner=request.user).order_by("pk")
    ]
    orders = Order.objects.filter(account__owner=request.user).order_by("-pk")[:20]
    context = {
        "accounts": accounts,
        "products": Product.objects.order_by("sku"),
        "orders": orders,
        "form_key": uuid.uuid4().hex,  # one idempotency key per rendered form: no double order
    }
    return render(request, "orders/shop.html", context)


@login_required
@require_POST
def shop_order(request):
    account = get_object_or_404(Account, pk=request.POST.get("account"), owner=request.user)
    lines = [
        {"sku": sku, "qty": int(qty)}
        for sku, qty in zip(request.POST.getlist("sku"), request.POST.getlist("qty"), strict=False)
        if qty.isdigit() and int(qty) > 0
    ]
    try:
        outcome = services.order_place(
            account_id=account.pk, lines=lines, idempotency_key=request.POST.get("form_key", "")
        )
    except (services.OrderInputError, services.IdempotencyConflict) as exc:
        messages.error(request, str(exc))
        return redirect("shop")
    if outcome.status != 201:
        messages.error(request, outcome.body["error"])
        return redirect("shop")
    return redirect("shop_order_detail", order_id=outcome.body["id"])


@login_required
def shop_order_detail(request, order_id: int):
    order = selectors.order_get_cached(order_id=order_id)
    if order is None:
        return redirect("shop")
    account = get_object_or_404(Account, pk=order["account"])
    if not can_use_account(request.user, account):
        return redirect("shop")
    return render(request, "orders/order.html", {"order": order, "cancel_key": uuid.uuid4().hex})


@login_required
@require_POST
def shop_order_cancel(request, order_id: int):
    order = get_object_or_404(Order, pk=order_id, account__owner=request.user)
    outcome = services.order_cancel(
        order_id=order.pk, idempotency_key=request.POST.get("cancel_key", "")
    )
    if outcome.status != 200:
        messages.error(request, outcome.body["error"])
    return redirect("shop_order_detail", order_id=order.pk)
