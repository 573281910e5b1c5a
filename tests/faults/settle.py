"""What follows the load in a fault scenario and in the soak: the outbox published, the queues
drained, the scheduled reconcile run, then the checker over the whole history."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path

from .checker import Expect, Verdict, check, read_history
from .cluster import Cluster, DrainTimeout

DRAIN_TIMEOUT_S = 240
# Every committed outbox row published after the load stopped: a relay that failed waits up to
# OUTBOX_RETRY_MAX_S (10 s) between passes, and PostgreSQL may just be back.
OUTBOX_TIMEOUT_S = 120


def drain(cluster: Cluster, verdict: Verdict, *, timeout: float) -> None:
    try:
        verdict.drain_s += cluster.drain(timeout=timeout)
    except DrainTimeout as exc:
        verdict.drain_s += exc.waited
        verdict.problems.append(str(exc))


def settle_and_check(
    *,
    cluster: Cluster,
    verdict: Verdict,
    histories: list[Path],
    expect: Expect,
    drain_timeout: float = DRAIN_TIMEOUT_S,
    checks: Iterable[Callable[[Verdict], None]] = (),
) -> Verdict:
    """After the load has stopped: publish, drain, reconcile, run ``checks``, then the checker."""
    try:  # what the transactions committed, into the queues (the relay)
        verdict.drain_s += cluster.wait_outbox_sent(timeout=OUTBOX_TIMEOUT_S)
    except AssertionError:
        verdict.problems.append(
            f"outbox not published after {OUTBOX_TIMEOUT_S} s: "
            f"{cluster.outbox_unsent()} rows unsent"
        )
    drain(cluster, verdict, timeout=drain_timeout)
    # What operations run on a schedule (beat): reconcile the cache and re-publish pending
    # deltas that are neither applied nor dead-lettered (a message the broker lost).
    done = cluster.manage("counters", "reconcile", "--republish-after", "0")
    (cluster.root / "reconcile.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        verdict.problems.append(f"counters reconcile failed: {done.stderr[-500:]}")
    verdict.republished = sum(
        int(m.group(1)) for m in re.finditer(r"re-published (\d+) stranded", done.stdout)
    )
    if verdict.republished:
        drain(cluster, verdict, timeout=60)
    verdict.restarts = cluster.restarts
    for extra_check in checks:
        extra_check(verdict)
    expect.mails = cluster.mails()
    with cluster.db() as db:
        return check(verdict=verdict, history=read_history(*histories), db=db, expect=expect)
