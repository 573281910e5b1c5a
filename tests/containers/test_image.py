"""The built image, run as docker-compose.yml runs it: each service's command, environment and
hardening (read-only, a tmpfs /tmp, no capabilities, no-new-privileges, the image's app user),
read from the compose file, against this machine's PostgreSQL, Redis and RabbitMQ. The
containers share the host's network (``--network host``): they reach the servers on 127.0.0.1,
and the web listens on 127.0.0.1 only; nothing leaves the machine.

Skipped unless CONTAINER_TESTS=1: ``make test-containers`` builds the image (``make image``)
and runs this. CONTAINER_IMAGE names another image; DOCKER another client.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest
import yaml

pytestmark = pytest.mark.skipif(
    os.environ.get("CONTAINER_TESTS") != "1",
    reason="container tests run with CONTAINER_TESTS=1 (make test-containers)",
)

ROOT = Path(__file__).resolve().parents[2]
IMAGE = os.environ.get("CONTAINER_IMAGE", "fast-counters-safe-orders")
DOCKER = os.environ.get("DOCKER", "docker")
POSTGRES = os.environ.get("CONTAINER_TEST_POSTGRES", "postgres://postgres@127.0.0.1:5432")
REDIS = os.environ.get("CONTAINER_TEST_REDIS", "redis://127.0.0.1:6379/12")
AMQP_HOST = "127.0.0.1:5672"
RABBITMQ_API = "http://127.0.0.1:15672"
RABBITMQ_USER = ("guest", "guest")
# As the compose file's health check asks: a Host the site allows, the HTTPS a proxy ended.
HEADERS = {"Host": "localhost", "X-Forwarded-Proto": "https"}


def docker(*args: str, timeout: float = 120, check: bool = True, env: dict | None = None):
    return subprocess.run(
        [DOCKER, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
        env=env,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _interpolate(value: str, variables: dict[str, str]) -> str:
    """Compose's ``${NAME}``, ``${NAME:-default}``, ``${NAME:?message}`` and ``$$``."""

    def one(match: re.Match) -> str:
        name, op, arg = match["name"], match["op"], match["arg"] or ""
        if name in variables:
            return variables[name]
        if op == ":?":
            raise KeyError(f"the compose file needs {name}: {arg}")
        return arg if op == ":-" else ""

    pattern = r"(?<!\$)\$\{(?P<name>[A-Z0-9_]+)(?:(?P<op>:-|:\?)(?P<arg>[^}]*))?\}"
    return re.sub(pattern, one, str(value)).replace("$$", "$")


class Compose:
    """docker-compose.yml, read as compose reads it (merge keys, interpolation)."""

    def __init__(self, variables: dict[str, str], overrides: dict[str, str]):
        self.spec = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
        self.variables = variables
        self.overrides = overrides

    def service(self, name: str) -> dict:
        return self.spec["services"][name]

    def command(self, name: str) -> list[str]:
        return [_interpolate(part, self.variables) for part in self.service(name)["command"]]

    def environment(self, name: str) -> dict[str, str]:
        env = {}
        for key, value in (self.service(name).get("environment") or {}).items():
            env[key] = self.overrides.get(key, _interpolate(value, self.variables))
        return env

    def hardening(self, name: str) -> list[str]:
        spec = self.service(name)
        args = ["--read-only"] if spec.get("read_only") else []
        args += [f"--tmpfs={path}" for path in spec.get("tmpfs", [])]
        args += [f"--cap-drop={cap}" for cap in spec.get("cap_drop", [])]
        args += [f"--cap-add={cap}" for cap in spec.get("cap_add", [])]
        args += [f"--security-opt={opt}" for opt in spec.get("security_opt", [])]
        return args


