"""A revocation's AssignmentAck belongs to the stream that sent it (found by the coordinator-kill test).

A member whose stream broke after a revoking assignment used to acknowledge
that generation on its next stream, which was never sent it; the broker
ends such a stream with INVALID_ASSIGNMENT_ACK. A member that rejoins under
its member id acknowledges instead the first assignment its new stream
sends (issue 8): its serving node acks on its behalf only after that.
"""

from __future__ import annotations

from weir.aio._consumer_group import GroupState
from weir.v1 import broker_pb2


def assignment(generation: int, partitions: list[int], revoked: list[int]) -> broker_pb2.Assignment:
    return broker_pb2.Assignment(
        member_id="m", generation=generation, partitions=partitions, revoked=revoked
    )


def test_an_ack_pending_when_the_stream_changes_is_dropped() -> None:
    group = GroupState()
    group.stream_opened()
    group.on_assignment(assignment(1, [0, 1], []))
    group.take()
    group.on_assignment(assignment(3, [0], [1]))
    group.stream_opened()  # the stream broke before the application iterated
    group.on_assignment(assignment(2, [0], []))
    change = group.take()
    # Only what the new stream was sent is acknowledged there (its first assignment).
    assert (change.ack_generation, change.ack_stream) == (2, group.stream)
    assert change.revoked == {1}  # committed before that ack


def test_a_rejoined_member_acks_its_first_assignment_on_the_new_stream() -> None:
    """The serving node acks for a rejoined member only after its client's first ack there."""
    group = GroupState()
    group.stream_opened()
    group.on_assignment(assignment(1, [0, 1], []))
    assert group.take().ack_generation == 0  # a new member: its node acks for it
    group.stream_opened()  # a reconnect under member id "m"
    group.on_assignment(assignment(1, [0, 1], []))
    change = group.take()
    assert (change.ack_generation, change.ack_stream) == (1, group.stream)
    assert not (change.lost or change.revoked or change.assigned)
    # Later assignments on that stream are acknowledged only when they revoke.
    group.on_assignment(assignment(2, [0, 1], []))
    assert not group.pending


def test_a_member_evicted_joins_as_new_and_acks_nothing_first() -> None:
    group = GroupState()
    group.stream_opened()
    group.on_assignment(assignment(1, [0, 1], []))
    group.take()
    group.session_expired()
    group.stream_opened()
    group.on_assignment(assignment(4, [1], []))
    assert group.take().ack_generation == 0


def test_an_ack_taken_before_the_stream_changed_names_its_stream() -> None:
    group = GroupState()
    group.stream_opened()
    group.on_assignment(assignment(1, [0, 1], []))
    group.take()
    group.on_assignment(assignment(3, [0], [1]))
    change = group.take()
    assert (change.ack_generation, change.ack_stream) == (3, group.stream)
    group.stream_opened()
    assert change.ack_stream != group.stream  # the driver then sends no ack
