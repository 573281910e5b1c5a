"""The built image, run as docker-compose.yml runs it: every app service (migrate, web, worker,
counters worker, outbox relay, beat, Flower) with its command, environment, hardening (read-only,
a tmpfs /tmp, no capabilities, no-new-privileges, the image's app user), restart policy and
health check, read from the compose file, against this machine's PostgreSQL, Redis and RabbitMQ.
The containers share the host's network (``--network host``): they reach the servers on
127.0.0.1, and what listens (gunicorn, Flower, the workers' metrics) listens on a free port of
the host (127.0.0.1 where the command names an address); nothing leaves the machine. Each run has
its own database, Redis database and vhost, removed at the end with the containers.

What differs from compose, and why: the servers' URLs (this machine's, not compose's service
names); ports (8000, 5555, 9808 would be the host's: free ones, in the commands and the health
checks alike); health checks probe at most every CONTAINER_HEALTH_INTERVAL (10 s; ``compose`` for
the file's own intervals, up to beat's 60 s); mail goes to files in a bind-mounted directory
(EMAIL_URL=filemail://, as a user may set it). docs/image.md says what is covered and not.

Skipped unless CONTAINER_TESTS=1: ``make test-containers`` builds the image (``make image``)
and runs this. CONTAINER_IMAGE names another image; DOCKER another client.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import shlex
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from http.client import HTTPException
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
# The longest a health check waits between probes here ("compose": the file's own intervals).
HEALTH_INTERVAL = os.environ.get("CONTAINER_HEALTH_INTERVAL", "10s")
# The app services docker-compose.yml runs from the image (migrate runs once, before them).
SERVICES = ("web", "worker", "counters-worker", "outbox-relay", "beat", "flower")
MAIL_DIR = "/mail"  # in the worker: a directory of the host, bind-mounted
SENDERS = 3  # clients sending increments while the web and the counters worker are killed


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


def _seconds(duration: str) -> float:
    """Compose's durations as its health checks use them: ``1m30s``, ``10s``, ``500ms``."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", str(duration))
    assert parts, f"not a duration: {duration!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


def _replace(text: str, replacements: dict[str, str], what: str) -> str:
    """Each ``old`` replaced by its ``new``; an ``old`` not found fails (the compose file
    changed: the test must not silently probe another port than the service listens on)."""
    for old, new in replacements.items():
        assert old in text, f"{what}: {old!r} not found in {text!r}"
        text = text.replace(old, new)
    return text


