from django.core.management.base import BaseCommand, CommandError

from tasks.models import DeadLetter
from tasks.services import DeadLetterError, dead_letter_discard, dead_letter_replay


class Command(BaseCommand):
    help = "Dead letters: list | show ID | replay ID|--all | discard ID|--all"

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        listing = sub.add_parser("list", help="dead letters, newest first")
        listing.add_argument("--status", default="dead", choices=[*DeadLetter.Status.values, "all"])
        show = sub.add_parser("show", help="one dead letter in full")
        show.add_argument("id", type=int)
        for name in ("replay", "discard"):
            action = sub.add_parser(name, help=f"{name} one dead letter, or --all")
            target = action.add_mutually_exclusive_group(required=True)
            target.add_argument("id", type=int, nargs="?")
            target.add_argument("--all", action="store_true", help="every dead letter")

    def handle(self, *args, action: str, **options):
        return getattr(self, f"do_{action}")(**options)

    def do_list(self, *, status: str, **options) -> None:
        letters = DeadLetter.objects.all()
        if status != "all":
            letters = letters.filter(status=status)
        for letter in letters:
            self.stdout.write(
                f"{letter.pk}\t{letter.status}\t{letter.reason}\t{letter.task_name}\t"
                f"{letter.task_id}\tattempts={letter.attempts}\t{letter.exception[:80]}"
            )
        self.stdout.write(f"{letters.count()} dead letters ({status}).")

    def do_show(self, *, id: int, **options) -> None:
        letter = DeadLetter.objects.filter(pk=id).first()
        if letter is None:
            raise CommandError(f"no dead letter with id {id}")
        for field in DeadLetter._meta.fields:
            self.stdout.write(f"{field.name}: {getattr(letter, field.name)}")

    def _each(self, operation, *, id: int | None, all: bool, verb: str) -> None:
        ids = (
            list(
                DeadLetter.objects.filter(status=DeadLetter.Status.DEAD).values_list(
                    "pk", flat=True
                )
            )
            if all
            else [id]
        )
        for letter_id in ids:
            try:
                letter = operation(dead_letter_id=letter_id)
            except DeadLetterError as exc:
                raise CommandError(str(exc)) from exc
            self.stdout.write(f"{verb} {letter.pk} {letter.task_name}[{letter.task_id}]")
        self.stdout.write(f"{verb} {len(ids)} dead letters.")

    def do_replay(self, *, id: int | None, all: bool, **options) -> None:
        self._each(dead_letter_replay, id=id, all=all, verb="replayed")

    def do_discard(self, *, id: int | None, all: bool, **options) -> None:
        self._each(dead_letter_discard, id=id, all=all, verb="discarded")
