from django.contrib import admin

from .models import DeadLetter


@admin.register(DeadLetter)
class DeadLetterAdmin(admin.ModelAdmin):
    list_display = ["task_id", "task_name", "reason", "status", "attempts", "deliveries", "broker"]
    list_display += ["first_failed_at", "last_failed_at"]
    list_filter = ["reason", "status", "broker", "task_name"]
    search_fields = ["task_id", "task_name", "exception"]
    date_hierarchy = "last_failed_at"

    def get_readonly_fields(self, request, obj=None):
        # The record of a failure is evidence: nobody edits it by hand.
        return [field.name for field in self.model._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False
