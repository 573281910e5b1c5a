"""The one ``env`` object every settings module reads the environment through.

With ``make run`` up, its servers' URLs are in ``.local/run/servers.env`` (``LOCAL_STATE_DIR``
moves it): a variable the environment does not set is read from there, so ``manage.py`` and
``celery -A project`` in another terminal of the checkout talk to the running system.
"""

from pathlib import Path

import environ

from project.runstate import running_file

BASE_DIR = Path(__file__).resolve().parent.parent.parent

env = environ.Env()

if running_file().is_file():
    environ.Env.read_env(running_file(), overwrite=False)  # the environment wins
