"""A checker for produce/consume histories recorded under faults (Jepsen-style, simple).

A test records every produce attempt with its outcome, then reads every
partition back and records every consumed record; `check()` says what went
wrong. The outcome of an attempt is what the *client* knows:

- `ACKNOWLEDGED` with the base offset the broker answered: the batch's
  record i must be at `base_offset + i`, for ever (DESIGN §7, invariants 1
  and 2);
- `FAILED`: the broker said definitely not written (an error that is not
  retriable, or NOT_WRITTEN); the payloads must not appear because of it;
- `UNKNOWN`: a timeout or a lost connection; the payloads may or may not
  appear, and may appear a second time when the client retried them.

The rules, each an `AnomalyKind`:

- LOST: an acknowledged payload is nowhere in its partition's read log.
- CHANGED_MEANING: the offset an acknowledged payload was given holds
  something else (or nothing while the payload sits elsewhere), or two reads
  of one offset saw different payloads.
- REORDERED: one reader saw a partition's offsets not strictly increasing.
- DUPLICATED: a payload sits at more offsets than it had attempts that may
  have written it (acknowledged or unknown). A duplicate within that
  allowance is not an anomaly but is reported in `Report.duplicates`, with
  the request ids of the unknown attempts that explain it.
- FAILED_WRITTEN: a payload whose every attempt failed definitely was read.
- PHANTOM: a payload no attempt carried was read, or read in a partition
  no attempt sent it to.

Payload ids are whatever the test encodes in its record values (unique per
logical record); retries of a payload carry the same id.
"""

from __future__ import annotations

import enum
import threading
from collections import defaultdict
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field

PayloadId = Hashable
# Anomalies listed in full by `Report.summary()`; the rest are counted.
SUMMARY_ANOMALIES_MAX = 20


class Outcome(enum.Enum):
    ACKNOWLEDGED = "acknowledged"
    FAILED = "failed"
    UNKNOWN = "unknown"


class AnomalyKind(enum.Enum):
    LOST = "lost"
    CHANGED_MEANING = "changed meaning"
    REORDERED = "reordered"
    DUPLICATED = "duplicated"
    FAILED_WRITTEN = "failed but written"
    PHANTOM = "phantom"


@dataclass(frozen=True, slots=True)
class Attempt:
    """One produce request as the client saw it end."""

    request_id: int
    partition: int
    payloads: tuple[PayloadId, ...]
    outcome: Outcome
    base_offset: int | None = None

    def __post_init__(self) -> None:
        assert (self.base_offset is not None) == (self.outcome is Outcome.ACKNOWLEDGED), self
        assert self.payloads, "an attempt carries at least one payload"

    def offsets(self) -> range:
        assert self.base_offset is not None
        return range(self.base_offset, self.base_offset + len(self.payloads))


@dataclass(frozen=True, slots=True)
class Read:
    """One consumed record. `reader` tells apart read sessions, each ordered on its own."""

    partition: int
    offset: int
    payload: PayloadId
    reader: int = 0


@dataclass(frozen=True, slots=True)
class Anomaly:
    kind: AnomalyKind
    partition: int
    payload: PayloadId | None
    offsets: tuple[int, ...]
    detail: str

    def __str__(self) -> str:
        return (
            f"{self.kind.value}: partition {self.partition} offsets {list(self.offsets)} "
            f"payload {self.payload!r}: {self.detail}"
        )


@dataclass(frozen=True, slots=True)
class Duplicate:
    """A payload stored more than once, explained by attempts with unknown outcomes."""

    partition: int
    payload: PayloadId
    offsets: tuple[int, ...]
    unknown_request_ids: tuple[int, ...]


