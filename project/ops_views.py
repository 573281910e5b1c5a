"""The operations page (staff): each component's state, the pipeline's charts, the queues and
the dead letters with a replay per reason. The page renders on the server and, every few
seconds, swaps in a fresh copy of its panels (``/ops/panels``); status.json has the same figures."""

from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.contrib.auth.decorators import permission_required
from django.http import JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from tasks.services import DeadLetterError, dead_letters_replay

from .charts import Series, line_chart
from .components import components_state
from .ops import ops_status as ops_document

WINDOW_S = 300


def _charts(status: dict) -> list[dict]:
    now = status["time"]
    lag = status["lag_percentiles_series"]
    charts = [
        ("Deltas applied", "deltas/s", [Series("applied/s", status["applied_series"])]),
        (
            "Apply lag (publish to commit)",
            "seconds",
            [
                Series("p50", [(t, p50) for t, p50, _ in lag]),
                Series("p99", [(t, p99) for t, _, p99 in lag], dashed=True),
            ],
        ),
        ("Deltas pending in the broker", "deltas", [Series("pending", status["pending_series"])]),
        ("Dead letters", "per 10 s", [Series("dead-lettered", status["dead_letters_series"])]),
    ]
    return [
        {"title": title, "svg": line_chart(title=title, unit=unit, series=s, now=now)}
        for title, unit, s in charts
    ]


def _context() -> dict:
    status = ops_document()
    return {
        "status": status,
        "components": components_state(status=status),
        "charts": _charts(status),
        "window_minutes": WINDOW_S // 60,
    }


@staff_member_required
def ops(request):
    return render(request, "ops.html", _context())


@staff_member_required
def ops_panels(request):
    return render(request, "ops_panels.html", _context())


@staff_member_required
def ops_status(request):
    return JsonResponse(ops_document())


@staff_member_required
@permission_required("tasks.change_deadletter", raise_exception=True)
@require_POST
def ops_dead_letters_replay(request):
    """The admin's permission for dead letters is needed too, not only staff status."""
    reason = request.POST.get("reason", "")
    try:
        outcome = dead_letters_replay(reason=reason)
    except DeadLetterError as exc:
        messages.error(request, str(exc))
        return redirect("ops")
    if outcome.replayed or not outcome.failed:
        messages.success(request, f"Replayed {outcome.replayed} dead letter(s) of reason {reason}.")
    if outcome.refused:  # replayed or discarded meanwhile: one line, not one per letter
        messages.warning(request, f"{len(outcome.refused)} refused: {outcome.refused[0]}, ...")
    if outcome.failed:
        messages.error(request, f"Stopped: {outcome.failed}. The others stay dead letters.")
    elif outcome.more:
        messages.warning(request, "More dead letters of this reason wait: replay again.")
    return redirect("ops")
