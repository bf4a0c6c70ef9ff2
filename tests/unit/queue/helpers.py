"""Helpers of the queue-mode tests: a dispatch state with a seeded clock of its own."""

from __future__ import annotations

import random

from weir.cluster.queue import (
    AppliedQueueState,
    Candidate,
    ControlRecord,
    QueueConfig,
    QueueDispatch,
    decode_control,
    encode_control,
)

GROUP = "workers"
DEADLINE_MS = 30_000


def dispatch(seed: int = 1, **settings: object) -> QueueDispatch:
    config = QueueConfig(**settings)  # type: ignore[arg-type]
    return QueueDispatch(config, random.Random(seed))


def fresh(
    d: QueueDispatch, count: int, key_hashes: dict[int, int] | None = None
) -> tuple[Candidate, ...]:
    """`count` new records from the cursor, with keys from `key_hashes` (offset -> hash)."""
    keys = key_hashes or {}
    return tuple(Candidate(o, keys.get(o)) for o in range(d.cursor, d.cursor + count))


def replicate(records: list[ControlRecord], *replicas: AppliedQueueState) -> None:
    """Applies `records` through the codec, as a replica reads them from the log."""
    if not records:
        return
    group, decoded = decode_control(encode_control(GROUP, records))
    assert group == GROUP and list(decoded) == records
    for replica in replicas:
        for record in decoded:
            replica.apply(record)
        replica.check_invariants()


def fingerprint(d: QueueDispatch) -> object:
    """Everything observable of a dispatch state, to show an event changed nothing."""
    return (
        d.acked.low_watermark,
        list(d.acked.ranges()),
        d.cursor,
        dict(d.in_flight),
        dict(d.waiting),
        dict(d.dead_lettering),
        d.size(),
        d.next_wakeup_ms(),
    )
