"""Issue 26 (11): the admin user is created once. `make run` and every `compose up` run
seed_demo; an admin whose password was rotated, or who was disabled or demoted, stays so."""

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

pytestmark = pytest.mark.django_db


def test_the_admin_is_created_once_and_never_reset(settings, cache_redis):
    settings.DJANGO_ADMIN_USER, settings.DJANGO_ADMIN_PASSWORD = "admin", "first-password-1"
    call_command("seed_demo", "--admin-only")
    admin = get_user_model().objects.get(username="admin")
    assert admin.is_superuser and admin.is_staff and admin.check_password("first-password-1")

    # The operator rotates the password and takes superuser away; .env still holds the first.
    admin.set_password("rotated-password-2")
    admin.is_superuser = False
    admin.save()
    call_command("seed_demo", "--admin-only")  # the next `compose up`
    call_command("seed_demo")  # the next `make run`, with the demo data
    admin.refresh_from_db()
    assert admin.check_password("rotated-password-2")
    assert not admin.check_password("first-password-1")
    assert not admin.is_superuser

    admin.is_active = False  # disabled
    admin.save()
    call_command("seed_demo", "--admin-only")
    admin.refresh_from_db()
    assert not admin.is_active


def test_an_existing_admin_needs_no_password_in_the_environment(settings, cache_redis):
    settings.DJANGO_ADMIN_USER, settings.DJANGO_ADMIN_PASSWORD = "admin", ""
    with pytest.raises(CommandError, match="DJANGO_ADMIN_PASSWORD"):
        call_command("seed_demo", "--admin-only")  # first start: it must be given
    assert not get_user_model().objects.exists()
    get_user_model().objects.create_superuser("admin", password="made-by-hand-3")
    call_command("seed_demo", "--admin-only")  # later starts: it may have left .env
    assert get_user_model().objects.get(username="admin").check_password("made-by-hand-3")
