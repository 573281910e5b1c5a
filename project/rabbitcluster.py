"""A RabbitMQ cluster of three NEW nodes on this machine, from the installed RabbitMQ: for the
fault suite's cluster scenarios and `make soak` (docs/cluster.md).

    python -m project.rabbitcluster      # start one, print its URLs, stop it on Ctrl-C

Each node has its own name, ports, data directory, config file and enabled-plugins file, so the
machine's own node (``rabbit@localhost``, which CI and the other tests share) is never touched:
every ``rabbitmqctl`` call names its node. Started as root, the ``rabbitmq-server`` wrapper runs
the node as the ``rabbitmq`` user, so the data directory is that user's; the nodes and
``rabbitmqctl`` share that user's Erlang cookie.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .devservers import free_port

RABBITMQ_SERVER = "/usr/sbin/rabbitmq-server"
RABBITMQCTL = "/usr/sbin/rabbitmqctl"
SYSTEM_NODE = "rabbit@localhost"
READY_TIMEOUT_S = 120


@dataclass
class Node:
    name: str
    amqp_port: int
    management_port: int
    dist_port: int
    root: Path

    @property
    def pid_file(self) -> Path:
        return self.root / "node.pid"

    def os_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int(self.pid_file.read_text().strip())
        return None


class RabbitCluster:
    """``start()`` starts the nodes and joins them into one cluster; ``stop()`` kills them and
    removes their data. The faults (``kill``, ``freeze``, ``restart``) act on one node."""

    def __init__(self, size: int = 3):
        tag = uuid.uuid4().hex[:6]
        # Not under pytest's temporary directory: the rabbitmq user could not traverse it.
        self.root = Path(tempfile.mkdtemp(prefix=f"rabbitcluster-{tag}-"))
        # A new node's built-in user, which RabbitMQ lets in from loopback only.
        self.user, self.password = "guest", "guest"
        self.nodes = [
            Node(
                name=f"fc{tag}n{i}@localhost",
                amqp_port=free_port(),
                management_port=free_port(),
                dist_port=free_port(),
                root=self.root / f"n{i}",
            )
            for i in range(1, size + 1)
        ]

    # --- URLs ---------------------------------------------------------------------------------
    def broker_url(self, vhost: str = "/") -> str:
        """Every node, as a kombu failover URL (``;``-separated)."""
        path = urllib.parse.quote(vhost, safe="")
        return ";".join(
            f"amqp://{self.user}:{self.password}@127.0.0.1:{n.amqp_port}/{path}" for n in self.nodes
        )

    @property
    def management_url(self) -> str:
        """Every node's management API, comma-separated (RABBITMQ_MANAGEMENT_URL)."""
        return ",".join(
            f"http://{self.user}:{self.password}@127.0.0.1:{n.management_port}" for n in self.nodes
        )

    # --- life cycle -----------------------------------------------------------------------------
    def start(self) -> RabbitCluster:
        self._prepare()
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(self.start_node, self.nodes))
        first = self.nodes[0]
        for node in self.nodes[1:]:
            self.ctl(node, "stop_app")
            self.ctl(node, "join_cluster", first.name)
            self.ctl(node, "start_app")
        running = self.running_nodes(first)
        if sorted(running) != sorted(n.name for n in self.nodes):
            raise RuntimeError(f"cluster did not form: running {running}")
        return self

    def stop(self) -> None:
        """SIGKILL every node (nothing in it is kept) and remove the data."""
        for node in self.nodes:
            pid = node.os_pid()
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
                    os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)

    def _prepare(self) -> None:
        (self.root / "empty-env.conf").touch()
        for node in self.nodes:
            (node.root / "mnesia").mkdir(parents=True)
            (node.root / "log").mkdir()
            (node.root / "rabbitmq.conf").write_text(
                f"listeners.tcp.default = 127.0.0.1:{node.amqp_port}\n"
                "management.tcp.ip = 127.0.0.1\n"
                f"management.tcp.port = {node.management_port}\n"
            )
            (node.root / "enabled_plugins").write_text("[rabbitmq_management].\n")
        owner = pwd.getpwnam("rabbitmq")
        for path in [self.root, *self.root.rglob("*")]:
            os.chown(path, owner.pw_uid, owner.pw_gid)

    def _env(self, node: Node | None = None) -> dict[str, str]:
        # Nothing inherited, and not the machine's /etc/rabbitmq/rabbitmq-env.conf (which names
        # the machine's node): an empty env file instead.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env["RABBITMQ_CONF_ENV_FILE"] = str(self.root / "empty-env.conf")
        env["ERL_CRASH_DUMP"] = str(self.root / "cli_erl_crash.dump")
        if node is not None:
            env.update(
                RABBITMQ_NODENAME=node.name,
                RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
                RABBITMQ_NODE_PORT=str(node.amqp_port),
                RABBITMQ_DIST_PORT=str(node.dist_port),
                RABBITMQ_MNESIA_BASE=str(node.root / "mnesia"),
                RABBITMQ_LOG_BASE=str(node.root / "log"),
                RABBITMQ_PID_FILE=str(node.pid_file),
                RABBITMQ_ENABLED_PLUGINS_FILE=str(node.root / "enabled_plugins"),
                RABBITMQ_CONFIG_FILE=str(node.root / "rabbitmq.conf"),
                RABBITMQ_ADVANCED_CONFIG_FILE=str(node.root / "advanced.config"),
                # As the machine's env file does for its node: distribution on loopback only.
                RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
                ERL_EPMD_ADDRESS="127.0.0.1",
                ERL_CRASH_DUMP=str(node.root / "log" / "erl_crash.dump"),
            )
        return env

    def ctl(self, node: Node, *args: str, timeout: float = 90, check: bool = True) -> str:
        """``rabbitmqctl -n NODE ...`` (never the machine's node); its output."""
        if node.name == SYSTEM_NODE:
            raise ValueError("the machine's own node is not part of a test cluster")
        done = subprocess.run(
            [RABBITMQCTL, "-n", node.name, *args],
            env=self._env(),
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl -n {node.name} {' '.join(args)}: {done.stderr}")
        return done.stdout

    def start_node(self, node: Node) -> None:
        """Start a node (again, after a kill or a stop) and wait until it runs."""
        node.pid_file.unlink(missing_ok=True)
        subprocess.run(
            [RABBITMQ_SERVER, "-detached"],
            env=self._env(node),
            cwd=self.root,
            check=True,
            capture_output=True,
            timeout=60,
        )
        # `await_startup` fails at once while the new VM is not in epmd yet; `wait` waits for
        # the pid file first.
        wait = str(READY_TIMEOUT_S)
        self.ctl(node, "wait", str(node.pid_file), "--timeout", wait, timeout=READY_TIMEOUT_S + 30)
        self.ctl(node, "await_startup", "--timeout", wait, timeout=READY_TIMEOUT_S + 30)

    def running_nodes(self, via: Node) -> list[str]:
        import json

        status = json.loads(self.ctl(via, "cluster_status", "--formatter", "json", timeout=30))
        return status.get("running_nodes", [])

    # --- faults ---------------------------------------------------------------------------------
    def node_named(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def kill(self, node: Node) -> int:
        """SIGKILL the node's VM; its pid."""
        pid = node.os_pid()
        if pid is None:
            raise RuntimeError(f"{node.name} has no pid file")
        os.kill(pid, signal.SIGKILL)
        return pid

    def freeze(self, node: Node, sig: int = signal.SIGSTOP) -> None:
        os.kill(node.os_pid(), sig)

    def restart(self, node: Node) -> None:
        """Stop the node as an operator would (``rabbitmqctl stop``) and start it again."""
        self.ctl(node, "stop", str(node.pid_file), timeout=120)
        self.start_node(node)


@contextlib.contextmanager
def running(size: int = 3) -> Iterator[RabbitCluster]:
    cluster = RabbitCluster(size)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


def main() -> int:
    started = time.monotonic()
    with running() as cluster:
        print(f"cluster of {len(cluster.nodes)} up in {time.monotonic() - started:.0f}s")
        print(f"CELERY_BROKER_URL='{cluster.broker_url()}'")
        print(f"RABBITMQ_MANAGEMENT_URL='{cluster.management_url}'")
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    return 0


if __name__ == "__main__":
    sys.exit(main())