def _replace_any(text: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        text = text.replace(old, new)
    return text


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

    def healthcheck(self, name: str, replacements: dict[str, str]) -> list[str]:
        """The service's health check as `docker run` options: its test (CMD as a shell line
        of the same words, CMD-SHELL as it is), timeout, retries and start period; its interval
        at most HEALTH_INTERVAL. ``replacements``: the ports this run moved."""
        check = self.service(name).get("healthcheck")
        if not check:
            return []
        kind, *test = [_interpolate(part, self.variables) for part in check["test"]]
        assert kind in ("CMD", "CMD-SHELL"), f"{name}: health check {kind} not understood"
        # The ports this run moved, in the words themselves (before any shell quoting).
        joined = "\n".join(test)
        for old in replacements:
            assert old in joined, f"{name}'s health check: no {old!r} in {test}"
        test = [_replace_any(word, replacements) for word in test]
        command = shlex.join(test) if kind == "CMD" else test[0]
        interval = _seconds(check.get("interval", "30s"))
        if HEALTH_INTERVAL != "compose":
            interval = min(interval, _seconds(HEALTH_INTERVAL))
        return [
            f"--health-cmd={command}",
            f"--health-interval={interval:g}s",
            f"--health-timeout={check.get('timeout', '30s')}",
            f"--health-retries={check.get('retries', 3)}",
            f"--health-start-period={check.get('start_period', '0s')}",
        ]


@dataclass
class Service:
    name: str  # the compose file's
    container: str
    port: int | None = None  # where it listens on the host, if it serves anything
    metrics_port: int | None = None  # a worker's WORKER_METRICS_PORT
    extra: dict = field(default_factory=dict)


class Stack:
    """Containers of one test run, named after it, removed at the end (logs kept on failure)."""

    def __init__(self, compose: Compose, run_id: str):
        self.compose = compose
        self.run_id = run_id
        self.names: list[str] = []
        self.services: dict[str, Service] = {}

    def _args(self, service: str, env: dict[str, str]) -> list[str]:
        return [
            "--network=host",
            *self.compose.hardening(service),
            *(f"--env={key}" for key in env),  # values from the client's environment
        ]

    def run_once(
        self,
        service: str,
        command: list[str] | None = None,
        extra_env: dict | None = None,
        timeout: float = 180,
    ):
        env = {**self.compose.environment(service), **(extra_env or {})}
        return docker(
            "run",
            "--rm",
            *self._args(service, env),
            IMAGE,
            *(command or self.compose.command(service)),
            timeout=timeout,
            check=False,
            env={**os.environ, **env},
        )

    def start(
        self,
        service: str,
        command: list[str],
        extra_env: dict | None = None,
        extra_args: tuple[str, ...] = (),
        replacements: dict[str, str] | None = None,
    ) -> str:
        env = {**self.compose.environment(service), **(extra_env or {})}
        name = f"fcso-test-{self.run_id}-{service}"
        restart = self.compose.service(service).get("restart", "no")
        self.names.append(name)  # before the run: a half-made container is removed too
        docker(
            "run",
            "--detach",
            f"--name={name}",
            f"--restart={restart}",
            *self._args(service, env),
            *self.compose.healthcheck(service, replacements or {}),
            *extra_args,
            IMAGE,
            *command,
            env={**os.environ, **env},
        )
        return name

    def inspect(self, name: str) -> dict:
        return json.loads(docker("inspect", name).stdout)[0]

    def logs(self) -> str:
        parts = []
        for name in self.names:
            out = docker("logs", "--tail", "60", name, check=False)
            parts.append(f"--- {name}\n{out.stdout}{out.stderr}")
        return "\n".join(parts)

    def remove(self) -> None:
        for name in self.names:
            docker("rm", "--force", name, check=False, timeout=60)


def http(
    method: str,
    url: str,
    *,
    headers: dict | None = None,
    body: bytes | None = None,
    timeout: float = 10,
):
    request = urllib.request.Request(url, data=body, method=method)
    for key, value in {**HEADERS, **(headers or {})}.items():
        request.add_header(key, value)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
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


def incr(web: str, key: str, bearer: dict, amount: int = 1) -> dict:
    """One increment, answered 200. A 503 ``"counted": false`` (the broker did not confirm:
    nothing counted) is tried again: this machine's RabbitMQ is shared, and may be restarted
    or blocked for a while by another suite (tests/faults)."""

    def counted():
        status, body = http(
            "POST",
            f"{web}/api/counters/{key}/incr",
            headers={**bearer, "Content-Type": "application/json"},
            body=json.dumps({"amount": amount}).encode(),
        )
        if status == 503 and json.loads(body).get("counted") is False:
            return None
        assert status == 200, (status, body)
        return json.loads(body)

    return wait_for(f"an increment of {key} answered 200", counted, timeout=90)


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
    request.add_header("Authorization", "Basic " + base64.b64encode(token).decode())
    urllib.request.urlopen(request, timeout=10).close()


@pytest.fixture(scope="module")
def broker_url(run_id):
    vhost = f"containers-{run_id}"
    _rabbitmq("PUT", f"vhosts/{quote(vhost, safe='')}")
    try:
        _rabbitmq(
            "PUT",
            f"permissions/{quote(vhost, safe='')}/{RABBITMQ_USER[0]}",
            {"configure": ".*", "write": ".*", "read": ".*"},
        )
        yield f"amqp://{':'.join(RABBITMQ_USER)}@{AMQP_HOST}/{quote(vhost, safe='')}"
    finally:
        _rabbitmq("DELETE", f"vhosts/{quote(vhost, safe='')}")


@pytest.fixture(scope="module")
def secrets_():
    service_token = secrets.token_urlsafe(24)
    return {
        "service_token": service_token,
        "metrics_token": secrets.token_urlsafe(24),
        "service_digest": hashlib.sha256(service_token.encode()).hexdigest(),
        "flower_auth": "admin:" + secrets.token_urlsafe(12),
    }


@pytest.fixture(scope="module")
def mail_dir(tmp_path_factory, image):
    """A directory of the host the worker writes its mail to, as the image's app user."""
    path = tmp_path_factory.mktemp("mail")
    uid = docker("run", "--rm", "--network=none", "--entrypoint=id", image, "-u").stdout
    os.chown(path, int(uid), -1)
    return path


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
            "FLOWER_BASIC_AUTH": secrets_["flower_auth"],
            "DJANGO_ADMIN_PASSWORD": secrets.token_urlsafe(16),
            # The mail as files (Django's file backend), where the test can read them.
            "EMAIL_URL": f"filemail:///{MAIL_DIR}",
        },
        overrides={
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "CELERY_BROKER_URL": broker_url,
            "RABBITMQ_MANAGEMENT_URL": management,
        },
    )


