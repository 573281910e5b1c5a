"""docker-compose.yml cannot be run here (no Docker engine), so check that it describes the same
system as the launcher: the same processes, the same commands, health checks, real servers."""

from pathlib import Path

import yaml

from project.processes import PROCESS_NAMES, process_commands

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


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
