"""What a stream-mode member owes its coordinator, as the node serving its stream sees it.

The coordinator waits for a member's `AssignmentAck` before it gives a
revoked partition to its next owner (docs/groups.md, "Stream mode"). A
client acknowledges only when an `Assignment` names partitions in
`revoked`: it commits what it read of them first, and has nothing to do
otherwise (Kafka's KIP-429 rule: a member with nothing to revoke is never
waited for). But the leader's link holds only the member's *latest*
assignment: when two members join within milliseconds, the first one's
generation-1 assignment (every partition) is replaced by generation 2 (its
share) before the serving node takes it. The coordinator then waits for
the revocation of partitions the member was never told it had, the client
sees `revoked` empty and does not ack, and the second member waits for the
whole `rebalance_timeout_ms` (issue 8).

Only the serving node knows what the member was told, so it answers for
what it merged away: `MemberAcks` follows the changes the session hands to
the stream (`told`) and the client's acks (`client_ack`), and names the
generation to acknowledge on the member's behalf when the member owes
nothing. Why that is safe: a partition revoked from the member at a
generation up to G that was delivered on this stream is in the `stopped`
of a change told at or before G, so the client owes an ack for that change
until it sends one; a revoked partition never delivered on this stream has
nothing of the member's to commit. So once every told change with stops is
acknowledged, acknowledging the latest told generation only releases
partitions the member never read.

A stream that rejoins under a known member id cannot see what its earlier
stream was told: the coordinator may still wait for a revocation the old
stream's client is committing. That session stays silent (`trusted` is
False) until its client acknowledges a generation it was told here, which
by the protocol releases everything revoked before. A session that joined
as a new member is trusted from the start: every revocation of the member
comes after its join. The session keeps one `MemberAcks` across rejoins at
a new coordinator leader (the same stream), and sends its latest ack again
there (`sent`), in case the old leader died before proposing it.

Pure: no I/O, no clock; the state is three generations and a flag.
"""

from __future__ import annotations


class MemberAcks:
    def __init__(self, *, trusted: bool) -> None:
        # Whether the coordinator can hold no revocation that an earlier
        # stream of this member was told (see the module docstring).
        self._trusted = trusted
        # The first generation told on this stream (0: none yet).
        self._first_told = 0
        # The latest generation told on this stream.
        self._told = 0
        # The latest told generation whose change stopped partitions and that
        # the client has not acknowledged yet (0: the client owes nothing).
        self._owed = 0
        # The highest generation acknowledged to the coordinator, by the
        # client or on its behalf.
        self.sent = 0

    @property
    def owed(self) -> int:
        return self._owed

    def told(self, generation: int, *, stopped: bool, holds_all: bool = False) -> int | None:
        """A change of `generation` goes to the stream; a generation to acknowledge now, or None.

        `stopped`: the change stops partitions that were delivered on this
        stream, so the client must commit and acknowledge it. `holds_all`:
        the member owns every partition of its topic as of `generation`, so
        none is being revoked from it (a revoked partition is owned by
        nobody) and no ack is needed; that saves a log entry per change of
        a group's only member.
        """
        if generation < self._told:
            # The group was dropped and made again at a new leader (the member
            # had expired and the group kept no offsets): a new membership,
            # bound by nothing told before, with nothing revoked yet.
            self._trusted, self._first_told, self._owed, self.sent = True, 0, 0, 0
        self._told = generation
        if not self._first_told:
            self._first_told = generation
        if stopped:
            self._owed = generation
        if holds_all and not self._owed:
            return None
        if not self._trusted or self._owed or generation <= self.sent:
            return None
        self.sent = generation
        return generation

    def client_ack(self, generation: int) -> int | None:
        """The client acknowledged `generation`; the generation to send, or None (nothing new)."""
        if generation >= self._owed:
            self._owed = 0
        if self._first_told and generation >= self._first_told:
            # Its ack releases everything revoked before this stream joined too.
            self._trusted = True
        send = generation
        if self._trusted and not self._owed:
            send = max(send, self._told)
        if send <= self.sent:
            return None
        self.sent = send
        return send


__all__ = ["MemberAcks"]
