"""`make run` end to end: the real launcher, real servers, real processes, and Ctrl-C."""

import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from project.devservers import free_port

from ..helpers import http_status, wait_for

BASE_DIR = Path(__file__).resolve().parents[2]
URL_VARIABLES = ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL")
pytestmark = pytest.mark.slow


class Launched:
    def __init__(self, tmp_path: Path, env_overrides: dict[str, str]):
        self.state = tmp_path / "state"
        self.web_port, self.flower_port = free_port(), free_port()
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in URL_VARIABLES and not k.startswith(("DJANGO_", "FLOWER_"))
        }
        env.update(
            LOCAL_STATE_DIR=str(self.state),
            WEB_PORT=str(self.web_port),
            FLOWER_PORT=str(self.flower_port),
            **env_overrides,
        )
        self.log = tmp_path / "launcher.log"
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "project.launcher"],
                cwd=BASE_DIR,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def cli(self, *argv: str) -> subprocess.CompletedProcess:
        """A command in another terminal of the checkout: no URL or Django variable exported."""
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in URL_VARIABLES and not k.startswith(("DJANGO_", "FLOWER_"))
        }
        return subprocess.run(
            [sys.executable, *argv],
            cwd=BASE_DIR,
            env={**env, "LOCAL_STATE_DIR": str(self.state)},
            capture_output=True,
            text=True,
            timeout=60,
        )

    def wait_ready(self) -> None:
        wait_for(
            lambda: self.process.poll() is not None or "Ctrl-C stops everything." in self.output(),
            timeout=90,
            interval=0.5,
            what="the launcher's banner",
        )
        assert self.process.poll() is None, self.output()

    def credentials(self) -> dict[str, str]:
        lines = (self.state / "credentials.env").read_text().splitlines()
        return dict(line.split("=", 1) for line in lines if "=" in line and line[0] != "#")

    def descendants(self) -> list[psutil.Process]:
        return psutil.Process(self.process.pid).children(recursive=True)

    def interrupt(self) -> int:
        self.process.send_signal(signal.SIGINT)  # what Ctrl-C sends
        return self.process.wait(60)

    def kill_all(self) -> None:
        for proc in [*self.descendants(), psutil.Process(self.process.pid)]:
            proc.kill()


def alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    return [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def test_make_run_without_urls_starts_embedded_servers_and_ctrl_c_leaves_nothing(tmp_path):
    launched = Launched(tmp_path, {})
    try:
        launched.wait_ready()
        names = {p.name() for p in launched.descendants()}
        assert {"postgres", "redis-server", "gunicorn", "celery"} <= names, names
        out = launched.output()
        for variable in URL_VARIABLES:
            assert f"started embedded server {variable}=" in out

        site = f"http://127.0.0.1:{launched.web_port}"
        assert http_status(f"{site}/healthz") == 200
        assert http_status(f"{site}/admin/login/") == 200
        # The site's pages with their stylesheet, from collectstatic's manifest through
        # WhiteNoise (no CDN: a missing manifest entry would fail every page).
        with urllib.request.urlopen(f"{site}/articles/", timeout=10) as response:
            page = response.read().decode()
        stylesheet = re.search(r'href="(/static/site\.[0-9a-f]+\.css)"', page).group(1)
        with urllib.request.urlopen(f"{site}{stylesheet}", timeout=10) as response:
            assert response.headers["Content-Type"].startswith("text/css")
        flower = f"http://127.0.0.1:{launched.flower_port}/"
        creds = launched.credentials()
        assert http_status(flower) == 401
        assert http_status(flower, auth="flower:wrong") == 401
        assert http_status(flower, auth=f"{creds['FLOWER_USER']}:{creds['FLOWER_PASSWORD']}") == 200
        # Issue 26 (11): no password on the screen, the file that holds them instead.
        for secret in ("DJANGO_ADMIN_PASSWORD", "FLOWER_PASSWORD", "DJANGO_SECRET_KEY"):
            assert creds[secret] not in out, secret
        assert f"passwords {launched.state / 'credentials.env'} " in out
        assert (launched.state / "credentials.env").stat().st_mode & 0o777 == 0o600

        # Another terminal of the checkout, nothing exported: the CLIs find the running system.
        ping = launched.cli("-m", "celery", "-A", "project", "inspect", "ping", "--timeout", "10")
        assert ping.returncode == 0 and "pong" in ping.stdout, ping.stdout + ping.stderr
        token = launched.cli("manage.py", "api_token", "admin")
        assert token.returncode == 0 and len(token.stdout.strip()) > 30, token.stderr
        listed = launched.cli("manage.py", "api_token", "admin", "--list")
        assert token.stdout.strip()[:8] in listed.stdout, listed.stdout + listed.stderr
        got = launched.cli("manage.py", "counters", "get", "article_views:cli")
        assert got.returncode == 0 and "value" in got.stdout, got.stdout + got.stderr

        started = launched.descendants()
        assert launched.interrupt() == 0
        assert wait_for(lambda: not alive(started), timeout=30, what="every child to exit")
        assert "stopped." in launched.output()
        # Nothing running: one line that says so, no traceback.
        gone = launched.cli("manage.py", "counters", "get", "article_views:cli")
        assert gone.returncode == 1, gone.stdout + gone.stderr
        assert gone.stderr.strip().startswith("manage.py: cannot reach ")
        assert "Is `make run` running?" in gone.stderr and "Traceback" not in gone.stderr
        # Celery's CLI too (issue 27): one line, a non-zero exit, no traceback.
        idle = launched.cli("-m", "celery", "-A", "project", "inspect", "ping", "--timeout", "2")
        assert idle.returncode != 0 and "Traceback" not in idle.stderr, idle.stderr
        assert len(idle.stderr.strip().splitlines()) == 1, idle.stderr
        assert idle.stderr.startswith("Error: "), idle.stderr
    finally:
        if launched.process.poll() is None:
            launched.kill_all()


def test_make_run_with_urls_set_uses_them_and_starts_no_server(tmp_path, redis_broker_url):
    from django.conf import settings

    db = settings.DATABASES["default"]
    urls = {
        "DATABASE_URL": f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT']}/"
        + os.environ.get("DATABASE_URL", "postgres:///app").rsplit("/", 1)[1],
        "REDIS_URL": settings.REDIS_URL,
        "CELERY_BROKER_URL": redis_broker_url,
    }
    launched = Launched(tmp_path, urls)
    try:
        launched.wait_ready()
        out = launched.output()
        for variable in URL_VARIABLES:
            assert f"using {variable} from the environment; starting no server for it" in out
        assert "started embedded server" not in out
        names = {p.name() for p in launched.descendants()}
        assert not names & {"postgres", "redis-server"}, names
        assert http_status(f"http://127.0.0.1:{launched.web_port}/healthz") == 200
        started = launched.descendants()
        assert launched.interrupt() == 0
        assert wait_for(lambda: not alive(started), timeout=30, what="every child to exit")
    finally:
        if launched.process.poll() is None:
            launched.kill_all()
