import os
import subprocess
import sys
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parents[2]
PRODUCTION_SECRETS = {
    "DJANGO_SETTINGS_MODULE": "project.settings.production",
    "DJANGO_SECRET_KEY": "x" * 20 + "production-secret-from-the-environment-" + "y" * 20,
    "DJANGO_ALLOWED_HOSTS": "shop.example.com",
}


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=BASE_DIR,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_production_settings_pass_check_deploy_when_given_their_secrets():
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=PRODUCTION_SECRETS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_production_settings_refuse_to_start_without_a_secret_key():
    env = {k: v for k, v in PRODUCTION_SECRETS.items() if k != "DJANGO_SECRET_KEY"}
    result = manage("check", env=env)
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY" in result.stderr


MAIL_SETTINGS = (
    "from django.conf import settings as s; print(s.EMAIL_BACKEND, s.EMAIL_HOST, s.EMAIL_PORT, "
    "s.EMAIL_HOST_USER, s.EMAIL_HOST_PASSWORD, s.EMAIL_USE_TLS, s.EMAIL_USE_SSL)"
)


def test_mail_is_configured_from_one_url_in_the_environment():
    env = {
        **PRODUCTION_SECRETS,
        "EMAIL_URL": "smtp+tls://shop%40example.com:s3cr%2Ft@mx.example.com:587",
    }
    result = manage("shell", "--no-imports", "-c", MAIL_SETTINGS, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "django.core.mail.backends.smtp.EmailBackend",
        "mx.example.com",
        "587",
        "shop@example.com",
        "s3cr/t",
        "True",
        "False",
    ]
    env["EMAIL_URL"] = "smtp+ssl://u:p@mx.example.com:465"  # implicit TLS (smtps means STARTTLS)
    assert manage("shell", "--no-imports", "-c", MAIL_SETTINGS, env=env).stdout.split()[-2:] == [
        "False",
        "True",
    ]


def test_without_a_mail_url_development_writes_mail_to_files():
    env = {"DJANGO_SETTINGS_MODULE": "project.settings.base", "EMAIL_URL": ""}
    result = manage(
        "shell",
        "--no-imports",
        "-c",
        "from django.conf import settings as s; print(s.EMAIL_BACKEND)",
        env=env,
    )
    assert result.stdout.strip() == "django.core.mail.backends.filebased.EmailBackend", (
        result.stderr
    )
