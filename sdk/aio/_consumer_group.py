"""A stream-mode consumer's membership: what the broker assigned, what the application was told.

`GroupState` does no I/O. The consumer's reader feeds it the `Assignment`
responses in stream order (`on_assignment`), and it answers at once what
the reader must do on the stream's side (drop the buffered records of the
revoked partitions, start positions of the started ones). What the
application must be told (`on_revoke`, `on_assign`), what must be committed
and which generation acknowledged waits in one pending `Change`, merged
with every later assignment, until the iterating task takes it (`take`)
before it returns its next record. So the state is bounded by the topic's
partitions however many assignments arrive while the application is busy.

Two views of ownership are kept apart:

- `received`: the partitions the broker's last assignment on this stream
  gave the member (what the reader delivers);
- `owned`: the partitions the application was told about through
  `on_assign` and not yet through `on_revoke` (what `assignment()` says).

A partition revoked before the application heard of it is never reported
at all. A partition the application owned and that the broker did not give
back after a reconnect, or everything after the member's session expired,
is *lost*: reported through `on_revoke` but not committed, because the
member can no longer commit it (Kafka's "partitions lost").
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from weir.v1 import broker_pb2

_log = logging.getLogger("weir.consumer")

# The broker's bounds for the session and rebalance timeouts
# (`Subscribe.session_timeout_ms`), checked before any I/O.
GROUP_TIMEOUT_MS_MIN = 1_000
GROUP_TIMEOUT_MS_MAX = 300_000
# The broker's session timeout when the consumer names none.
SESSION_TIMEOUT_MS_DEFAULT = 10_000
MODES = ("assign", "stream", "queue")
# The ErrorInfo reasons of a stream-mode stream that ended because the
# broker removed its member (ABORTED): its partitions are lost and it
# rejoins as a new member. (MEMBER_REPLACED, another stream took the
# member id, is raised: this consumer is fenced.)
EVICTED_REASONS = frozenset({"SESSION_EXPIRED", "MEMBER_REMOVED"})

# `on_assign` / `on_revoke`: called with the partitions, ascending; a plain
# function or one returning an awaitable (an `async def`).
PartitionsCallback = Callable[[list[int]], Awaitable[None] | None]


@dataclass(slots=True)
class Change:
    """What the application must be told, in this order, once it iterates again."""

    # Owned partitions the member can no longer commit: `on_revoke`, no commit.
    lost: set[int] = field(default_factory=set)
    # Owned partitions taken away: `on_revoke`, commit, then acknowledge.
    revoked: set[int] = field(default_factory=set)
    # Partitions to announce with `on_assign`.
    assigned: set[int] = field(default_factory=set)
    # The generation to acknowledge once `revoked` is committed; 0: none.
    ack_generation: int = 0
    # The stream (`GroupState.stream`) that sent that generation: an ack
    # goes only to it (another stream was never sent it, and the broker
    # ends a stream that acks a generation it did not send).
    ack_stream: int = 0

    def empty(self) -> bool:
        """True when nothing is to be told or acknowledged."""
        return not (self.lost or self.revoked or self.assigned or self.ack_generation)


@dataclass(frozen=True, slots=True)
class StreamEffect:
    """What the reader does on the stream at once for one `Assignment`."""

    # Partitions whose buffered records are dropped: none of them may reach
    # the application after the broker took them away (or restarted them).
    dropped: frozenset[int]
    # New read positions: partition -> the offset its next record will have.
    starts: dict[int, int]


class GroupState:
    """One stream-mode member: its id, generation and partitions; see the module doc."""

    def __init__(self) -> None:
        # The id the broker gave this member; "" before the first assignment
        # and after the session expired (the next subscribe joins as new).
        self.member_id = ""
        # The generation of the last assignment received (commits carry it).
        self.generation = 0
        self.received: set[int] = set()
        self.owned: set[int] = set()
        self._pending = Change()
        # No assignment arrived on the current stream yet.
        self._new_stream = True
        # Counts the streams this member subscribed on.
        self.stream = 0
        # The current stream rejoined under a member id the broker gave before.
        self._rejoined = False

    @property
    def pending(self) -> bool:
        """Something waits for the application (`take`)."""
        return not self._pending.empty()

    def stream_opened(self) -> None:
        """A new stream subscribes: its first assignment replaces what the last one said."""
        self._new_stream = True
        self.received = set()
        self.stream += 1
        self._rejoined = bool(self.member_id)
        # The old stream's revocation is not acknowledged on the new one:
        # the broker re-sends the member's assignment there, and a rejoined
        # member acknowledges that one instead (`on_assignment`).
        self._pending.ack_generation = 0

    def on_assignment(self, assignment: broker_pb2.Assignment) -> StreamEffect:
        """Apply an `Assignment` received on the stream, in stream order."""
        self.member_id = assignment.member_id
        self.generation = assignment.generation
        starts = {s.partition: s.offset for s in assignment.started}
        change = self._pending
        if self._new_stream:
            # A (re)subscribe: compare with what the application holds.
            self._new_stream = False
            now = set(assignment.partitions)
            for p in self.owned - now:
                if p not in change.revoked:
                    change.lost.add(p)
            change.assigned &= now
            for p in now:
                if p not in self.owned or p in change.revoked or p in change.lost:
                    change.assigned.add(p)
            self.received = now
            if self._rejoined:
                # The serving node acks on a rejoined member's behalf only
                # after its client acked a generation told on this stream
                # (docs/groups.md, "Acks on the member's behalf"): until
                # then a member joining meanwhile could wait the whole
                # rebalance timeout. So the first assignment is acked, once
                # what the application gives up (`revoked`) is committed.
                change.ack_generation = assignment.generation
                change.ack_stream = self.stream
            # Every partition of the new stream starts where the broker says.
            return StreamEffect(frozenset(now | set(starts)), starts)
        revoked = set(assignment.revoked)
        for p in revoked:
            # Not yet announced: nothing to tell. Announced: revoke it.
            change.assigned.discard(p)
            if p in self.owned and p not in change.lost:
                change.revoked.add(p)
        for p in starts:
            change.assigned.add(p)
        if revoked:
            change.ack_generation = assignment.generation
            change.ack_stream = self.stream
        self.received = set(assignment.partitions)
        return StreamEffect(frozenset(revoked | set(starts)), starts)

    def session_expired(self) -> None:
        """The broker evicted the member: everything it had is lost; it joins again as new."""
        change = self._pending
        change.lost |= self.owned
        change.revoked.clear()
        change.assigned.clear()
        change.ack_generation = 0
        self.member_id = ""
        self.generation = 0
        self.received = set()

    def take(self) -> Change:
        """The pending change, now applied to `owned`; the caller tells the application."""
        change, self._pending = self._pending, Change()
        self.owned -= change.lost | change.revoked
        self.owned |= change.assigned
        return change

    def leave(self) -> set[int]:
        """The consumer closes: everything owned is given up (reported with `on_revoke`)."""
        owned, self.owned = self.owned, set()
        return owned


async def run_callback(
    callback: PartitionsCallback | None, name: str, partitions: set[int]
) -> None:
    """Run `callback` (sync or async) with `partitions`; an exception is logged, never raised."""
    if callback is None:
        return
    try:
        result = callback(sorted(partitions))
        if inspect.isawaitable(result):
            await result
    except Exception:
        _log.exception("%s(%s) raised", name, sorted(partitions))


def check_group_options(
    mode: str,
    group: str | None,
    partitions: Iterable[int] | None,
    *,
    on_assign: PartitionsCallback | None,
    on_revoke: PartitionsCallback | None,
    session_timeout_ms: int | None,
    rebalance_timeout_ms: int | None,
) -> str:
    """Check the group options before any I/O; returns the mode.

    Queue mode's own options are checked in `_consumer_queue`.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be 'assign', 'stream' or 'queue', got {mode!r}")
    if mode != "stream":
        extras = {
            "on_assign": on_assign,
            "on_revoke": on_revoke,
            "session_timeout_ms": session_timeout_ms,
            "rebalance_timeout_ms": rebalance_timeout_ms,
        }
        given = [name for name, value in extras.items() if value is not None]
        if given:
            raise ValueError(f"{', '.join(given)} only apply with mode='stream'")
        if mode == "queue" and not group:
            raise ValueError("mode='queue' needs a group")
        return mode
    if not group:
        raise ValueError("mode='stream' needs a group")
    if partitions is not None:
        raise ValueError("mode='stream' takes no partitions: the broker assigns them")
    for name, value in (
        ("session_timeout_ms", session_timeout_ms),
        ("rebalance_timeout_ms", rebalance_timeout_ms),
    ):
        if value is not None and not GROUP_TIMEOUT_MS_MIN <= value <= GROUP_TIMEOUT_MS_MAX:
            raise ValueError(
                f"{name} must be between {GROUP_TIMEOUT_MS_MIN} and {GROUP_TIMEOUT_MS_MAX}"
            )
    return mode
