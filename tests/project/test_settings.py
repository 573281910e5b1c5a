import http.client
import os
import subprocess
import sys
from pathlib import Path

import pytest

from project.devservers import free_port

from ..helpers import wait_for

BASE_DIR = Path(__file__).resolve().parents[2]
PRODUCTION_SECRETS = {
    "DJANGO_SETTINGS_MODULE": "project.settings.production",
    "DJANGO_SECRET_KEY": "x" * 20 + "production-secret-from-the-environment-" + "y" * 20,
    "DJANGO_ALLOWED_HOSTS": "shop.example.com",
}
# What docker-compose.yml gives the web: the servers' URLs, each with its password.
PRODUCTION_SERVERS = {
    "DATABASE_URL": "postgres://app:db-pw@postgres:5432/app",
    "REDIS_URL": "redis://:cache-pw@redis:6379/0",
    "CELERY_BROKER_URL": "amqp://app:broker-pw@rabbitmq:5672//",
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
    env = {**PRODUCTION_SECRETS, **PRODUCTION_SERVERS}
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_check_deploy_refuses_a_cache_redis_without_a_password():
    """Issue 26 (8): write access to the cache Redis is write access to session copies."""
    env = {**PRODUCTION_SECRETS, **PRODUCTION_SERVERS, "REDIS_URL": "redis://redis:6379/0"}
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=env)
    assert result.returncode != 0 and "project.W001" in result.stderr, result.stderr
    # A Redis broker without a password too: whoever reaches it sends any task.
    env = {**PRODUCTION_SECRETS, **PRODUCTION_SERVERS, "CELERY_BROKER_URL": "redis://b:6379/0"}
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=env)
    assert result.returncode != 0 and "project.W002" in result.stderr, result.stderr
    env["CELERY_BROKER_URL"] = "redis://:broker-pw@b:6379/0"
    assert manage("check", "--deploy", "--fail-level", "WARNING", env=env).returncode == 0


def test_check_deploy_refuses_production_without_a_secret_key():
    env = {**PRODUCTION_SERVERS, **PRODUCTION_SECRETS}
    del env["DJANGO_SECRET_KEY"]
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=env)
    assert result.returncode != 0 and "security.W009" in result.stderr, result.stderr


# --- Issue 26 (11): the public development key only where a process says it is development -----

SIGN = "from django.core import signing; print(signing.dumps('admin'))"


def test_without_settings_or_secret_nothing_is_signed_with_the_public_key():
    """The exploit: a process started without DJANGO_SETTINGS_MODULE (base settings) used to sign
    with the key written in base.py, so anyone could forge what it signs."""
    refused = manage("shell", "--no-imports", "-c", SIGN, env={})
    assert refused.returncode != 0 and "SECRET_KEY" in refused.stderr, refused.stdout
    assert "insecure-development-key" not in refused.stdout
    # Development says so, and then may use it; an explicit key is used as it is.
    allowed = manage("shell", "--no-imports", "-c", SIGN, env={"DJANGO_DEVELOPMENT": "true"})
    assert allowed.returncode == 0 and allowed.stdout.strip(), allowed.stderr
    given = manage("shell", "--no-imports", "-c", SIGN, env={"DJANGO_SECRET_KEY": "k" * 50})
    assert given.returncode == 0 and given.stdout != allowed.stdout
    # Production never takes it, whatever DJANGO_DEVELOPMENT says.
    env = {**PRODUCTION_SECRETS, "DJANGO_DEVELOPMENT": "true"}
    del env["DJANGO_SECRET_KEY"]
    assert manage("shell", "--no-imports", "-c", SIGN, env=env).returncode != 0


def gunicorn(env: dict[str, str], *extra: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    argv = [sys.executable, "-m", "gunicorn", "project.wsgi:application", "--workers", "1"]
    argv += ["--bind", f"127.0.0.1:{port}", *extra]
    process = subprocess.Popen(
        argv,
        cwd=BASE_DIR,
        env={**clean, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    return process, port


@pytest.mark.parametrize(
    "env",
    [{}, {"DJANGO_SETTINGS_MODULE": "project.settings.production", "DJANGO_ALLOWED_HOSTS": "x"}],
    ids=["no settings module", "production"],
)
def test_the_web_refuses_to_start_without_a_secret_key(env):
    process, _ = gunicorn(env)
    try:
        output, _ = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode != 0
    assert "DJANGO_SECRET_KEY is not set" in output, output


def get(port: int, path: str, *, source: str, headers: dict[str, str]) -> tuple[int, str]:
    connection = http.client.HTTPConnection(
        "127.0.0.1", port, timeout=10, source_address=(source, 0)
    )
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        return response.status, response.getheader("Location") or ""
    finally:
        connection.close()


def test_gunicorn_believes_x_forwarded_proto_from_the_proxy_only():
    """Issue 26 (7): production learns HTTPS from gunicorn's wsgi.url_scheme, which believes
    X-Forwarded-Proto only from forwarded_allow_ips (compose: the proxy's subnet). Here the proxy
    is 127.0.0.2; a client at 127.0.0.3 claiming HTTPS is still on plain HTTP, and redirected."""
    env = {**PRODUCTION_SECRETS, "FORWARDED_ALLOW_IPS": "127.0.0.2"}
    process, port = gunicorn(env)
    try:
        wait_for(lambda: process.poll() is not None or _answers(port), what="gunicorn to listen")
        assert process.poll() is None
        headers = {"Host": "shop.example.com", "X-Forwarded-Proto": "https"}
        status, _ = get(port, "/healthz", source="127.0.0.2", headers=headers)
        assert status in (200, 503)  # served: the proxy said HTTPS
        status, location = get(port, "/healthz", source="127.0.0.3", headers=headers)
        assert (status, location) == (301, "https://shop.example.com/healthz")
    finally:
        process.kill()
        process.communicate(timeout=30)


def _answers(port: int) -> bool:
    try:
        get(port, "/healthz", source="127.0.0.1", headers={"Host": "shop.example.com"})
    except OSError:
        return False
    return True


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
