"""The batch partition and the unpacking of envelopes: pure functions (no I/O), so tested without
servers (tests/counters/test_partition.py). The apply path (apply.py) does what they decide.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from ..keys import InvalidCounter, amount_validate, key_validate
from .common import DURABLE


@dataclass
class IncomingDelta:
    """One delta as the batch task received it: a message of its own, or one of an envelope's
    (``envelope_id``: the message; ``message_id``: the delta's own id, as a single's would be)."""

    message_id: str
    args: list
    retries: int = 0
    deliveries: int = 1
    published_at: float | None = None
    envelope_id: str | None = None
    # Published alone out of an envelope that came back twice: applied in a group of its own from
    # its first delivery, so a delta that kills its worker takes only itself down.
    alone: bool = False

    @property
    def delivered_as(self) -> str:
        """The id of the message that brought it (what the broker counts deliveries of)."""
        return self.envelope_id or self.message_id


def _parse(delta: IncomingDelta) -> tuple[str, str, int]:
    try:
        delta_id, key, amount = delta.args
        uuid.UUID(str(delta_id))
    except (TypeError, ValueError) as exc:
        raise InvalidCounter(f"malformed delta {delta.args!r}") from exc
    _, data_class = key_validate(key=key)
    if data_class != DURABLE:
        raise InvalidCounter(f"{key} is not a durable counter")
    return str(delta_id), key, amount_validate(amount=amount)


Parsed = tuple[str, str, int]  # (delta id, key, amount)


@dataclass
class Partition:
    """A batch sorted by what must happen to each of its messages (``deltas_partition``)."""

    # Over the delivery limit, but the ledger has it: applied before its worker died (after the
    # commit, before the acknowledgement). Nothing to do but acknowledge.
    done: list[IncomingDelta] = field(default_factory=list)
    over_limit: list[IncomingDelta] = field(default_factory=list)  # dead-letter: worker lost
    malformed: list[tuple[IncomingDelta, str]] = field(default_factory=list)  # dead-letter
    # Applied in this order: every first delivery together, the envelopes delivered a second time
    # together (whole), then each other redelivered delta alone (a single's deliveries count
    # towards its limit: an innocent one must not spend them beside a poison).
    groups: list[list[tuple[IncomingDelta, Parsed]]] = field(default_factory=list)
    # Of an envelope delivered a third time, not in the ledger: published again one message each,
    # so that each has its own delivery count and a poison delta takes only itself down.
    explode: list[tuple[IncomingDelta, Parsed]] = field(default_factory=list)


def deltas_partition(
    *, deltas: list[IncomingDelta], max_deliveries: int, applied: set[str]
) -> Partition:
    """Sort a batch (no I/O). ``applied``: the delta ids of the batch the ledger already holds."""
    partition = Partition()
    fresh, second = [], []
    for delta in deltas:
        if delta.args and str(delta.args[0]) in applied:
            partition.done.append(delta)
        elif delta.deliveries > max_deliveries and not delta.envelope_id:
            # An envelope is run at most twice (then its deltas go alone), so only a delta's
            # own deliveries count towards its limit.
            partition.over_limit.append(delta)
        else:
            try:
                parsed = _parse(delta)
            except InvalidCounter as exc:
                partition.malformed.append((delta, f"InvalidCounter: {exc}"))
                continue
            if delta.deliveries == 1 and not delta.alone:
                fresh.append((delta, parsed))
            elif delta.deliveries == 2 and delta.envelope_id:
                # Most are a broker node's or a connection's loss giving back everything its
                # consumers held (thousands of envelopes after a node restart, measured by the
                # soak): exploding them all made one transaction per delta.
                second.append((delta, parsed))
            elif delta.envelope_id:
                partition.explode.append((delta, parsed))
            else:
                partition.groups.append([(delta, parsed)])
    partition.groups[:0] = [group for group in (fresh, second) if group]
    return partition


def float_or_none(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):  # whatever a message carries
        return None


def envelope_unpack(
    *, envelope_id: str, items, deliveries: int, retries: int
) -> list[IncomingDelta]:
    """An envelope's deltas, each under its own id; a malformed item (or envelope) becomes a
    malformed delta of its own, dead-lettered alone."""
    if not isinstance(items, list) or not items:
        items = [items]
    deltas = []
    for index, item in enumerate(items):
        ok = isinstance(item, list) and len(item) == 4 and _is_uuid(item[0])
        deltas.append(
            IncomingDelta(
                # Short enough for a dead letter's id, whatever the message's id is.
                message_id=item[0] if ok else f"{str(envelope_id)[:40]}#{index}",
                args=item[:3] if ok else [item],
                retries=retries,
                deliveries=deliveries,
                published_at=float_or_none(item[3]) if ok else None,
                envelope_id=envelope_id,
            )
        )
    return deltas


def _is_uuid(value) -> bool:
    try:
        uuid.UUID(value)
        return isinstance(value, str)
    except (TypeError, ValueError, AttributeError):
        return False
