"""An e-mail backend for the worker tests: fails while the cache key ``test:mail-down`` exists
(a transient error: the mail server is unreachable), then records each message in the cache."""

from django.core.mail.backends.base import BaseEmailBackend
from django_redis import get_redis_connection


class FlakyBackend(BaseEmailBackend):
    def send_messages(self, email_messages):
        client = get_redis_connection("default")
        if client.exists("test:mail-down"):
            client.incr("test:mail-failures")
            raise ConnectionRefusedError("simulated: the mail server is unreachable")
        for message in email_messages:
            client.rpush("test:mail-sent", message.subject)
        return len(email_messages)
