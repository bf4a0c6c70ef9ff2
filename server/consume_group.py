"""A CONSUME_MODE_STREAM stream's side of group membership (docs/groups.md, "Stream mode").

The stream joins through `Membership` and holds the `MemberSession` for as
long as it is open. This module turns what the session says into what the
stream does: an `AssignmentChange` becomes the `Assignment` response and
the partitions to start, each at the group's committed offset (clamped into
its log) or else at the subscription's start policy. It also holds the
member's refusals on the stream side. The stream (consume.py) decides when:
stops at once, the `Assignment` written by its one writer, then the starts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import grpc

from weir.cluster.storage import PartitionLog
from weir.server.consume_cursor import Partition
from weir.server.consume_relay import RelayedLog
from weir.server.consume_start import assigned_start
from weir.server.errors import BrokerError, invalid, replica_not_available
from weir.server.membership import AssignmentChange, MemberSession
from weir.server.replicator import NotHostedError, Replicator
from weir.server.topics import Topic
from weir.v1 import broker_pb2


def not_a_member(kind: str, mode: str = "CONSUME_MODE_STREAM") -> BrokerError:
    """A request only a member of `mode` may send, on a stream that is none."""
    return BrokerError(
        grpc.StatusCode.FAILED_PRECONDITION,
        "NOT_A_MEMBER",
        f"{kind} is only valid on a {mode} subscription",
        {"request": kind, "mode": mode},
    )


def mode_unavailable(mode: int) -> BrokerError:
    """A consume mode this node does not serve (not wired in this build)."""
    name = broker_pb2.ConsumeMode.Name(mode)
    return BrokerError(
        grpc.StatusCode.UNIMPLEMENTED,
        "CONSUME_MODE_UNAVAILABLE",
        f"this node does not serve {name} subscriptions",
        {"mode": name},
    )


def partition_not_assigned(partition: int) -> BrokerError:
    return BrokerError(
        grpc.StatusCode.FAILED_PRECONDITION,
        "PARTITION_NOT_ASSIGNED",
        f"partition {partition} is not one this stream reads now",
        {"partition": partition},
    )


class Member:
    """The stream's membership: its session, its start policy and what it has told the client."""

    def __init__(self, session: MemberSession, start: broker_pb2.StartPosition) -> None:
        self.session = session
        self._start = start
        # In a cluster the session opens relays for partitions placed on
        # other nodes only (cluster_membership.RelayingSession), and starts
        # them where this subscription's start policy says.
        use_start = getattr(session, "use_start", None)
        if use_start is not None:
            use_start(start)
        self._relayed: Callable[[int], RelayedLog | None] = getattr(
            session, "relayed", lambda partition: None
        )
        # The generation of the last Assignment written on the stream (0:
        # none yet). A Commit or AssignmentAck is checked against it.
        self.generation_sent = 0

    def commit_generation(self, requested: int) -> int:
        """A Commit's generation: 0 means the latest assignment this stream was sent."""
        return requested or self.generation_sent

    def check_ack(self, generation: int) -> None:
        """INVALID_ARGUMENT unless `generation` is one this stream was sent."""
        if not 1 <= generation <= self.generation_sent:
            raise invalid(
                "INVALID_ASSIGNMENT_ACK",
                f"generation {generation} was not sent on this stream (the latest is"
                f" {self.generation_sent})",
                generation=generation,
                generation_sent=self.generation_sent,
            )

    def starts(
        self, change: AssignmentChange, topic: Topic, replicator: Replicator
    ) -> list[Partition]:
        """The partitions `change` starts, each at its first offset.

        A partition with no replica here is read through the relay the
        session opened for it; without one (the partition is placed here
        but its replica has not started yet) it raises BrokerError
        (REPLICA_NOT_AVAILABLE), as it does StorageError; the caller ends
        the stream with it.
        """
        result = []
        for number in sorted(change.started):
            # The coordinator assigns partitions of the topic it was told
            # about; the stream checks its topic is still that one first.
            assert 0 <= number < topic.partition_count, (number, topic.partition_count)
            try:
                log = replicator.log(topic.group_id(number))
            except NotHostedError:
                relayed = self._relayed(number)
                if relayed is None:
                    raise replica_not_available(topic.name, number) from None
                # Read like a log (the cursor's reads, offsets and listener).
                result.append(Partition(number, cast(PartitionLog, relayed), relayed.first_offset))
                continue
            start = assigned_start(self._start, log, change.started[number])
            result.append(Partition(number, log, start))
        return result

    def assignment(self, change: AssignmentChange, started: list[Partition]) -> bytes:
        """The serialized `Assignment` response for `change`."""
        assignment = broker_pb2.Assignment(
            member_id=change.member_id,
            generation=change.generation,
            partitions=change.partitions,
            started=[
                broker_pb2.PartitionStart(
                    partition=p.partition,
                    offset=p.position,
                    log_start_offset=p.log.start_offset,
                    end_offset=p.log.end_offset,
                )
                for p in started
            ],
            revoked=sorted(change.stopped),
        )
        return broker_pb2.ConsumeResponse(assignment=assignment).SerializeToString()


__all__ = ["Member", "mode_unavailable", "not_a_member", "partition_not_assigned"]
