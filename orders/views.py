"""Orders and accounts: JSON API (idempotent writes, cached reads) and the shop pages."""

import logging
import uuid

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from common.json_api import json_error, json_object_body
from tasks.policy import MAYBE_TRANSIENT, is_transient

from . import selectors, services
from .auth import Caller, CsrfFailed, NotAuthenticated, NotPermitted, may_act, request_caller
from .models import Account, Order

logger = logging.getLogger(__name__)


def _json_body(request) -> dict:
    return json_object_body(request, error=services.OrderInputError)


def _api(method: str):
    """Authentication, authorization errors and input errors as JSON, for every API view."""

    def decorate(view):
        @csrf_exempt  # checked in request_caller() for session requests; tokens need none
        def wrapped(request, *args, **kwargs):
            if request.method != method:
                return json_error(405, f"use {method}")
            try:
                caller = request_caller(request)
                return view(request, caller, *args, **kwargs)
            except NotAuthenticated as exc:
                return json_error(401, str(exc))
            except CsrfFailed as exc:
                return json_error(403, str(exc))
            except services.OrderInputError as exc:
                return json_error(400, str(exc))
            except services.IdempotencyConflict as exc:
                return json_error(422, str(exc))
            except (Account.DoesNotExist, Order.DoesNotExist) as exc:
                return json_error(404, str(exc))
            except NotPermitted as exc:
                return json_error(403, str(exc))
            except MAYBE_TRANSIENT as exc:
                if not is_transient(exc):
                    raise
                # PostgreSQL is unreachable: nothing was committed, or the commit's answer was
                # lost. Retrying with the same Idempotency-Key gives the one answer either way.
                logger.warning(
                    "API %s %s: database unavailable", request.method, request.path, exc_info=True
                )
                return json_error(
                    503, "the database is unavailable; retry with the same Idempotency-Key"
                )

        return wrapped

    return decorate


def _idempotency_key(request) -> str:
    key = request.headers.get("Idempotency-Key")
    if not key:
        raise services.OrderInputError("the Idempotency-Key header is required")
    return key


def _permitted_account(caller: Caller, account_id, *, action: str) -> Account:
    """The account, if the caller may do ``action`` on it (orders/auth.py); else 404 or 403."""
    caller.require(action=action)  # the token's scope: refused before anything is looked up
    account = selectors.account_get(account_id=account_id)
    if account is None:
        raise Account.DoesNotExist(f"no account {account_id}")
    caller.require(action=action, owner_id=account.owner_id)
    return account


def _respond(outcome: services.Outcome) -> JsonResponse:
    return JsonResponse(outcome.body, status=outcome.status)


@_api("POST")
def orders_create(request, caller):
    caller.require(action="place_order")
    key = _idempotency_key(request)
    payload = _json_body(request)
    unexpected = set(payload) - {"account", "lines"}
    if unexpected:
        raise services.OrderInputError(f"unexpected fields: {sorted(unexpected)}")
    account_id = payload.get("account")
    if isinstance(account_id, bool) or not isinstance(account_id, int):
        raise services.OrderInputError("account must be an integer id")
    _permitted_account(caller, account_id, action="place_order")
    outcome = services.order_place(
        account_id=account_id, lines=payload.get("lines"), idempotency_key=key, actor=caller.user
    )
    return _respond(outcome)


@_api("GET")
def order_detail(request, caller, order_id: int):
    caller.require(action="view_order")
    data = selectors.order_get_cached(order_id=order_id)
    if data is None:
        raise Order.DoesNotExist(f"no order {order_id}")
    _permitted_account(caller, data["account"], action="view_order")
    return JsonResponse(data)


@_api("POST")
def order_cancel(request, caller, order_id: int):
    caller.require(action="cancel_order")
    key = _idempotency_key(request)
    order = selectors.order_get(order_id=order_id)
    if order is None:
        raise Order.DoesNotExist(f"no order {order_id}")
    _permitted_account(caller, order.account_id, action="cancel_order")
    outcome = services.order_cancel(order_id=order_id, idempotency_key=key, actor=caller.user)
    return _respond(outcome)


@_api("GET")
def account_detail(request, caller, account_id: int):
    _permitted_account(caller, account_id, action="view_account")
    return JsonResponse(selectors.account_get_cached(account_id=account_id))


@_api("POST")
def account_deposit(request, caller, account_id: int):
    caller.require(action="deposit")
    key = _idempotency_key(request)
    payload = _json_body(request)
    if set(payload) != {"amount"}:
        raise services.OrderInputError('body must be {"amount": n}')
    _permitted_account(caller, account_id, action="deposit")
    outcome = services.account_deposit(
        account_id=account_id, amount=payload["amount"], idempotency_key=key, actor=caller.user
    )
    return _respond(outcome)


def _int_or_none(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


# --- pages ------------------------------------------------------------------------------------


@login_required
def shop(request):
    context = {
        "accounts": selectors.accounts_of(user=request.user),
        "products": selectors.products_list(),
        "orders": selectors.orders_of(user=request.user),
        "form_key": uuid.uuid4().hex,  # one idempotency key per rendered form: no double order
        "currency": settings.SHOP_CURRENCY,
    }
    return render(request, "orders/shop.html", context)


@login_required
@require_POST
def shop_order(request):
    account = selectors.account_get(account_id=_int_or_none(request.POST.get("account")))
    if account is None or not may_act(
        request.user, action="place_order", owner_id=account.owner_id
    ):
        raise Http404("no such account of yours")
    lines = [
        {"sku": sku, "qty": int(qty)}
        for sku, qty in zip(request.POST.getlist("sku"), request.POST.getlist("qty"), strict=False)
        if qty.isascii() and qty.isdigit() and len(qty) <= 6 and int(qty) > 0
    ]
    try:
        outcome = services.order_place(
            account_id=account.pk,
            lines=lines,
            idempotency_key=request.POST.get("form_key", ""),
            actor=request.user,
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
    account = selectors.account_get(account_id=order["account"])
    if account is None or not may_act(request.user, action="view_order", owner_id=account.owner_id):
        return redirect("shop")
    lines = [{**line, "amount": line["qty"] * line["unit_price"]} for line in order["lines"]]
    context = {
        "order": order,
        "lines": lines,
        "cancel_key": uuid.uuid4().hex,
        "may_cancel": may_act(request.user, action="cancel_order", owner_id=account.owner_id),
    }
    return render(request, "orders/order.html", context)


@login_required
@require_POST
def shop_order_cancel(request, order_id: int):
    order = selectors.order_get(order_id=order_id)
    if order is None or not may_act(
        request.user, action="cancel_order", owner_id=order.account.owner_id
    ):
        raise Http404("no such order of yours")
    outcome = services.order_cancel(
        order_id=order.pk, idempotency_key=request.POST.get("cancel_key", ""), actor=request.user
    )
    if outcome.status != 200:
        messages.error(request, outcome.body["error"])
    return redirect("shop_order_detail", order_id=order.pk)
