from django.apps import AppConfig


class CountersConfig(AppConfig):
    name = "counters"
    verbose_name = "Durable hot counters"

    def ready(self) -> None:
        from tasks.outbox import outbox_publisher_register

        from . import checks  # noqa: F401  (registers system checks)
        from .services import APPLY_TASK, delta_publish_from_outbox

        outbox_publisher_register(task_name=APPLY_TASK, publisher=delta_publish_from_outbox)
