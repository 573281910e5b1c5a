"""Who is calling the orders API, and what they may do with an account's money.

* ``Authorization: Bearer <token>`` (``manage.py api_token USERNAME`` makes one; only its sha256 is
  stored; an expired or revoked one is refused). No cookie is involved, so no CSRF check is needed.
  The token's scopes narrow what the request may do (``ApiToken.SCOPES``).
* Otherwise the Django session; a state-changing request must then pass Django's CSRF check
  (the ``X-CSRFToken`` header), because a cookie is sent by the browser on its own.

What a user may do is decided by ownership and model permissions, as in the admin (issue 26):
``is_staff`` alone grants nothing here. The owner may read their account and orders, place orders
and cancel them; anyone else needs the permission named in ``ACTIONS``. Depositing always needs
``orders.deposit``, for the owner too: a deposit is money with no payment behind it.
"""

from dataclasses import dataclass

from django.middleware.csrf import CsrfViewMiddleware

from .tokens import TokenError, api_token_get, token_hash

__all__ = [
    "ACTIONS",
    "Caller",
    "CsrfFailed",
    "NotAuthenticated",
    "NotPermitted",
    "may_act",
    "request_caller",
    "token_hash",
]


@dataclass(frozen=True)
class Rule:
    owner_may: bool  # the account's owner may, without a permission
    permission: str  # what anyone else (and the owner, if not owner_may) needs
    scope: str  # what a token needs


ACTIONS = {
    "view_account": Rule(owner_may=True, permission="orders.view_account", scope="orders:read"),
    "view_order": Rule(owner_may=True, permission="orders.view_order", scope="orders:read"),
    "place_order": Rule(owner_may=True, permission="orders.add_order", scope="orders:write"),
    "cancel_order": Rule(owner_may=True, permission="orders.change_order", scope="orders:write"),
    "deposit": Rule(owner_may=False, permission="orders.deposit", scope="accounts:deposit"),
}


class NotAuthenticated(Exception):
    pass


class CsrfFailed(Exception):
    pass


class NotPermitted(Exception):
    """Authenticated, but not allowed this (HTTP 403): the message says why."""


@dataclass(frozen=True)
class Caller:
    user: object
    scopes: frozenset[str] | None  # a token's; None: a session, narrowed by nothing

    def require(self, *, action: str, owner_id: int | None = None) -> None:
        """The token's scope first (it needs no account), then, given the account's owner, the
        user's right to act on it. NotPermitted says which is missing."""
        rule = ACTIONS[action]
        if self.scopes is not None and rule.scope not in self.scopes:
            raise NotPermitted(f"this token lacks the scope {rule.scope}")
        if owner_id is not None and not may_act(self.user, action=action, owner_id=owner_id):
            if rule.owner_may:  # the owner always may: this is someone else's account
                raise NotPermitted("this account is not yours")
            raise NotPermitted(f"this needs the {rule.permission} permission")


def may_act(user, *, action: str, owner_id: int) -> bool:
    """May ``user`` do ``action`` on an account owned by ``owner_id``? (Sessions and pages.)"""
    rule = ACTIONS[action]
    if not user.is_active:
        return False
    if rule.owner_may and owner_id == user.pk:
        return True
    return user.has_perm(rule.permission)


def request_caller(request) -> Caller:
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        try:
            token = api_token_get(secret=header[7:].strip())
        except TokenError as exc:  # invalid, expired or revoked: 401 with the reason
            raise NotAuthenticated(str(exc)) from None
        return Caller(user=token.user, scopes=token.scope_set)
    if not request.user.is_authenticated:
        raise NotAuthenticated("log in or send Authorization: Bearer <token>")
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        rejected = CsrfViewMiddleware(lambda r: None).process_view(request, None, (), {})
        if rejected is not None:
            raise CsrfFailed("CSRF check failed (send the X-CSRFToken header)")
    return Caller(user=request.user, scopes=None)
