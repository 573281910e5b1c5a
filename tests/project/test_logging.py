"""LOG_FORMAT=json (project/logjson.py): every process logs one JSON object per line."""

import json

from ..helpers import celery_worker
from .test_settings import manage

LOG_A_WARNING = "import logging; logging.getLogger('shop.x').warning('stock low: %s', 3)"


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_commands_log_json_lines_when_asked():
    done = manage(
        "shell",
        "--no-imports",
        "-c",
        LOG_A_WARNING,
        env={"DJANGO_SETTINGS_MODULE": "project.settings.base", "LOG_FORMAT": "json"},
    )
    (entry,) = json_lines(done.stderr)
    assert entry["message"] == "stock low: 3" and entry["level"] == "WARNING"
    assert entry["logger"] == "shop.x" and entry["time"].endswith("Z")


def test_an_unknown_log_format_refuses_to_start():
    done = manage(
        "check", env={"DJANGO_SETTINGS_MODULE": "project.settings.base", "LOG_FORMAT": "xml"}
    )
    assert done.returncode != 0 and "LOG_FORMAT must be text or json" in done.stderr


def test_a_celery_worker_logs_json_lines_too(broker_url, database_url, worker_log_dir):
    with celery_worker(
        broker_url=broker_url,
        database_url=database_url,
        log_dir=worker_log_dir,
        env={"LOG_FORMAT": "json"},
    ) as worker:
        entries = json_lines(worker.output())
    assert any(e["message"].endswith(" ready.") for e in entries), worker.output()[-2000:]
    assert not [line for line in worker.output().splitlines() if line.startswith("[20")]
