from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Create the demo data and the admin user (idempotent; run by `make run`)."

    def handle(self, *args, **options) -> None:
        username = settings.DJANGO_ADMIN_USER
        password = settings.DJANGO_ADMIN_PASSWORD
        if not password:
            raise CommandError("DJANGO_ADMIN_PASSWORD is not set; `make run` generates one.")
        user, created = get_user_model().objects.get_or_create(
            username=username, defaults={"is_staff": True, "is_superuser": True}
        )
        user.is_staff = user.is_superuser = True
        user.set_password(password)
        user.save()
        self.stdout.write(f"admin user {username!r} {'created' if created else 'updated'}")
