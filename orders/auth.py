"""Who is calling the orders API: a bearer token (API clients) or a session (the site).

* ``Authorization: Bearer <token>`` (``manage.py api_token USERNAME`` makes one; only its sha256 is
  stored; an expired or revoked one is refused). No cookie is involved, so no CSRF check is needed.
* Otherwise the Django session; a state-changing request must then pass Django's CSRF check
  (the ``X-CSRFToken`` header), because a cookie is sent by the browser on its own.
"""

from django.middleware.csrf import CsrfViewMiddleware

from .tokens import TokenError, api_token_user, token_hash

__all__ = ["CsrfFailed", "NotAuthenticated", "can_use_account", "request_user", "token_hash"]


class NotAuthenticated(Exception):
    pass


class CsrfFailed(Exception):
    pass


def request_user(request):
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        try:
            return api_token_user(secret=header[7:].strip())
        except TokenError as exc:  # invalid, expired or revoked: 401 with the reason
            raise NotAuthenticated(str(exc)) from None
    if not request.user.is_authenticated:
        raise NotAuthenticated("log in or send Authorization: Bearer <token>")
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        rejected = CsrfViewMiddleware(lambda r: None).process_view(request, None, (), {})
        if rejected is not None:
            raise CsrfFailed("CSRF check failed (send the X-CSRFToken header)")
    return request.user


def can_use_account(user, account) -> bool:
    return user.is_staff or account.owner_id == user.pk
