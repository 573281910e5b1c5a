from django.contrib import admin, messages

from .models import DeadLetter
from .services import DeadLetterError, dead_letter_discard, dead_letter_replay


def _each(modeladmin, request, queryset, operation, verb: str) -> None:
    done = 0
    for letter in queryset.order_by("pk"):
        try:
            operation(dead_letter_id=letter.pk)
            done += 1
        except DeadLetterError as exc:
            modeladmin.message_user(request, str(exc), messages.WARNING)
    modeladmin.message_user(request, f"{verb} {done} dead letter(s).", messages.SUCCESS)


# Both change what happens to a message (publish it again, or give it up): change_deadletter, not
# the view permission that lists them (issue 26).
@admin.action(
    description="Replay the selected dead letters (publish them again)", permissions=["change"]
)
def replay(modeladmin, request, queryset):
    _each(modeladmin, request, queryset, dead_letter_replay, "Replayed")


@admin.action(description="Discard the selected dead letters", permissions=["change"])
def discard(modeladmin, request, queryset):
    _each(modeladmin, request, queryset, dead_letter_discard, "Discarded")


@admin.register(DeadLetter)
class DeadLetterAdmin(admin.ModelAdmin):
    list_display = ["task_id", "task_name", "reason", "status", "attempts", "deliveries", "broker"]
    list_display += ["first_failed_at", "last_failed_at"]
    list_filter = ["reason", "status", "broker", "task_name"]
    search_fields = ["task_id", "task_name", "exception"]
    date_hierarchy = "last_failed_at"
    actions = [replay, discard]

    def get_readonly_fields(self, request, obj=None):
        # The record of a failure is evidence: nobody edits it by hand.
        return [field.name for field in self.model._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False
