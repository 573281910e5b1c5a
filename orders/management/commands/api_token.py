from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from orders.models import ApiToken
from orders.tokens import TokenError, api_token_create, api_token_revoke, api_tokens_of


def _age(delta) -> str:
    days = delta.days
    return f"{days} d" if days else f"{int(delta.total_seconds() // 3600)} h"


class Command(BaseCommand):
    help = (
        "API bearer tokens of a user: create one and print it (only its hash and first "
        "characters are stored), --list them (first characters, scopes and age, never the "
        "token), or --revoke one by its first characters."
    )

    def add_arguments(self, parser):
        parser.add_argument("username")
        action = parser.add_mutually_exclusive_group()
        action.add_argument(
            "--expires-in",
            type=int,
            metavar="DAYS",
            help="the new token expires after DAYS days (default: "
            f"API_TOKEN_DEFAULT_EXPIRY_DAYS, here {settings.API_TOKEN_DEFAULT_EXPIRY_DAYS})",
        )
        action.add_argument(
            "--no-expiry", action="store_true", help="the new token never expires (explicitly)"
        )
        action.add_argument("--list", action="store_true", help="list the user's tokens")
        action.add_argument("--revoke", metavar="PREFIX", help="revoke the token(s) starting so")
        parser.add_argument(
            "--scope",
            action="append",
            metavar="SCOPE",
            help=f"what the new token may do, repeatable or comma-separated: "
            f"{', '.join(ApiToken.SCOPES)} (default: {ApiToken.DEFAULT_SCOPES})",
        )

    def handle(
        self,
        *args,
        username: str,
        expires_in,
        no_expiry: bool,
        list: bool,
        revoke,
        scope,
        **options,
    ):
        try:
            if scope is not None and (list or revoke is not None):
                raise TokenError("--scope is for a new token, not with --list or --revoke")
            if list:
                self._list(username)
            elif revoke is not None:
                count = api_token_revoke(username=username, prefix=revoke)
                self.stdout.write(f"revoked {count} token(s) of {username!r} starting {revoke!r}")
            else:
                secret, _ = api_token_create(
                    username=username,
                    expires_in_days=expires_in,
                    never_expires=no_expiry,
                    scopes=scope,
                )
                self.stdout.write(secret)
        except TokenError as exc:
            raise CommandError(str(exc)) from None

    def _list(self, username: str) -> None:
        now = timezone.now()
        tokens = api_tokens_of(username=username)
        if not tokens:
            self.stdout.write(f"{username!r} has no tokens")
        for token in tokens:
            state = token.refusal(now=now) or (
                f"expires in {_age(token.expires_at - now)}" if token.expires_at else "active"
            )
            age = _age(now - token.created_at)
            self.stdout.write(
                f"{token.prefix or '?':8}...  [{token.scopes}]  created {age} ago  {state}"
            )
