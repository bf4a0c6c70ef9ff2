"""Queue groups' counts as the admin client returns them (`Admin.queue_stats`)."""

from __future__ import annotations

from dataclasses import dataclass

from weir.v1 import admin_pb2

__all__ = ["PartitionQueueStats", "QueueGroupTotals", "QueueStats"]


@dataclass(frozen=True, slots=True)
class PartitionQueueStats:
    """One queue group on one partition (docs/cli.md "Queues" says what each number means)."""

    group: str
    partition: int
    # Never delivered and due, plus redeliveries whose backoff passed.
    ready: int
    # Handed out, not yet acked, nacked or expired.
    in_flight: int
    # Waiting for a redelivery backoff or a deliver_at_ms still ahead.
    delayed: int
    # Dead-lettered since the group started on the partition.
    dead_lettered: int
    # Held back behind an earlier record of their key (ordered_keys).
    held: int
    # Failed for good, being appended to the dead-letter topic.
    dead_lettering: int
    # The node whose state the numbers come from.
    node_id: int
    # False: a replica's applied state (what was last replicated).
    from_leader: bool
    # True: ready and delayed are estimates (a large delayed-record index).
    approximate: bool

    @classmethod
    def from_proto(cls, p: admin_pb2.PartitionQueueStats) -> PartitionQueueStats:
        return cls(
            p.group,
            p.partition,
            p.ready,
            p.in_flight,
            p.delayed,
            p.dead_lettered,
            p.held,
            p.dead_lettering,
            p.node_id,
            p.from_leader,
            p.approximate,
        )


@dataclass(frozen=True, slots=True)
class QueueGroupTotals:
    group: str
    ready: int
    in_flight: int
    delayed: int
    dead_lettered: int

    @classmethod
    def from_proto(cls, t: admin_pb2.QueueGroupTotals) -> QueueGroupTotals:
        return cls(t.group, t.ready, t.in_flight, t.delayed, t.dead_lettered)


@dataclass(frozen=True, slots=True)
class QueueStats:
    """Per (group, partition) rows by group then partition, and each group's totals."""

    partitions: tuple[PartitionQueueStats, ...]
    totals: tuple[QueueGroupTotals, ...]

    def total(self, group: str) -> QueueGroupTotals | None:
        """The group's totals, None if it has no queue state on the topic."""
        return next((t for t in self.totals if t.group == group), None)

    @classmethod
    def from_proto(cls, r: admin_pb2.QueueStatsResponse) -> QueueStats:
        return cls(
            tuple(PartitionQueueStats.from_proto(p) for p in r.partitions),
            tuple(QueueGroupTotals.from_proto(t) for t in r.totals),
        )