@dataclass(slots=True)
class Report:
    anomalies: list[Anomaly] = field(default_factory=list)
    duplicates: list[Duplicate] = field(default_factory=list)
    acknowledged: int = 0
    failed: int = 0
    unknown: int = 0
    unknown_read: int = 0
    reads: int = 0

    @property
    def ok(self) -> bool:
        return not self.anomalies

    def kinds(self) -> set[AnomalyKind]:
        return {a.kind for a in self.anomalies}

    def summary(self) -> str:
        lines = [
            f"{self.acknowledged} payloads acknowledged, {self.failed} failed, "
            f"{self.unknown} unknown ({self.unknown_read} of them read back), "
            f"{self.reads} records read, {len(self.duplicates)} allowed duplicates, "
            f"{len(self.anomalies)} anomalies"
        ]
        lines += [f"  {a}" for a in self.anomalies[:SUMMARY_ANOMALIES_MAX]]
        if len(self.anomalies) > SUMMARY_ANOMALIES_MAX:
            lines.append(f"  ... and {len(self.anomalies) - SUMMARY_ANOMALIES_MAX} more")
        lines += [
            f"  duplicate allowed: partition {d.partition} payload {d.payload!r} at "
            f"{list(d.offsets)}, unknown attempts {list(d.unknown_request_ids)}"
            for d in self.duplicates[:SUMMARY_ANOMALIES_MAX]
        ]
        return "\n".join(lines)

    def assert_ok(self) -> None:
        assert self.ok, self.summary()


def check(attempts: Iterable[Attempt], reads: Iterable[Read]) -> Report:
    """Every rule of the module docstring, over one history."""
    attempts = list(attempts)
    reads = list(reads)
    report = Report(reads=len(reads))
    _check_order(reads, report)
    at_offset = _check_reads_agree(reads, report)
    stored: dict[tuple[int, PayloadId], set[int]] = defaultdict(set)
    for (partition, offset), payload in at_offset.items():
        stored[(partition, payload)].add(offset)
    _check_acknowledged(attempts, at_offset, stored, report)
    _check_stored(attempts, stored, report)
    return report


def _check_order(reads: Sequence[Read], report: Report) -> None:
    last: dict[tuple[int, int], int] = {}
    for read in reads:
        key = (read.reader, read.partition)
        previous = last.get(key)
        if previous is not None and read.offset <= previous:
            report.anomalies.append(
                Anomaly(
                    AnomalyKind.REORDERED,
                    read.partition,
                    read.payload,
                    (previous, read.offset),
                    f"reader {read.reader} saw offset {read.offset} after {previous}",
                )
            )
        last[key] = read.offset if previous is None else max(previous, read.offset)


def _check_reads_agree(reads: Sequence[Read], report: Report) -> dict[tuple[int, int], PayloadId]:
    """What each offset holds; two reads that disagree change its meaning."""
    at_offset: dict[tuple[int, int], PayloadId] = {}
    for read in reads:
        key = (read.partition, read.offset)
        seen = at_offset.setdefault(key, read.payload)
        if seen != read.payload:
            report.anomalies.append(
                Anomaly(
                    AnomalyKind.CHANGED_MEANING,
                    read.partition,
                    read.payload,
                    (read.offset,),
                    f"read as {seen!r} before, as {read.payload!r} by reader {read.reader}",
                )
            )
    return at_offset


def _check_acknowledged(
    attempts: Sequence[Attempt],
    at_offset: dict[tuple[int, int], PayloadId],
    stored: dict[tuple[int, PayloadId], set[int]],
    report: Report,
) -> None:
    for attempt in attempts:
        if attempt.outcome is not Outcome.ACKNOWLEDGED:
            continue
        report.acknowledged += len(attempt.payloads)
        for payload, offset in zip(attempt.payloads, attempt.offsets(), strict=True):
            found = at_offset.get((attempt.partition, offset), _MISSING)
            if found == payload:
                continue
            elsewhere = sorted(stored.get((attempt.partition, payload), ()))
            if found is _MISSING and not elsewhere:
                kind, detail = AnomalyKind.LOST, "acknowledged, never read back"
            elif found is _MISSING:
                kind, detail = AnomalyKind.CHANGED_MEANING, f"not there; read at {elsewhere}"
            else:
                also = f"; the payload read at {elsewhere}" if elsewhere else ""
                kind, detail = AnomalyKind.CHANGED_MEANING, f"holds {found!r}{also}"
            report.anomalies.append(
                Anomaly(
                    kind,
                    attempt.partition,
                    payload,
                    (offset,),
                    f"request {attempt.request_id} {detail}",
                )
            )


