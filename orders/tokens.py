"""API bearer tokens: create (the secret is shown once; its sha256 and first characters are
kept), list, revoke. ``manage.py api_token`` and the admin call these.

A token expires after ``API_TOKEN_DEFAULT_EXPIRY_DAYS`` unless told otherwise (a forgotten token
should not work for ever; never expiring is an explicit choice), and carries scopes
(``ApiToken.SCOPES``) that narrow what it may do; the user's permissions still apply."""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from .models import ApiToken

PREFIX_LENGTH = 8
MAX_EXPIRY_DAYS = 3650


class TokenError(Exception):
    """Bad input to a token service: nothing was changed."""


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _user(username: str):
    user = get_user_model().objects.filter(username=username).first()
    if user is None:
        raise TokenError(f"no user {username!r}")
    return user


def _scopes(scopes: list[str] | None) -> str:
    if scopes is None:
        return ApiToken.DEFAULT_SCOPES
    # "--scope a --scope b" and "--scope a,b" (or "a b") alike.
    given = [part for item in scopes for part in item.replace(",", " ").split()]
    unknown = sorted(set(given) - set(ApiToken.SCOPES))
    if unknown or not given:
        raise TokenError(
            f"unknown scope {', '.join(unknown) or '(none given)'}; "
            f"scopes are {', '.join(ApiToken.SCOPES)}"
        )
    return " ".join(scope for scope in ApiToken.SCOPES if scope in given)


def api_token_create(
    *,
    username: str,
    expires_in_days: int | None = None,
    never_expires: bool = False,
    scopes: list[str] | None = None,
) -> tuple[str, ApiToken]:
    """A new token for the user: (the secret, to show once; its row). It expires after
    ``expires_in_days``, else ``API_TOKEN_DEFAULT_EXPIRY_DAYS``; never only if ``never_expires``.
    ``scopes``: from ``ApiToken.SCOPES``; None: ``ApiToken.DEFAULT_SCOPES``."""
    if never_expires and expires_in_days is not None:
        raise TokenError("give --expires-in or --no-expiry, not both")
    if expires_in_days is None and not never_expires:
        expires_in_days = settings.API_TOKEN_DEFAULT_EXPIRY_DAYS
    if expires_in_days is not None and not 1 <= expires_in_days <= MAX_EXPIRY_DAYS:
        raise TokenError(f"--expires-in must be between 1 and {MAX_EXPIRY_DAYS} days")
    scope_text = _scopes(scopes)
    user = _user(username)
    secret = secrets.token_urlsafe(32)
    expires_at = None
    if expires_in_days is not None:
        expires_at = timezone.now() + dt.timedelta(days=expires_in_days)
    token = ApiToken.objects.create(
        user=user,
        token_hash=token_hash(secret),
        prefix=secret[:PREFIX_LENGTH],
        expires_at=expires_at,
        scopes=scope_text,
    )
    return secret, token


def api_tokens_of(*, username: str) -> list[ApiToken]:
    return list(ApiToken.objects.filter(user=_user(username)).order_by("created_at", "pk"))


def api_token_revoke(*, username: str, prefix: str) -> int:
    """Revoke the user's tokens that start with ``prefix`` (at least 4 characters, so that a
    typo cannot revoke every token); how many were revoked. Revoking twice changes nothing."""
    if len(prefix) < 4:
        raise TokenError("give at least the first 4 characters of the token (see --list)")
    user = _user(username)
    with transaction.atomic():
        # The whole token works too: only its first characters are kept.
        ids = list(
            ApiToken.objects.select_for_update()
            .filter(user=user, prefix__startswith=prefix[:PREFIX_LENGTH])
            .order_by("pk")
            .values_list("pk", flat=True)
        )
        if not ids:
            raise TokenError(f"no token of {username!r} starts with {prefix!r}")
        return api_tokens_revoke(ids=ids)


def api_tokens_revoke(*, ids: list[int]) -> int:
    """Revoke these tokens (the admin's action); how many were not revoked before."""
    return ApiToken.objects.filter(pk__in=ids, revoked_at__isnull=True).update(
        revoked_at=timezone.now()
    )


def api_token_get(*, secret: str) -> ApiToken:
    """The usable token presented (its ``user`` loaded, and active); TokenError says why not."""
    token = ApiToken.objects.select_related("user").filter(token_hash=token_hash(secret)).first()
    if token is None or not token.user.is_active:
        raise TokenError("invalid token")
    refusal = token.refusal(now=timezone.now())
    if refusal:
        raise TokenError(refusal)
    return token


def api_token_user(*, secret: str):
    """The active user a presented token belongs to; TokenError says why not."""
    return api_token_get(secret=secret).user
