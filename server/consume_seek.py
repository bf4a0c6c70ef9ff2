"""Seek: moving the read position of one partition a stream delivers.

The reader keeps only the few numbers of a `Seek` (a request may carry
megabytes of unknown fields) and at most `SEEKS_INFLIGHT_MAX` of them
unanswered; past that it stops reading, as for commits. The writer applies
each seek and writes its `SeekResult` before it builds any response of
that partition again, so the records that follow the answer start at the
new position. A refused seek changes nothing and the stream goes on.
"""

from __future__ import annotations

import dataclasses

from weir.server.consume_cursor import Partition
from weir.server.consume_start import seek_target
from weir.server.errors import BrokerError
from weir.v1 import broker_pb2

# Seeks a stream may have read but not yet answered. Each is a few numbers.
SEEKS_INFLIGHT_MAX = 16


@dataclasses.dataclass(frozen=True, slots=True)
class SeekWork:
    seek_id: int
    partition: int
    position: broker_pb2.StartPosition

    @classmethod
    def of(cls, seek: broker_pb2.Seek) -> SeekWork:
        # A copy of the known fields only: unknown fields stay behind.
        position = broker_pb2.StartPosition(
            kind=seek.position.kind,
            offset=seek.position.offset,
            timestamp_ms=seek.position.timestamp_ms,
        )
        return cls(seek.seek_id, seek.partition, position)


def apply_seek(work: SeekWork, p: Partition) -> broker_pb2.SeekResult:
    """Move `p` to the seek's target; a refusal (in the result) leaves `p` as it was.

    The caller drops `p`'s kept cursor and queues it again after a move.
    Raises StorageError (reading the time index), which the caller answers.
    """
    try:
        target = seek_target(work.partition, work.position, p.log)
    except BrokerError as error:
        return refused(work, error, p.position)
    p.position = target
    p.run_base = -1
    p.notified = False
    return broker_pb2.SeekResult(seek_id=work.seek_id, partition=work.partition, offset=target)


def refused(work: SeekWork, error: BrokerError, position: int = 0) -> broker_pb2.SeekResult:
    """A failed seek's answer; `position` is the partition's unchanged next offset (0 if none)."""
    result = broker_pb2.SeekResult(seek_id=work.seek_id, partition=work.partition, offset=position)
    result.error.CopyFrom(error.to_proto())
    return result


__all__ = ["SEEKS_INFLIGHT_MAX", "SeekWork", "apply_seek", "refused"]