@pytest.fixture(scope="module")
def stack(image, compose, run_id, mail_dir, request):
    """migrate once, then every app service of the compose file, started together (their
    health checks run meanwhile); the web answering /healthz before the first test."""
    stack = Stack(compose, run_id)
    try:
        migrated = stack.run_once("migrate")
        assert migrated.returncode == 0, migrated.stdout + migrated.stderr
        _start_services(stack, mail_dir)
        web = stack.services["web"]
        wait_for(
            "web /healthz 200",
            lambda: http("GET", f"http://127.0.0.1:{web.port}/healthz")[0] == 200,
        )
        yield stack
    finally:
        if request.session.testsfailed:
            print(stack.logs())
        stack.remove()


def _start_services(stack: Stack, mail_dir: Path) -> None:
    compose = stack.compose

    # gunicorn on the host's loopback, a free port (compose: 0.0.0.0:8000 in its network).
    port = free_port()
    command = compose.command("web")
    command[command.index("--bind") + 1] = f"127.0.0.1:{port}"
    name = stack.start("web", command, replacements={"127.0.0.1:8000": f"127.0.0.1:{port}"})
    stack.services["web"] = Service("web", name, port=port)

    # The workers: their metrics on free ports (9808 would be the host's, and both want it).
    for service in ("worker", "counters-worker"):
        metrics_port = free_port()
        extra_args = ()
        if service == "worker":  # it sends the mail: to files in the host's directory
            extra_args = (f"--volume={mail_dir}:{MAIL_DIR}",)
        name = stack.start(
            service,
            compose.command(service),
            extra_env={"WORKER_METRICS_PORT": str(metrics_port)},
            extra_args=extra_args,
        )
        stack.services[service] = Service(service, name, metrics_port=metrics_port)

    for service in ("outbox-relay", "beat"):
        name = stack.start(service, compose.command(service))
        stack.services[service] = Service(service, name)

    # Flower on the host's loopback, a free port (compose publishes 127.0.0.1:5555).
    port = free_port()
    command = compose.command("flower")
    for old, new in {
        "--address=0.0.0.0": "--address=127.0.0.1",
        "--port=5555": f"--port={port}",
    }.items():
        assert old in command, f"flower's command: no {old} in {command}"
        command[command.index(old)] = new
    name = stack.start(
        "flower", command, replacements={"('127.0.0.1', 5555)": f"('127.0.0.1', {port})"}
    )
    stack.services["flower"] = Service("flower", name, port=port)


@pytest.fixture(scope="module")
def web(stack):
    return f"http://127.0.0.1:{stack.services['web'].port}"


