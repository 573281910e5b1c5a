"""``celery -A project`` finds the app here; it is defined in tasks/app.py (the delivery layer,
which every app may import)."""

from tasks.app import app

__all__ = ["app"]
