import hashlib
import secrets
import time

from django.core.management.base import BaseCommand, CommandError

from counters import selectors, services
from counters.keys import InvalidCounter
from tasks.app import app
from tasks.broker import broker_kind

# RabbitMQ's management API refreshes its figures every 5 s: "nothing pending" must be seen for
# longer than that before it is believed. The Redis broker's counts are read from the lists and
# kombu's unacked hash directly; only a message between kombu's BRPOP and its unacked record is
# invisible, for a moment, so a zero seen twice a little apart is believed.
SETTLE_S = {"amqp": 6.0, "redis": 0.5}
POLL_S = {"amqp": 1.0, "redis": 0.2}


class Command(BaseCommand):
    help = "Durable counters: get KEY | drain --timeout S | reconcile | service-token"

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        get = sub.add_parser("get", help="print a counter: value, durable, pending")
        get.add_argument("key")
        drain = sub.add_parser(
            "drain", help="wait until every acknowledged delta is applied or dead-lettered"
        )
        drain.add_argument("--timeout", type=float, default=60.0, help="seconds (exit 1 after)")
        reconcile = sub.add_parser(
            "reconcile",
            help="repair drift between Redis and PostgreSQL + pending; re-publish "
            "stranded pending deltas",
        )
        reconcile.add_argument(
            "--republish-after",
            type=float,
            default=None,
            metavar="S",
            help="re-publish pending deltas older than S seconds that are not "
            "applied (default: COUNTER_REPUBLISH_AFTER_S)",
        )

        sub.add_parser(
            "service-token",
            help="make a service token for the counter API (any namespace and amount): prints "
            "the secret once, and the digest to add to COUNTER_SERVICE_TOKENS",
        )

    def handle(self, *args, action: str, **options):
        return getattr(self, f"do_{action.replace('-', '_')}")(**options)

    def do_service_token(self, **options) -> None:
        # Only the digest goes into the servers' environment: a leak of it counts nothing.
        secret = secrets.token_urlsafe(32)
        digest = hashlib.sha256(secret.encode()).hexdigest()
        self.stdout.write(f"token:  {secret}")
        self.stdout.write(f"digest: {digest}")
        self.stdout.write(
            "Add the digest to COUNTER_SERVICE_TOKENS (comma-separated) on every web process; "
            "the service sends Authorization: Bearer <token>. The token is not shown again."
        )

    def do_get(self, *, key: str, **options) -> None:
        try:
            reading = services.counter_get(key=key)
        except InvalidCounter as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(
            f"{key} value={reading.value} durable={reading.durable} pending={reading.pending}"
        )

    def do_drain(self, *, timeout: float, **options) -> None:
        kind = broker_kind(app)
        start = time.monotonic()
        zero_since = None
        reported = -1  # a progress line a second
        while True:
            pending = selectors.pending_messages_count()
            elapsed = time.monotonic() - start
            if int(elapsed) > reported:
                reported = int(elapsed)
                self.stdout.write(
                    f"drain: {pending} delta messages pending, {selectors.applied_count()} "
                    f"applied in the ledger, {elapsed:.0f}s"
                )
            if pending == 0:
                zero_since = zero_since or time.monotonic()
                if time.monotonic() - zero_since >= SETTLE_S[kind]:
                    self.stdout.write("drained.")
                    return
            else:
                zero_since = None
            if elapsed > timeout:
                raise CommandError(f"not drained after {timeout:.0f}s: {pending} still pending")
            time.sleep(POLL_S[kind])

    def do_reconcile(self, *, republish_after: float | None = None, **options) -> None:
        if republish_after is not None and republish_after < 0:
            raise CommandError("--republish-after must be 0 or more seconds")
        repairs = services.counter_reconcile(republish_after_s=republish_after)
        for repair in repairs:
            self.stdout.write(f"{repair.key}: {repair.before} -> {repair.after} ({repair.detail})")
        self.stdout.write(f"reconciled: {len(repairs)} counters repaired.")