def _manage(stack: Stack, *args: str) -> str:
    """``python manage.py ...`` in a throwaway container of the image, as the web runs."""
    out = stack.run_once("web", ["python", "manage.py", *args], timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def shell_in(image: str, script: str):
    """``sh -c script`` in a throwaway container of the image, with no network."""
    return docker("run", "--rm", "--network=none", "--entrypoint=sh", image, "-c", script)


# -- the tests ------------------------------------------------------------------------------


def test_the_image_carries_none_of_the_build_machines_pip_settings(image):
    out = shell_in(
        image,
        'ls -A /run/secrets; test ! -e /etc/pip.conf && test ! -e "$HOME/.config/pip" && id -un',
    )
    assert out.stdout.split() == ["app"], out.stdout + out.stderr
    history = docker("history", "--no-trunc", image).stdout
    assert "pip_cert" not in history.replace("id=pip_cert", "")
    assert "BEGIN CERTIFICATE" not in history


def test_web_is_healthy_and_an_increment_is_counted_and_applied(web, secrets_):
    # /healthz probes the broker too: 200 once every server answers (the stack waited for it).
    def healthy():
        status, body = http("GET", f"{web}/healthz")
        return status == 200 and json.loads(body)

    assert wait_for("web /healthz 200", healthy) == {"status": "ok"}

    key = f"article_views:container-{uuid.uuid4().hex[:8]}"
    bearer = {"Authorization": f"Bearer {secrets_['service_token']}"}
    assert incr(web, key, bearer, amount=3)["value"] == 3

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
    incr(web, key, bearer)

    assert http("GET", f"{web}/metrics")[0] == 401
    status, body = http(
        "GET", f"{web}/metrics", headers={"Authorization": f"Bearer {secrets_['metrics_token']}"}
    )
    assert status == 200
    counted = re.search(
        rb'^counter_increments_total\{namespace="article_views"\} (\S+)$', body, re.M
    )
    assert counted and float(counted[1]) >= 1, body.decode()[:2000]


def test_a_workers_metrics_need_the_token_and_show_what_its_pool_applied(web, stack, secrets_):
    # The deltas are applied in the counters worker's pool processes; its main process serves
    # their sum on WORKER_METRICS_PORT (compose: 9808), read from PROMETHEUS_MULTIPROC_DIR.
    key = f"article_views:container-{uuid.uuid4().hex[:8]}"
    bearer = {"Authorization": f"Bearer {secrets_['service_token']}"}
    for _ in range(2):
        incr(web, key, bearer)
    url = f"http://127.0.0.1:{stack.services['counters-worker'].metrics_port}/metrics"
    token = {"Authorization": f"Bearer {secrets_['metrics_token']}"}

    def scraped():
        status, body = http("GET", url, headers=token)
        found = re.search(rb"^deltas_applied_total (\S+)$", body, re.M)
        return status == 200 and found and float(found[1]) >= 2 and body

    body = wait_for("deltas_applied_total on the counters worker's :9808", scraped, timeout=60)
    assert b"delta_apply_seconds_bucket" in body
    assert http("GET", url)[0] == 401
    assert http("GET", url, headers={"Authorization": "Bearer wrong"})[0] == 401
    # The orders worker serves its own, with the same token.
    url = f"http://127.0.0.1:{stack.services['worker'].metrics_port}/metrics"
    assert http("GET", url)[0] == 401
    wait_for("the worker's :9808", lambda: http("GET", url, headers=token)[0] == 200, timeout=60)


def test_an_order_is_placed_through_the_api_and_its_confirmation_mailed(web, stack, mail_dir):
    # A customer with a funded account and a product in stock, made in a throwaway container;
    # an API token from the running web's container, as an operator would make one.
    tag = uuid.uuid4().hex[:8]
    made = _manage(
        stack,
        "shell",
        "-c",
        "from django.contrib.auth import get_user_model; "
        "from orders.models import Account, Product; "
        f"user = get_user_model().objects.create_user('buyer-{tag}', 'buyer-{tag}@example.com'); "
        "account = Account.objects.create(owner=user, name='main', balance=10_000); "
        f"Product.objects.create(sku='sku-{tag}', name='Mug', price=250, stock=5); "
        "print(account.pk)",
    )
    account_id = int(made.split()[-1])
    exec_token = docker(
        "exec", stack.services["web"].container, "python", "manage.py", "api_token", f"buyer-{tag}"
    )
    token = exec_token.stdout.strip().splitlines()[-1]

    status, body = http(
        "POST",
        f"{web}/api/orders",
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "Idempotency-Key": f"container-{tag}",
        },
        body=json.dumps(
            {"account": account_id, "lines": [{"sku": f"sku-{tag}", "qty": 2}]}
        ).encode(),
    )
    assert status == 201, body
    order = json.loads(body)
    assert (order["account"], order["total"], order["status"]) == (account_id, 500, "placed")

    # The outbox relay publishes the follow-up; the worker (queue orders) writes the mail.
    def mailed():
        for path in mail_dir.iterdir():
            text = path.read_text(errors="replace")
            if f"Subject: Order {order['id']} placed" in text:
                return text
        return None

    text = wait_for("the order's confirmation mail in the mail directory", mailed, timeout=120)
    assert f"To: buyer-{tag}@example.com" in text
    assert "5.00" in text, text


