"""Prometheus metrics of task delivery (prometheus-client). How the processes' metrics are
aggregated: project/metrics.py."""

import hmac
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import Counter, Histogram

publish_group_size = Histogram(
    "publish_group_size",
    "Messages published together before one wait for the broker's confirms (group commit).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
dead_letters = Counter("dead_letters", "Messages dead-lettered.", ["reason"])
envelope_size = Histogram(
    "envelope_size",
    "Items (counter deltas) per envelope message, as published (tasks/envelopes.py).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 500),
)


def worker_metrics_serve(*, port: int) -> None:
    """Serve this worker's metrics on ``/metrics`` at ``port`` from a thread of its main process:
    with ``PROMETHEUS_MULTIPROC_DIR``, what every process of the container wrote there (the
    pool's children apply the deltas); otherwise the main process's own.

    With ``METRICS_TOKEN`` set it listens on every interface and answers only
    ``Authorization: Bearer $METRICS_TOKEN`` (as the web's /metrics does); without it, on
    127.0.0.1 only, so nothing else on the network can read it."""
    from django.conf import settings
    from prometheus_client import REGISTRY, CollectorRegistry, multiprocess

    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    token = settings.METRICS_TOKEN
    server = ThreadingHTTPServer(
        ("0.0.0.0" if token else "127.0.0.1", port),  # noqa: S104  (only with the token)
        _metrics_handler(registry=registry, token=token),
    )
    threading.Thread(target=server.serve_forever, name="worker-metrics", daemon=True).start()


def _metrics_handler(*, registry, token: str) -> type[BaseHTTPRequestHandler]:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    expected = f"Bearer {token}".encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] != "/metrics":
                return self._json(404, {"error": "not found"})
            given = self.headers.get("Authorization", "").encode("latin-1", "replace")
            # Constant-time comparison: a byte-by-byte one leaks how much of a guess was right.
            if token and not hmac.compare_digest(given, expected):
                return self._json(401, {"error": "authentication required"})
            body = generate_latest(registry)
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE_LATEST)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return None

        def _json(self, status: int, payload: dict) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if status == 401:
                self.send_header("WWW-Authenticate", "Bearer")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args) -> None:  # a scrape is not news
            pass

    return Handler
