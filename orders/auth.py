"""Who is calling the orders API: a bearer token (API clients) or a session (the site).

* ``Authorization: Bearer <token>`` (``manage.py api_token USERNAME`` makes one; only its sha256 is
  stored). No cookie is involved, so no CSRF check is needed.
* Otherwise the Django session; a state-changing request must then pass Django's CSRF check
  (the ``X-CSRFToken`` header), because a cookie is sent by the browser on its own.
"""

import hashlib

from django.middleware.csrf import CsrfViewMiddleware

from .models import ApiToken


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class NotAuthenticated(Exception):
    pass


class CsrfFailed(Exception):
    pass


def request_user(request):
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        token = (
            ApiToken.objects.select_related("user")
            .filter(token_hash=token_hash(header[7:].strip()))
            .first()
        )
        if token is None or not token.user.is_active:
            raise NotAuthenticated("invalid token")
        return token.user
    if not request.user.is_authenticated:
        raise NotAuthenticated("log in or send Authorization: Bearer <token>")
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        rejected = CsrfViewMiddleware(lambda r: None).process_view(request, None, (), {})
        if rejected is not None:
            raise CsrfFailed("CSRF check failed (send the X-CSRFToken header)")
    return request.user


def can_use_account(user, account) -> bool:
    return user.is_staff or account.owner_id == user.pk
