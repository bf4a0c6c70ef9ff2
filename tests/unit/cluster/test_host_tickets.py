"""Waiters: how a proposal's outcome is decided (DESIGN §4 "Offsets at propose time")."""

from __future__ import annotations

import asyncio

import pytest

from weir.cluster.host import NotWrittenError, OutcomeUnknownError
from weir.cluster.host.tickets import Waiters
from weir.cluster.raft.types import Entry

pytestmark = pytest.mark.timeout(10)


def run(body: object) -> None:
    async def main() -> None:
        assert callable(body)
        body(Waiters(5, asyncio.get_running_loop()))

    asyncio.run(main())


def test_applied_with_the_same_term_commits_at_the_base_offset() -> None:
    def body(waiters: Waiters) -> None:
        ticket = waiters.add_append(10, 3, base_offset=40, record_count=2, deadline_ms=1e9)
        waiters.on_durable((Entry(3, 10),))
        assert ticket.leader_durable.result() == 40
        assert not ticket.committed.done()
        waiters.on_applied(Entry(3, 10), None)
        assert ticket.committed.result() == 40
        assert len(waiters) == 0

    run(body)


def test_applied_with_another_term_is_not_written_and_retriable() -> None:
    def body(waiters: Waiters) -> None:
        ticket = waiters.add_append(10, 3, base_offset=40, record_count=2, deadline_ms=1e9)
        waiters.on_durable((Entry(4, 10),))  # another entry at that index: not ours
        assert not ticket.leader_durable.done()
        waiters.on_applied(Entry(4, 10), None)
        error = ticket.committed.exception()
        assert isinstance(error, NotWrittenError) and error.retriable
        assert isinstance(ticket.leader_durable.exception(), NotWrittenError)

    run(body)


def test_two_terms_at_one_index_are_decided_together() -> None:
    def body(waiters: Waiters) -> None:
        old = waiters.add_proposal(7, 2, deadline_ms=1e9)
        new = waiters.add_proposal(7, 3, deadline_ms=1e9)
        waiters.on_applied(Entry(3, 7, data=b"x"), "result")
        assert isinstance(old.committed.exception(), NotWrittenError)
        assert new.committed.result() == "result"

    run(body)


def test_deadline_snapshot_and_stop_leave_the_outcome_unknown() -> None:
    def body(waiters: Waiters) -> None:
        early = waiters.add_proposal(1, 1, deadline_ms=100)
        late = waiters.add_proposal(2, 1, deadline_ms=500)
        covered = waiters.add_proposal(3, 1, deadline_ms=1e9)
        rest = waiters.add_proposal(9, 1, deadline_ms=1e9)
        waiters.expire(now_ms=200)
        assert isinstance(early.committed.exception(), OutcomeUnknownError)
        assert not late.committed.done()
        waiters.on_snapshot(3)
        assert isinstance(late.committed.exception(), OutcomeUnknownError)
        assert isinstance(covered.committed.exception(), OutcomeUnknownError)
        assert not rest.committed.done()
        waiters.fail_all(OutcomeUnknownError(5, "group stopped"))
        assert isinstance(rest.committed.exception(), OutcomeUnknownError)
        assert len(waiters) == 0
        assert (waiters.committed, waiters.not_written, waiters.unknown) == (0, 0, 4)

    run(body)
