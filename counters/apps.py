from django.apps import AppConfig


class CountersConfig(AppConfig):
    name = "counters"
    verbose_name = "Durable hot counters"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers system checks)
