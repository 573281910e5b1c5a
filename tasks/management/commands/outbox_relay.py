import signal
import socket

from django.core.management.base import BaseCommand, CommandError

from tasks.outbox import RELAY_STALE_S, relays_alive
from tasks.relay import Relay


class Command(BaseCommand):
    help = (
        "Publish committed outbox rows to the broker until stopped (SIGTERM/SIGINT); "
        "--check: exit 0 if a relay on this host reported lately (a container health check)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--check", action="store_true", help="health check of this host")
        parser.add_argument("--once", action="store_true", help="one pass, then exit")

    def handle(self, *args, check: bool, once: bool, **options):
        if check:
            host = socket.gethostname()
            alive = [
                r for r in relays_alive(within_s=RELAY_STALE_S) if r.name.rsplit(":", 1)[0] == host
            ]
            if not alive:
                raise CommandError(f"no outbox relay on {host} reported in {RELAY_STALE_S:.0f}s")
            self.stdout.write(f"ok: {', '.join(r.name for r in alive)}")
            return
        relay = Relay()

        def stop(signum, frame):
            relay.stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        self.stdout.write(f"outbox relay {relay.name} started")
        try:
            relay.run(max_passes=1 if once else None)
        finally:
            relay.close()
        self.stdout.write(f"outbox relay {relay.name} stopped: {relay.published} published")
