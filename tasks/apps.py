from django.apps import AppConfig


class TasksConfig(AppConfig):
    name = "tasks"
    verbose_name = "Task delivery"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers system checks)
