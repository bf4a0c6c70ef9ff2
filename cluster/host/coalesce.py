"""A leader's small appends to one partition, merged into one Raft entry per driver turn.

A client that sends one record per request would otherwise cost one Raft
entry per record: a batch header and checksum, a log row and an index row,
an APPEND entry to every follower and an apply, on every replica. The host
keeps, per partition group it leads, the appends that arrived since the
driver last proposed for it (a `Pending`), and proposes them as one entry
when the driver starts its next turn (driver.py calls `RaftHost` back for
that). Appends arriving while a turn waits for the disk therefore share an
entry; a lone append waits no longer than it did (the driver would have
taken its proposal at the same moment).

The stored payload of a batch is a serialized `RecordBatch` whose only
field is the repeated `records`, so the concatenation of several payloads
is one valid `RecordBatch` holding their records in order: the merged entry
is one stored batch with one header. Offsets are still assigned when an
append arrives, densely from the leader's log tail plus what is pending:
each append keeps its own base offset inside the merged entry and its
ticket resolves with it; all appends of an entry share its outcome (a
NOT_WRITTEN or OUTCOME_UNKNOWN covers each of them). A merged entry's
payload stays within the Raft core's `append_bytes_max`; an append that
would push it over proposes what is pending first (one append larger than
that is an entry of its own, as before).

Idempotent producers' batches are never merged: a batch header carries
one producer section (producer id, epoch, first sequence) and the
partition's producer table remembers batches as (epoch, first sequence,
record count) per entry, so a retry of one of several merged batches would
no longer match what was remembered and could not be answered with its
original offsets. An idempotent batch proposes what is pending for its
group first, so offsets stay in arrival order.

Between an append and its proposal the group may lose leadership or change
term; the proposal then fails every ticket of the `Pending` with a
retriable error that promises nothing was written (NOT_LEADER or
PROPOSAL_DROPPED), since nothing was.
"""

from __future__ import annotations

import asyncio
import dataclasses

from .group import Group
from .tickets import AppendTicket, new_append_ticket


@dataclasses.dataclass(slots=True)
class Pending:
    """Appends to one group waiting to be proposed together."""

    group: Group
    term: int
    base_offset: int
    next_offset: int
    payloads: list[bytes] = dataclasses.field(default_factory=list)
    payload_bytes: int = 0
    max_timestamp_ms: int = 0
    # Some merged append has a record with deliver_at_ms (storage's DELAYED flag).
    delayed: bool = False
    tickets: list[tuple[AppendTicket, float]] = dataclasses.field(default_factory=list)

    def add(
        self,
        loop: asyncio.AbstractEventLoop,
        payload: bytes,
        record_count: int,
        max_timestamp_ms: int,
        deadline_ms: float,
        delayed: bool = False,
    ) -> AppendTicket:
        ticket = new_append_ticket(loop, self.group.group_id, self.next_offset, record_count)
        self.payloads.append(payload)
        self.payload_bytes += len(payload)
        self.next_offset += record_count
        if max_timestamp_ms > self.max_timestamp_ms:
            self.max_timestamp_ms = max_timestamp_ms
        self.delayed = self.delayed or delayed
        self.tickets.append((ticket, deadline_ms))
        return ticket

    @property
    def record_count(self) -> int:
        return self.next_offset - self.base_offset

    def payload(self) -> bytes:
        if len(self.payloads) == 1:
            return self.payloads[0]
        return b"".join(self.payloads)


__all__ = ["Pending"]
