"""What a proposer holds while its entry travels: tickets, and the group's waiters.

A proposal is identified by (index, term). Its outcome is decided only by
the committed entry at its index (DESIGN §4 "Offsets at propose time"): the
same term means committed, another term means not written (safe to retry);
committed entries are final. The driver decides a partition's waiters as
soon as the entry is committed and readable on this node, before the apply
(index rows, applied index) is durable; an opaque group's once its apply is
durable. A deadline, or the group or host stopping, leaves
the outcome unknown. Nothing else resolves a waiter early: a leader that
steps down keeps its waiters, because the new leader's log soon tells
whether the entry survived.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from ..raft.types import Entry
from .errors import HostError, NotWrittenError, OutcomeUnknownError
from .policy import POLICY, Outcome


@dataclass(slots=True)
class AppendTicket:
    """A record batch proposed to a partition group.

    `leader_durable` resolves (to `base_offset`) once the leader's own copy
    is durable (acks=LEADER); `committed` once the entry is committed with the
    proposal's term and readable on this node (acks=ALL). Both fail with a
    `HostError`. `index` and `term` are the entry's: 0 until an append
    merged with others (coalesce.py) is proposed, which happens before the
    driver's next turn; several tickets may share an entry.
    """

    group_id: int
    index: int
    term: int
    base_offset: int
    record_count: int
    leader_durable: asyncio.Future[int]
    committed: asyncio.Future[int]


@dataclass(frozen=True, slots=True)
class ProposalTicket:
    """Opaque data proposed to a group; `committed` resolves to what `on_apply` returned."""

    group_id: int
    index: int
    term: int
    committed: asyncio.Future[object]


@dataclass(slots=True)
class _Waiter:
    term: int
    deadline_ms: float
    durable: asyncio.Future[int] | None
    committed: asyncio.Future[object] | asyncio.Future[int]
    # What `committed` resolves to for an append (its base offset).
    base_offset: int | None


def _set_exception(future: asyncio.Future[object] | asyncio.Future[int], error: HostError) -> None:
    """Fails `future` and marks its error as seen: a producer with acks=NONE or
    LEADER may never await `committed`. (Done here rather than by a done
    callback on every ticket, which cost two loop callbacks per append.)"""
    future.set_exception(error)
    future.exception()


def new_append_ticket(
    loop: asyncio.AbstractEventLoop, group_id: int, base_offset: int, record_count: int
) -> AppendTicket:
    """A ticket whose entry is not proposed yet (`Waiters.adopt` gives it one)."""
    durable: asyncio.Future[int] = loop.create_future()
    committed: asyncio.Future[int] = loop.create_future()
    return AppendTicket(group_id, 0, 0, base_offset, record_count, durable, committed)


def fail_ticket(ticket: AppendTicket, error: HostError) -> None:
    """Fails a ticket that never became a waiter (its entry was not proposed)."""
    if not ticket.leader_durable.done():
        _set_exception(ticket.leader_durable, error)
    if not ticket.committed.done():
        _set_exception(ticket.committed, error)


class Waiters:
    """The open proposals of one group, by index (several terms may share an index)."""

    def __init__(self, group_id: int, loop: asyncio.AbstractEventLoop) -> None:
        self.group_id = group_id
        self._loop = loop
        self._by_index: dict[int, list[_Waiter]] = {}
        self.committed = 0
        self.not_written = 0
        self.unknown = 0

    def __len__(self) -> int:
        return len(self._by_index)

    def add_append(
        self, index: int, term: int, base_offset: int, record_count: int, deadline_ms: float
    ) -> AppendTicket:
        ticket = new_append_ticket(self._loop, self.group_id, base_offset, record_count)
        self.adopt(ticket, index, term, deadline_ms)
        return ticket

    def adopt(self, ticket: AppendTicket, index: int, term: int, deadline_ms: float) -> None:
        """`ticket`'s batch is (part of) the entry proposed at (index, term)."""
        ticket.index, ticket.term = index, term
        waiter = _Waiter(
            term, deadline_ms, ticket.leader_durable, ticket.committed, ticket.base_offset
        )
        self._by_index.setdefault(index, []).append(waiter)

    def add_proposal(self, index: int, term: int, deadline_ms: float) -> ProposalTicket:
        committed: asyncio.Future[object] = self._loop.create_future()
        self._by_index.setdefault(index, []).append(
            _Waiter(term, deadline_ms, None, committed, None)
        )
        return ProposalTicket(self.group_id, index, term, committed)

    def on_durable(self, entries: tuple[Entry, ...]) -> None:
        """The leader's copy of `entries` is durable."""
        if not self._by_index:
            return
        for entry in entries:
            for waiter in self._by_index.get(entry.index, ()):
                if waiter.term == entry.term:
                    _set_durable(waiter)

    def on_applied(self, entry: Entry, result: object) -> None:
        """`entry` is committed (for a partition: readable here, for an opaque group:
        its apply durable): decide every waiter at its index."""
        waiters = self._by_index.pop(entry.index, None)
        if waiters is None:
            return
        for waiter in waiters:
            if POLICY.outcome(waiter.term, entry.term) is Outcome.COMMITTED:
                _set_durable(waiter)
                if not waiter.committed.done():
                    value = waiter.base_offset if waiter.base_offset is not None else result
                    waiter.committed.set_result(value)  # type: ignore[arg-type]
                self.committed += 1
            else:
                error = NotWrittenError(self.group_id, entry.index, waiter.term, entry.term)
                _fail(waiter, error)
                self.not_written += 1

    def on_snapshot(self, index: int) -> None:
        """A snapshot covered indexes up to `index`: their terms are gone, outcome unknown."""
        for at in [i for i in self._by_index if i <= index]:
            for waiter in self._by_index.pop(at):
                _fail(waiter, OutcomeUnknownError(self.group_id, "replaced by a snapshot"))
                self.unknown += 1

    def expire(self, now_ms: float) -> None:
        for index in list(self._by_index):
            waiters = self._by_index[index]
            kept = [w for w in waiters if w.deadline_ms > now_ms]
            for waiter in waiters:
                if waiter.deadline_ms <= now_ms:
                    _fail(waiter, OutcomeUnknownError(self.group_id, "deadline passed"))
                    self.unknown += 1
            if kept:
                self._by_index[index] = kept
            else:
                del self._by_index[index]

    def fail_all(self, error: HostError) -> None:
        waiters, self._by_index = self._by_index, {}
        for group in waiters.values():
            for waiter in group:
                _fail(waiter, error)
                self.unknown += 1


def _set_durable(waiter: _Waiter) -> None:
    if waiter.durable is not None and not waiter.durable.done():
        assert waiter.base_offset is not None
        waiter.durable.set_result(waiter.base_offset)


def _fail(waiter: _Waiter, error: HostError) -> None:
    if waiter.durable is not None and not waiter.durable.done():
        _set_exception(waiter.durable, error)
    if not waiter.committed.done():
        _set_exception(waiter.committed, error)


__all__ = ["AppendTicket", "ProposalTicket", "Waiters", "fail_ticket", "new_append_ticket"]
