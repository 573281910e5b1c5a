"""Where ``make run`` leaves the URLs of the servers it started, for the settings of other
processes of the checkout to read (project/settings/env.py). No side effects on import."""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent


def running_file() -> Path:
    """``.local/run/servers.env`` (under ``LOCAL_STATE_DIR`` if set), there while a run is up."""
    return Path(os.environ.get("LOCAL_STATE_DIR") or BASE_DIR / ".local" / "run") / "servers.env"
