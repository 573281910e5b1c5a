import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from orders.auth import token_hash
from orders.models import ApiToken


class Command(BaseCommand):
    help = "Create an API bearer token for a user and print it (only its hash is stored)."

    def add_arguments(self, parser):
        parser.add_argument("username")

    def handle(self, *args, username: str, **options):
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"no user {username!r}")
        token = secrets.token_urlsafe(32)
        ApiToken.objects.create(user=user, token_hash=token_hash(token))
        self.stdout.write(token)