def _check_stored(
    attempts: Sequence[Attempt],
    stored: dict[tuple[int, PayloadId], set[int]],
    report: Report,
) -> None:
    """Each stored payload against the attempts that could have written it."""
    by_payload: dict[tuple[int, PayloadId], list[Attempt]] = defaultdict(list)
    partitions_of: dict[PayloadId, set[int]] = defaultdict(set)
    for attempt in attempts:
        if attempt.outcome is Outcome.FAILED:
            report.failed += len(attempt.payloads)
        elif attempt.outcome is Outcome.UNKNOWN:
            report.unknown += len(attempt.payloads)
        for payload in attempt.payloads:
            by_payload[(attempt.partition, payload)].append(attempt)
            partitions_of[payload].add(attempt.partition)
    for (partition, payload), offsets_set in stored.items():
        offsets = tuple(sorted(offsets_set))
        tried = by_payload.get((partition, payload), [])
        if not tried:
            elsewhere = sorted(partitions_of.get(payload, ()))
            report.anomalies.append(
                Anomaly(
                    AnomalyKind.PHANTOM,
                    partition,
                    payload,
                    offsets,
                    f"produced to partitions {elsewhere}" if elsewhere else "never produced",
                )
            )
            continue
        acknowledged = [a for a in tried if a.outcome is Outcome.ACKNOWLEDGED]
        unknown = [a for a in tried if a.outcome is Outcome.UNKNOWN]
        if unknown:
            report.unknown_read += 1
        if not acknowledged and not unknown:
            report.anomalies.append(
                Anomaly(
                    AnomalyKind.FAILED_WRITTEN,
                    partition,
                    payload,
                    offsets,
                    f"requests {[a.request_id for a in tried]} failed definitely",
                )
            )
        elif len(offsets) > len(acknowledged) + len(unknown):
            report.anomalies.append(
                Anomaly(
                    AnomalyKind.DUPLICATED,
                    partition,
                    payload,
                    offsets,
                    f"{len(offsets)} copies from {len(acknowledged)} acknowledged and "
                    f"{len(unknown)} unknown attempts "
                    f"(requests {[a.request_id for a in tried]})",
                )
            )
        elif len(offsets) > 1:
            report.duplicates.append(
                Duplicate(partition, payload, offsets, tuple(a.request_id for a in unknown))
            )


class _Missing:
    def __repr__(self) -> str:
        return "nothing"


_MISSING = _Missing()


class History:
    """A thread-safe recorder for one test's attempts and reads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._attempts: list[Attempt] = []
        self._reads: list[Read] = []

    def acknowledged(
        self, request_id: int, partition: int, payloads: Sequence[PayloadId], base_offset: int
    ) -> None:
        self._add(
            Attempt(request_id, partition, tuple(payloads), Outcome.ACKNOWLEDGED, base_offset)
        )

    def failed(self, request_id: int, partition: int, payloads: Sequence[PayloadId]) -> None:
        self._add(Attempt(request_id, partition, tuple(payloads), Outcome.FAILED))

    def unknown(self, request_id: int, partition: int, payloads: Sequence[PayloadId]) -> None:
        self._add(Attempt(request_id, partition, tuple(payloads), Outcome.UNKNOWN))

    def _add(self, attempt: Attempt) -> None:
        with self._lock:
            self._attempts.append(attempt)

    def read(self, partition: int, offset: int, payload: PayloadId, reader: int = 0) -> None:
        with self._lock:
            self._reads.append(Read(partition, offset, payload, reader))

    def read_batch(
        self, partition: int, base_offset: int, payloads: Sequence[PayloadId], reader: int = 0
    ) -> None:
        with self._lock:
            self._reads.extend(
                Read(partition, base_offset + i, p, reader) for i, p in enumerate(payloads)
            )

    def attempts(self) -> list[Attempt]:
        with self._lock:
            return list(self._attempts)

    def reads(self) -> list[Read]:
        with self._lock:
            return list(self._reads)

    def check(self) -> Report:
        return check(self.attempts(), self.reads())
