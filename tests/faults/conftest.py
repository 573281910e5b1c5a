"""The fault suite's fixtures: a migrated, seeded PostgreSQL template (copied by each scenario),
and the results table, written to tests/faults/results/ and printed at the end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.broker import rabbitmq_api

from ..conftest import _amqp_base_url, _reachable
from ..helpers import BASE_DIR
from .template import seeded_template

RESULTS_DIR = Path(__file__).parent / "results"
_results: list[dict] = []


@pytest.fixture(scope="session")
def template(tmp_path_factory) -> dict:
    """A stopped PostgreSQL root, migrated and seeded once; each scenario runs on a copy."""
    return seeded_template(tmp_path_factory.mktemp("template"))


@pytest.fixture(scope="session")
def amqp_base() -> str:
    url = _amqp_base_url()
    if not _reachable(url):
        pytest.fail(f"RabbitMQ not reachable at {url}: the fault suite needs both brokers")
    try:
        rabbitmq_api("overview")
    except OSError as exc:
        pytest.fail(
            f"RabbitMQ's management API is not reachable ({exc}): the suite makes a "
            "virtual host per scenario through it; `rabbitmq-plugins enable "
            "rabbitmq_management`"
        )
    return url


@pytest.fixture
def record_result():
    return _results.append


COLUMNS = [
    "scenario",
    "broker",
    "ok",
    "failed",
    "unknown",
    "applied",
    "dead_lettered",
    "lost",
    "doubled",
    "republished",
    "restarts",
    "drain_s",
    "max_answer_s",
    "passed",
]


def table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = [("yes" if row[c] else "**NO**") if c == "passed" else str(row[c]) for c in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pytest_terminal_summary(terminalreporter):
    if not _results:
        return
    from .test_scenarios import CASES

    # A partial run (-k) must not replace the full table docs/faults.md shows.
    full = len({(r["scenario"], r["broker"]) for r in _results}) == len(CASES)
    out = RESULTS_DIR if full else BASE_DIR / ".local" / "faults"
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_text(json.dumps(_results, indent=1) + "\n")
    text = table(_results)
    (out / "latest.md").write_text(
        "Fault suite (`make test-faults`): scenario x broker\n\n" + text + "\n"
    )
    terminalreporter.write_sep("=", "fault suite")
    terminalreporter.write_line(text)
    terminalreporter.write_line(f"written to {out / 'latest.md'}")
    for row in _results:
        for problem in row["problems"]:
            terminalreporter.write_line(f"{row['scenario']}[{row['broker']}]: {problem}")