class Stack:
    """Containers of one test run, named after it, removed at the end (logs kept on failure)."""

    def __init__(self, compose: Compose, run_id: str):
        self.compose = compose
        self.run_id = run_id
        self.names: list[str] = []

    def _args(self, service: str, env: dict[str, str]) -> list[str]:
        return [
            "--network=host",
            *self.compose.hardening(service),
            *(f"--env={key}" for key in env),  # values from the client's environment
        ]

    def run_once(self, service: str, extra_env: dict | None = None, timeout: float = 180):
        env = {**self.compose.environment(service), **(extra_env or {})}
        return docker(
            "run",
            "--rm",
            *self._args(service, env),
            IMAGE,
            *self.compose.command(service),
            timeout=timeout,
            check=False,
            env={**os.environ, **env},
        )

    def start(self, service: str, command: list[str], extra_env: dict | None = None) -> str:
        env = {**self.compose.environment(service), **(extra_env or {})}
        name = f"fcso-test-{self.run_id}-{service}"
        restart = self.compose.service(service).get("restart", "no")
        docker(
            "run",
            "--detach",
            f"--name={name}",
            f"--restart={restart}",
            *self._args(service, env),
            IMAGE,
            *command,
            env={**os.environ, **env},
        )
        self.names.append(name)
        return name

    def logs(self) -> str:
        parts = []
        for name in self.names:
            out = docker("logs", "--tail", "60", name, check=False)
            parts.append(f"--- {name}\n{out.stdout}{out.stderr}")
        return "\n".join(parts)

    def remove(self) -> None:
        for name in self.names:
            docker("rm", "--force", name, check=False, timeout=60)


def http(method: str, url: str, *, headers: dict | None = None, body: bytes | None = None):
    request = urllib.request.Request(url, data=body, method=method)
    for key, value in {**HEADERS, **(headers or {})}.items():
        request.add_header(key, value)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_for(what: str, check, timeout: float = 90, every: float = 0.5):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except OSError as exc:
            last = exc
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout} s (last: {last!r})")


# -- this machine's servers, each test run in its own database, Redis database and vhost ------


@pytest.fixture(scope="module")
def image():
    found = docker("image", "inspect", IMAGE, check=False)
    assert found.returncode == 0, f"no image {IMAGE}: make image first ({found.stderr.strip()})"
    return IMAGE


@pytest.fixture(scope="module")
def run_id():
    return uuid.uuid4().hex[:8]


@pytest.fixture(scope="module")
def database_url(run_id):
    import psycopg

    name = f"fcso_containers_{run_id}"
    with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"{POSTGRES}/{name}"
    with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def redis_url():
    import redis

    client = redis.Redis.from_url(REDIS)
    client.flushdb()
    yield REDIS
    client.flushdb()
    client.close()


def _rabbitmq(method: str, path: str, body: dict | None = None) -> None:
    request = urllib.request.Request(
        f"{RABBITMQ_API}/api/{path}",
        data=json.dumps(body or {}).encode(),
        method=method,
        headers={"content-type": "application/json"},
    )
    token = ":".join(RABBITMQ_USER).encode()
    import base64

    request.add_header("Authorization", "Basic " + base64.b64encode(token).decode())
    urllib.request.urlopen(request, timeout=10).close()


@pytest.fixture(scope="module")
def broker_url(run_id):
    vhost = f"containers-{run_id}"
    _rabbitmq("PUT", f"vhosts/{quote(vhost, safe='')}")
    _rabbitmq(
        "PUT",
        f"permissions/{quote(vhost, safe='')}/{RABBITMQ_USER[0]}",
        {"configure": ".*", "write": ".*", "read": ".*"},
    )
    yield f"amqp://{':'.join(RABBITMQ_USER)}@{AMQP_HOST}/{quote(vhost, safe='')}"
    _rabbitmq("DELETE", f"vhosts/{quote(vhost, safe='')}")


@pytest.fixture(scope="module")
def secrets_():
    service_token = secrets.token_urlsafe(24)
    return {
        "service_token": service_token,
        "metrics_token": secrets.token_urlsafe(24),
        "service_digest": hashlib.sha256(service_token.encode()).hexdigest(),
    }


@pytest.fixture(scope="module")
def compose(database_url, redis_url, broker_url, secrets_):
    management = f"http://{':'.join(RABBITMQ_USER)}@{RABBITMQ_API.split('://')[1]}"
    return Compose(
        variables={
            # What .env gives compose; the servers' URLs below replace those built from them.
            "POSTGRES_PASSWORD": "unused",
            "REDIS_PASSWORD": "unused",
            "RABBITMQ_PASSWORD": "unused",
            "DJANGO_SECRET_KEY": secrets.token_urlsafe(40),
            "METRICS_TOKEN": secrets_["metrics_token"],
            "COUNTER_SERVICE_TOKENS": secrets_["service_digest"],
            "FLOWER_BASIC_AUTH": "admin:" + secrets.token_urlsafe(12),
            "DJANGO_ADMIN_PASSWORD": secrets.token_urlsafe(16),
        },
        overrides={
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "CELERY_BROKER_URL": broker_url,
            "RABBITMQ_MANAGEMENT_URL": management,
        },
    )


