"""The leader's view of its idempotent producers' batches that are not applied yet.

A partition's `ProducerTable` (weir.cluster.storage.producers) covers the
entries up to the applied index. A leader decides a new batch against that
table plus every producer batch its own log holds beyond it: its own
proposals and, right after it was elected, entries of earlier terms it
holds but has not seen committed (DESIGN §4: the new leader's view is its
applied state plus its own log tail). This module keeps that tail per
group, rebuilt from the log whenever the group's term or RawNode changed
(a leader's log only grows by its own proposals within one term), and
pruned as entries are applied.
"""

from __future__ import annotations

import dataclasses

from ..raft.rawnode import RawNode
from ..raft.types import EntryType
from ..storage.codec import decode_batch_header
from ..storage.producers import ProducerFields, TailBatch

# Tail batches added between two full prunes: producers that never send
# again leave nothing behind for longer than this.
PRUNE_EVERY_ADDS = 1024
# Bytes read from the log at most when rebuilding a tail (the uncommitted
# tail is bounded by the Raft core's limits far below this).
REBUILD_BYTES_MAX = 1 << 40


@dataclasses.dataclass(slots=True)
class ProducerTail:
    raw: RawNode
    term: int
    by_producer: dict[int, list[TailBatch]]
    adds: int = 0

    def batches(self, producer_id: int, applied: int) -> list[TailBatch]:
        """The producer's tail batches beyond `applied`, oldest first."""
        batches = self.by_producer.get(producer_id)
        if not batches:
            return []
        if batches[0].index <= applied:
            batches = [b for b in batches if b.index > applied]
            if batches:
                self.by_producer[producer_id] = batches
            else:
                del self.by_producer[producer_id]
        return batches

    def add(self, fields: ProducerFields, batch: TailBatch, applied: int) -> None:
        self.by_producer.setdefault(fields.producer_id, []).append(batch)
        self.adds += 1
        if self.adds >= PRUNE_EVERY_ADDS:
            self.adds = 0
            for producer_id in list(self.by_producer):
                self.batches(producer_id, applied)


def tail_of(current: ProducerTail | None, raw: RawNode, applied: int) -> ProducerTail:
    """`current` if it still describes `raw`'s log, else one rebuilt from the log."""
    term = raw.raft.term
    if current is not None and current.raw is raw and current.term == term:
        return current
    log = raw.raft.log
    by_producer: dict[int, list[TailBatch]] = {}
    last = log.last_index()
    if last > applied:
        for entry in log.entries(applied + 1, last + 1, REBUILD_BYTES_MAX):
            if entry.type is not EntryType.NORMAL:
                continue
            header = decode_batch_header(entry.data)
            fields = header.producer
            if fields is None or not header.takes_offsets:
                continue
            by_producer.setdefault(fields.producer_id, []).append(
                TailBatch(
                    fields.epoch,
                    fields.first_sequence,
                    header.record_count,
                    header.base_offset,
                    entry.index,
                    entry.term,
                )
            )
    return ProducerTail(raw, term, by_producer)


__all__ = ["ProducerTail", "tail_of"]