def test_flower_asks_for_its_basic_auth(stack, secrets_):
    url = f"http://127.0.0.1:{stack.services['flower'].port}/"
    wait_for("Flower answering", lambda: http("GET", url)[0] == 401, timeout=60)
    wrong = base64.b64encode(b"admin:wrong").decode()
    assert http("GET", url, headers={"Authorization": f"Basic {wrong}"})[0] == 401
    right = base64.b64encode(secrets_["flower_auth"].encode()).decode()
    status, body = http("GET", url, headers={"Authorization": f"Basic {right}"})
    assert status == 200, body[:500]
    assert b"Flower" in body


def test_the_app_user_cannot_change_the_code(image, stack):
    # Without compose's read-only root: the files' owners and modes alone keep the code.
    out = shell_in(
        image,
        "id -un; for path in /app /app/manage.py /app/project /app/staticfiles; do "
        "test -w $path && echo writable: $path; done; true",
    )
    assert out.stdout.split() == ["app"], out.stdout + out.stderr
    # As compose runs it: only /tmp (a tmpfs) takes writes.
    out = docker(
        "exec",
        stack.services["web"].container,
        "sh",
        "-c",
        "touch /app/new 2>/dev/null && echo app-writable; touch /tmp/new && echo tmp-writable",
        check=False,
    )
    assert out.stdout.split() == ["tmp-writable"], out.stdout + out.stderr


def _health(stack: Stack, name: str) -> str:
    state = stack.inspect(name)["State"]
    return state.get("Health", {}).get("Status", "none")


def test_every_health_check_of_the_compose_file_turns_healthy(stack):
    with_checks = [s for s in SERVICES if stack.compose.service(s).get("healthcheck")]
    assert with_checks == list(SERVICES), "a service without a health check: cover it here"
    longest = max(
        _seconds(stack.compose.service(s)["healthcheck"].get("interval", "30s")) for s in SERVICES
    )
    if HEALTH_INTERVAL != "compose":
        longest = min(longest, _seconds(HEALTH_INTERVAL))
    for service in with_checks:
        name = stack.services[service].container
        wait_for(
            f"{service}'s health check healthy",
            lambda name=name: _health(stack, name) == "healthy",
            timeout=longest + 60,
            every=1,
        )


# -- the restart policy: SIGKILL of the web and of the counters worker, under load ----------


@dataclass
class Sent:
    ok: list[str] = field(default_factory=list)  # delta ids answered 200
    refused: int = 0  # nothing was sent (connection refused) or a 503 "counted": false
    unknown: list[str] = field(default_factory=list)  # the answer was lost: may be counted
    other: list[str] = field(default_factory=list)  # anything else: fails the test
    started: float = field(default_factory=time.monotonic)
    events: list[str] = field(default_factory=list)  # what happened when, for the record

    def at(self, what: str) -> str:
        entry = f"{time.monotonic() - self.started:.2f}s {what}"
        self.events.append(entry)
        return entry


def _send_increments(web: str, key: str, bearer: dict, stop: threading.Event, sent: Sent):
    while not stop.is_set():
        try:
            status, body = http(
                "POST", f"{web}/api/counters/{key}/incr", headers=bearer, body=b"", timeout=15
            )
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, ConnectionRefusedError):
                sent.refused += 1
                time.sleep(0.05)
            else:
                sent.unknown.append(sent.at(repr(exc)))
            continue
        except (ConnectionError, TimeoutError, OSError, HTTPException) as exc:
            # A reset or a closed connection mid-request, or mid-answer (IncompleteRead: the web
            # was killed between the status line and the body): sent, answer lost.
            sent.unknown.append(sent.at(repr(exc)))
            continue
        if status == 200:
            sent.ok.append(json.loads(body)["delta_id"])
        elif status == 503 and json.loads(body).get("counted") is False:
            sent.refused += 1
        else:
            sent.other.append(f"{status} {body[:200]!r}")
        time.sleep(0.01)