@pytest.fixture(scope="module")
def stack(image, compose, run_id, request):
    stack = Stack(compose, run_id)
    migrated = stack.run_once("migrate")
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    yield stack
    if request.session.testsfailed:
        print(stack.logs())
    stack.remove()


@pytest.fixture(scope="module")
def web(stack):
    port = free_port()
    command = stack.compose.command("web")
    bind = command.index("--bind")
    command[bind + 1] = f"127.0.0.1:{port}"  # the host's loopback only, a free port
    stack.start("web", command)
    base = f"http://127.0.0.1:{port}"
    wait_for("web /healthz 200", lambda: http("GET", f"{base}/healthz")[0] == 200)
    return base


@pytest.fixture(scope="module")
def counters_worker(stack):
    # The compose file's :9808 would be the host's port here: a free one instead.
    return stack.start(
        "counters-worker",
        stack.compose.command("counters-worker"),
        extra_env={"WORKER_METRICS_PORT": str(free_port())},
    )


# -- the tests ------------------------------------------------------------------------------


def test_the_image_carries_none_of_the_build_machines_pip_settings(image):
    out = docker(
        "run",
        "--rm",
        "--network=none",
        "--entrypoint=sh",
        image,
        "-c",
        'ls -A /run/secrets; test ! -e /etc/pip.conf && test ! -e "$HOME/.config/pip" && id -un',
    )
    assert out.stdout.split() == ["app"], out.stdout + out.stderr
    history = docker("history", "--no-trunc", image).stdout
    assert "pip_cert" not in history.replace("id=pip_cert", "")
    assert "BEGIN CERTIFICATE" not in history


def test_web_is_healthy_and_an_increment_is_counted_and_applied(web, counters_worker, secrets_):
    status, body = http("GET", f"{web}/healthz")
    assert (status, json.loads(body)) == (200, {"status": "ok"})

    key = f"article_views:container-{uuid.uuid4().hex[:8]}"
    bearer = {"Authorization": f"Bearer {secrets_['service_token']}"}
    status, body = http(
        "POST",
        f"{web}/api/counters/{key}/incr",
        headers={**bearer, "Content-Type": "application/json"},
        body=json.dumps({"amount": 3}).encode(),
    )
    assert status == 200, body
    assert json.loads(body)["value"] == 3

    def applied():
        status, body = http("GET", f"{web}/api/counters/{key}", headers=bearer)
        reading = json.loads(body)
        return status == 200 and reading["durable"] == 3 and reading["pending"] == 0 and reading

    reading = wait_for("the increment applied by the counters worker", applied, timeout=60)
    assert reading["value"] == 3


def test_metrics_need_the_token_and_show_the_processes(web, secrets_):
    # An increment in one of gunicorn's worker processes: the web's /metrics shows it, read
    # from every process's file in PROMETHEUS_MULTIPROC_DIR (the entrypoint made it on /tmp).
    key = f"article_views:container-{uuid.uuid4().hex[:8]}"
    bearer = {"Authorization": f"Bearer {secrets_['service_token']}"}
    assert http("POST", f"{web}/api/counters/{key}/incr", headers=bearer, body=b"")[0] == 200

    assert http("GET", f"{web}/metrics")[0] == 401
    status, body = http(
        "GET", f"{web}/metrics", headers={"Authorization": f"Bearer {secrets_['metrics_token']}"}
    )
    assert status == 200
    counted = re.search(
        rb'^counter_increments_total\{namespace="article_views"\} (\S+)$', body, re.M
    )
    assert counted and float(counted[1]) >= 1, body.decode()[:2000]


def test_the_app_user_cannot_change_the_code(image, stack, web):
    # Without compose's read-only root: the files' owners and modes alone keep the code.
    out = docker(
        "run",
        "--rm",
        "--network=none",
        "--entrypoint=sh",
        image,
        "-c",
        "id -un; for path in /app /app/manage.py /app/project /app/staticfiles; do "
        "test -w $path && echo writable: $path; done; true",
    )
    assert out.stdout.split() == ["app"], out.stdout + out.stderr
    # As compose runs it: only /tmp (a tmpfs) takes writes.
    web_container = next(name for name in stack.names if name.endswith("-web"))
    out = docker(
        "exec",
        web_container,
        "sh",
        "-c",
        "touch /app/new 2>/dev/null && echo app-writable; touch /tmp/new && echo tmp-writable",
        check=False,
    )
    assert out.stdout.split() == ["tmp-writable"], out.stdout + out.stderr
