from django.apps import AppConfig


class CountersConfig(AppConfig):
    name = "counters"
    verbose_name = "Durable hot counters"