def _crash(stack: Stack, service: str) -> int:
    """SIGKILL to the container's main process, as the OOM killer or a crash would end it. Not
    ``docker kill``: the engine counts that as an explicit stop, and no restart policy undoes it
    (Docker Engine 20.10, checked). Returns the restart count before."""
    state = stack.inspect(stack.services[service].container)
    assert state["State"]["Running"], state["State"]
    try:
        os.kill(state["State"]["Pid"], signal.SIGKILL)
    except PermissionError:
        pytest.fail("killing a container's process needs root on the host, as `make image` does")
    return state["RestartCount"]


def _restarted(stack: Stack, service: str, before: int) -> bool:
    info = stack.inspect(stack.services[service].container)
    return info["RestartCount"] > before and info["State"]["Running"]


def test_a_killed_web_and_counters_worker_are_restarted_and_nothing_is_lost(
    web, stack, secrets_, database_url
):
    import psycopg

    assert {stack.compose.service(s).get("restart") for s in ("web", "counters-worker")} == {
        "unless-stopped"
    }
    key = f"article_views:restart-{uuid.uuid4().hex[:8]}"
    bearer = {"Authorization": f"Bearer {secrets_['service_token']}"}
    sent, stop = Sent(), threading.Event()
    # A few clients at once, so that deltas are on their way (in the web, the broker, the
    # counters worker's batch) whenever a process dies.
    senders = [
        threading.Thread(target=_send_increments, args=(web, key, bearer, stop, sent))
        for _ in range(SENDERS)
    ]
    for sender in senders:
        sender.start()
    try:
        wait_for("increments before the kills", lambda: len(sent.ok) >= 30, timeout=30)
        for service in ("web", "counters-worker"):
            before = _crash(stack, service)
            sent.at(f"{service} killed")
            wait_for(f"{service} restarted", lambda s=service, b=before: _restarted(stack, s, b))
            sent.at(f"{service} restarted")
            oks = len(sent.ok)
            wait_for(
                f"increments answered after {service} restarted",
                lambda oks=oks: len(sent.ok) >= oks + 30,
                timeout=60,
            )
    finally:
        stop.set()
        for sender in senders:
            sender.join(timeout=30)
    print(
        f"restart test: {len(sent.ok)} increments answered 200, {sent.refused} refused "
        f"(not counted), {len(sent.unknown)} answers lost; {sent.events}"
    )
    assert not sent.other, sent.other
    # Lost answers: the requests in flight when the web died (a few), and any a broker outage
    # meanwhile cut off. Each may or may not be counted; the ledger below tells.
    assert len(sent.unknown) < len(sent.ok) / 4, sent.unknown

    # Drained: every delta answered 200 is in the ledger (applied exactly once: its primary
    # key), and the durable counter is their sum; a lost answer may have been counted, once.
    def ledger():
        with psycopg.connect(database_url) as conn:
            rows = conn.execute(
                "SELECT delta_id::text, amount FROM counters_applieddelta WHERE key = %s", [key]
            ).fetchall()
        ids = {row[0] for row in rows}
        return set(sent.ok) <= ids and rows

    rows = wait_for("every acknowledged increment applied", ledger, timeout=90)
    extra = {row[0] for row in rows} - set(sent.ok)
    assert len(extra) <= len(sent.unknown), (extra, sent.unknown)
    assert all(amount == 1 for _, amount in rows)
    print(f"restart test: {len(extra)} of the {len(sent.unknown)} lost answers were counted")

    def settled():
        status, body = http("GET", f"{web}/api/counters/{key}", headers=bearer)
        reading = json.loads(body)
        return status == 200 and reading["pending"] == 0 and reading

    reading = settled() or wait_for("nothing pending", settled, timeout=30)
    assert reading["durable"] == len(sent.ok) + len(extra), (reading, len(sent.ok), extra)
    if not sent.unknown:
        assert reading["durable"] == len(sent.ok)

    # And both are healthy again, by their compose health checks.
    for service in ("web", "counters-worker"):
        name = stack.services[service].container
        wait_for(
            f"{service} healthy after its restart",
            lambda name=name: _health(stack, name) == "healthy",
            timeout=90,
            every=1,
        )
