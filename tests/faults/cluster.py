"""One scenario's system: its own servers and the real processes of ``make run``.

PostgreSQL is a copy of a migrated template data directory started on its own port; the cache
Redis and (for the Redis broker) the broker Redis are servers of the scenario's own; RabbitMQ is
the machine's, in a virtual host of the scenario's own. Web, counters worker, general worker and
outbox relay are the commands of project/processes.py, so the suite tests what users run (without
a relay, orders' follow-ups, the mail and the order counters, are never published). Mail goes to
files of the scenario's own (Django's file backend), so the checker can count each order's.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from project import devservers
from project.processes import process_commands
from project.rabbitcluster import RabbitCluster
from tasks.broker import rabbitmq_api
from tasks.topology import WORK_QUEUES

from ..helpers import BASE_DIR, wait_for
from .load import SERVICE_TOKEN_DIGEST, http_json

# The Redis broker's visibility timeout unless a scenario sets its own (the production one):
# short enough that the "main process killed" scenario drains in seconds; longer than twice the
# test settings' largest retry countdown (2 s), as the system check requires.
VISIBILITY_TIMEOUT_S = 10


class DrainTimeout(AssertionError):
    def __init__(self, waited: float, pending: int):
        super().__init__(f"not drained after {waited:.0f} s: {pending} messages pending")
        self.waited = waited


@dataclass
class Proc:
    name: str
    argv: list[str]
    log: Path
    env: dict[str, str]
    ready: str
    process: subprocess.Popen | None = None
    wanted: bool = True  # the supervisor restarts a wanted process that exits
    exits: list[int] = field(default_factory=list)  # return codes of the exits it restarted
    _offset: int = 0  # where this start's output begins in the log

    def exited(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def start(self) -> Proc:
        return self.spawn().wait_ready()

    def spawn(self) -> Proc:
        self._offset = len(self.output())
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                self.argv,
                cwd=BASE_DIR,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def wait_ready(self) -> Proc:
        wait_for(
            lambda: self.process.poll() is not None or self.ready in self.output()[self._offset :],
            timeout=90,
            what=f"{self.name} to be ready",
        )
        if self.process.poll() is not None:
            raise AssertionError(f"{self.name} exited:\n{self.output()[-3000:]}")
        return self

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def children(self) -> list[int]:
        import psutil

        try:
            return [c.pid for c in psutil.Process(self.process.pid).children()]
        except psutil.NoSuchProcess:
            return []

    def kill(self) -> None:
        """SIGKILL the whole process group: the main process and its children."""
        self.wanted = False
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        self.wanted = False
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.kill()


@dataclass
class Cluster:
    root: Path
    broker: str  # "amqp" or "redis"
    template: Path  # a stopped, migrated PostgreSQL root (data directory inside)
    amqp_base: str
    faults: str = ""  # COUNTER_FAULTS
    cache_extra: list[str] = field(default_factory=list)
    visibility_timeout: int = VISIBILITY_TIMEOUT_S  # REDIS_BROKER_VISIBILITY_TIMEOUT
    relay_env: dict[str, str] = field(default_factory=dict)  # the outbox relay's own (fault hook)
    # A RabbitMQ cluster of the scenario's own (else the machine's node).
    rabbit: RabbitCluster | None = None
    copies: int = 1  # web servers and counters workers, each its own process group
    extra_env: dict[str, str] = field(default_factory=dict)  # every process's, over the above
    procs: dict[str, Proc] = field(default_factory=dict)
    restarts: int = 0
    servers: dict[str, devservers.Server] = field(default_factory=dict)
    vhost: str = ""
    _supervising: bool = False

    # --- servers ----------------------------------------------------------------------------
    def start_servers(self) -> None:
        pg_root = self.root / "pg"
        # cp -a keeps the owner: the embedded server runs as its own user when we are root.
        subprocess.run(["cp", "-a", str(self.template), str(pg_root)], check=True)
        self.pg_port = devservers.free_port()
        self.servers["postgres"] = devservers.start_postgres(root=pg_root, port=self.pg_port)
        self.cache_port = devservers.free_port()
        self.start_cache()
        if self.broker == "redis":
            self.broker_port = devservers.free_port()
            self.start_broker_redis()
            self.broker_url = f"redis://127.0.0.1:{self.broker_port}/0"
        else:
            self.vhost = f"faults-{uuid.uuid4().hex[:8]}"
            user = urllib.parse.urlparse(self.amqp_base).username or "guest"
            rabbitmq_api(f"vhosts/{self.vhost}", method="PUT")
            rabbitmq_api(
                f"permissions/{self.vhost}/{user}",
                method="PUT",
                body={"configure": ".*", "write": ".*", "read": ".*"},
            )
            self.broker_url = (
                self.rabbit.broker_url(self.vhost)
                if self.rabbit
                else urllib.parse.urlparse(self.amqp_base)._replace(path=f"/{self.vhost}").geturl()
            )

    def start_cache(self) -> None:
        self.servers["cache"] = devservers.start_redis(
            root=self.root, role="cache", port=self.cache_port, extra=self.cache_extra
        )

    def start_broker_redis(self) -> None:
        self.servers["broker"] = devservers.start_redis(
            root=self.root, role="broker", port=self.broker_port
        )

    def start_postgres(self) -> None:
        self.servers["postgres"] = devservers.start_postgres(
            root=self.root / "pg", port=self.pg_port
        )

    @property
    def database_url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.pg_port}/app"

    @property
    def cache_url(self) -> str:
        return f"redis://127.0.0.1:{self.cache_port}/0"

    def env(self) -> dict[str, str]:
        return {
            **{k: v for k, v in os.environ.items() if not k.startswith("PYTEST")},
            "DJANGO_SETTINGS_MODULE": "project.settings.test",
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.cache_url,
            "CELERY_BROKER_URL": self.broker_url,
            "COUNTER_FAULTS": self.faults,
            "COUNTER_SERVICE_TOKENS": SERVICE_TOKEN_DIGEST,
            "REDIS_BROKER_VISIBILITY_TIMEOUT": str(self.visibility_timeout),
            "DATABASE_CONNECT_TIMEOUT": "2",
            "DATABASE_STATEMENT_TIMEOUT_MS": "5000",
            "COUNTER_PUBLISH_TIMEOUT_S": "3",
            "BROKER_SOCKET_TIMEOUT_S": "3",
            "EMAIL_BACKEND": "django.core.mail.backends.filebased.EmailBackend",
            "EMAIL_FILE_PATH": str(self.mail_dir),
            "PYTHONUNBUFFERED": "1",
            **({"RABBITMQ_MANAGEMENT_URL": self.rabbit.management_url} if self.rabbit else {}),
            **self.extra_env,
        }

    @property
    def mail_dir(self) -> Path:
        return self.root / "mail"

    # --- processes --------------------------------------------------------------------------
    def start_processes(self) -> None:
        self.web_port = devservers.free_port()
        commands = process_commands(
            bind_host="127.0.0.1", web_port=self.web_port, flower_port=0, state_dir=str(self.root)
        )
        quiet = ["--without-gossip", "--without-mingle"]
        web = [sys.executable, "-m", *commands["web"], "--timeout", "20"]
        web.remove("--access-logfile")
        web.remove("-")
        self.procs["web"] = Proc(
            "web", web, self.root / "web.log", self.env(), "Booting worker"
        ).spawn()
        for name in ("counters-worker", "worker"):  # all four start at once
            self.start_worker(name, [sys.executable, "-m", *commands[name], *quiet], wait=False)
        relay = [sys.executable if a == "python" else a for a in commands["outbox-relay"]]
        self.procs["outbox-relay"] = Proc(
            "outbox-relay",
            relay,
            self.root / "outbox-relay.log",
            {**self.env(), **self.relay_env},
            "started",
        ).spawn()
        self.web_ports = [self.web_port]
        for copy in range(2, self.copies + 1):  # as on other machines: same servers, own groups
            port = devservers.free_port()
            argv = [a if a != f"127.0.0.1:{self.web_port}" else f"127.0.0.1:{port}" for a in web]
            name = f"web-{copy}"
            self.procs[name] = Proc(
                name, argv, self.root / f"{name}.log", self.env(), "Booting worker"
            ).spawn()
            self.web_ports.append(port)
            self.start_worker("counters-worker", as_name=f"counters-worker-{copy}", wait=False)
        for proc in self.procs.values():
            proc.wait_ready()
        wait_for(
            lambda: self.http("GET", "/healthz", timeout=2)[0] in (200, 503),
            timeout=30,
            what="the web process to answer",
        )
        self._supervising = True
        threading.Thread(target=self._supervise, daemon=True).start()

    def _supervise(self) -> None:
        """Restart a process that exits on its own, as docker-compose's ``restart:
        unless-stopped`` does (a Celery worker exits on an error it deems unrecoverable)."""
        while self._supervising:
            for proc in list(self.procs.values()):
                if proc.wanted and proc.exited():
                    self.restarts += 1
                    proc.exits.append(proc.process.returncode)
                    with contextlib.suppress(Exception):
                        proc.start()
            time.sleep(0.5)

    def start_worker(
        self, name: str, argv: list[str] | None = None, *, as_name: str = "", wait: bool = True
    ) -> Proc:
        argv = argv or self.procs[name].argv
        hostname = f"{as_name or name}-{uuid.uuid4().hex[:4]}@%h"
        argv = [a for a in argv]
        if "--hostname" in argv:
            argv[argv.index("--hostname") + 1] = hostname
        proc = Proc(
            as_name or name, argv, self.root / f"{as_name or name}.log", self.env(), " ready."
        )
        self.procs[as_name or name] = proc.start() if wait else proc.spawn()
        return proc

    def http(
        self,
        method: str,
        path: str,
        body: dict | None = None,
        *,
        timeout: float = 5,
        headers: dict | None = None,
    ) -> tuple[int, dict]:
        url = f"http://127.0.0.1:{self.web_port}{path}"
        return http_json(method, url, body, headers=headers, timeout=timeout)

    # --- faults -----------------------------------------------------------------------------
    def cache_client(self):
        import redis

        return redis.Redis.from_url(self.cache_url, socket_timeout=5)

    def broker_client(self, timeout: float = 5):
        import redis

        return redis.Redis.from_url(self.broker_url, socket_timeout=timeout)

    def manage(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=BASE_DIR,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def pending(self) -> int:
        """Messages not yet done in the work queues: ready, held by a worker (unacknowledged,
        including retries waiting for their countdown)."""
        if self.broker == "redis":
            with contextlib.closing(self.broker_client()) as client:
                return sum(client.llen(q) for q in WORK_QUEUES) + client.hlen("unacked")
        args = [
            "list_queues",
            "--quiet",
            "--no-table-headers",
            "-p",
            self.vhost,
            "name",
            "messages",
        ]
        if self.rabbit:  # any node that answers counts for the cluster
            out = ""
            for node in self.rabbit.nodes:
                with contextlib.suppress(Exception):
                    out = self.rabbit.ctl(node, *args, timeout=20)
                    break
            done = subprocess.CompletedProcess(args, 0 if out else 1, out, "no node answered")
        else:
            done = subprocess.run(
                ["rabbitmqctl", *args], capture_output=True, text=True, timeout=60
            )
        counts = dict(line.split("\t", 1) for line in done.stdout.splitlines() if "\t" in line)
        if done.returncode != 0 or "counters" not in counts:
            raise RuntimeError(f"cannot count messages: {done.stderr.strip()[:200]}")
        return sum(int(count) for name, count in counts.items() if name != "dead_letter")

    def drain(self, *, timeout: float = 240) -> float:
        """Wait until every work queue is empty and nothing is held, for long enough; seconds.

        RabbitMQ's message counts (``rabbitmqctl list_queues``) are refreshed every 5 s, so
        there "empty" must hold for longer than that; a count that cannot be read is not zero.
        """
        settle = 6.0 if self.broker == "amqp" else 2.0
        started = time.monotonic()
        zero_since = None
        while True:
            try:
                pending = self.pending()
            except Exception:
                pending = -1
            now = time.monotonic()
            if pending == 0:
                zero_since = zero_since or now
                if now - zero_since >= settle:
                    return round(zero_since - started, 1)
            else:
                zero_since = None
            if now - started > timeout:
                raise DrainTimeout(round(now - started, 1), pending)
            time.sleep(0.5)

    def db(self):
        return psycopg.connect(self.database_url, autocommit=True, connect_timeout=5)

    def outbox_unsent(self) -> int:
        """Outbox rows committed and not yet published (marked sent) by a relay; -1 if unknown."""
        try:
            with self.db() as db:
                query = "SELECT count(*) FROM tasks_outboxmessage WHERE sent_at IS NULL"
                return db.execute(query).fetchone()[0]
        except Exception:
            return -1

    def wait_outbox_sent(self, *, timeout: float) -> float:
        """Until every committed outbox row is published; seconds waited (a relay that failed
        waits up to OUTBOX_RETRY_MAX_S between passes)."""
        started = time.monotonic()
        wait_for(
            lambda: self.outbox_unsent() == 0,
            timeout=timeout,
            interval=0.5,
            what="every outbox row published",
        )
        return round(time.monotonic() - started, 1)

    def mails(self) -> Counter:
        """Confirmation mails written by the file backend: how many per order id."""
        sent: Counter = Counter()
        if self.mail_dir.exists():
            for path in self.mail_dir.iterdir():
                text = path.read_text(errors="replace")
                sent.update(
                    int(n)
                    for n in re.findall(
                        r"^Subject: Order (\d+) placed\r?$", text, flags=re.MULTILINE
                    )
                )
        return sent

    def stop(self) -> None:
        """Tear down after the verdict: nothing left to save, so no graceful shutdowns (they cost
        seconds a scenario)."""
        self._supervising = False
        for proc in reversed(list(self.procs.values())):
            proc.kill()
        for server in self.servers.values():
            with contextlib.suppress(Exception):
                os.kill(server.process.pid, signal.SIGCONT)
            server.stop()
        if self.vhost:
            with contextlib.suppress(OSError):
                rabbitmq_api(f"vhosts/{self.vhost}", method="DELETE")
