"""RaftLog: the stable (storage) and unstable (not yet persisted) parts of the log."""

from __future__ import annotations

import random

import pytest

from weir.cluster.raft import (
    CompactedError,
    Config,
    ConfState,
    Entry,
    MemoryStorage,
    RawNode,
    Role,
    Snapshot,
    SnapshotMeta,
    UnavailableError,
)
from weir.cluster.raft.log import RaftLog
from weir.cluster.raft.progress import Progress

CONF = ConfState(frozenset({1, 2, 3}))


def make_log(stable: int = 3, unstable: int = 2) -> RaftLog:
    storage = MemoryStorage(CONF)
    storage.append([Entry(1, i, data=b"s" * 10) for i in range(1, stable + 1)])
    log = RaftLog(storage)
    log.append([Entry(2, i, data=b"u" * 10) for i in range(stable + 1, stable + unstable + 1)])
    return log


def test_reads_span_storage_and_unstable() -> None:
    log = make_log()
    assert [e.index for e in log.entries(2, 6, 1 << 20)] == [2, 3, 4, 5]
    assert [e.index for e in log.entries(2, 6, 25)] == [2, 3]  # bytes cut in storage
    assert [e.index for e in log.entries(3, 6, 15)] == [3]
    assert [e.index for e in log.entries(4, 6, 15)] == [4]  # bytes cut in unstable
    assert (log.term(3), log.term(5), log.last_term()) == (1, 2, 2)
    with pytest.raises(UnavailableError):
        log.term(6)


def test_pending_snapshot_defines_the_log_bounds() -> None:
    log = make_log()
    log.restore(Snapshot(SnapshotMeta(10, 3, CONF), b"state"))
    assert (log.first_index(), log.last_index(), log.committed) == (11, 10, 10)
    assert log.term(10) == 3
    with pytest.raises(CompactedError):
        log.term(9)
    log.append([Entry(3, 11)])
    assert (log.last_index(), log.term(11)) == (11, 3)
    log.stable_snapshot_to(9)  # not the pending one: ignored
    assert log.pending_snapshot is not None
    log.stable_snapshot_to(10)
    assert log.pending_snapshot is None


def test_stable_to_ignores_stale_acknowledgements() -> None:
    log = make_log()
    log.stable_to(2, 1)  # already stable
    log.stable_to(4, 9)  # wrong term: that entry was replaced meanwhile
    log.stable_to(9, 2)  # beyond the tail
    assert log.unstable_offset == 4 and len(log.unstable) == 2
    log.append([])
    assert log.last_index() == 5


def test_conflicting_append_below_unstable_replaces_stored_suffix() -> None:
    log = make_log()
    log.append([Entry(3, 2)])
    assert (log.unstable_offset, log.last_index(), log.term(2)) == (2, 2, 3)


def test_hint_for_walks_back_to_the_snapshot() -> None:
    log = make_log()
    assert log.hint_for(5, 1) == (3, 1)
    assert log.hint_for(5, 0) == (0, 0)


def test_no_committed_entries_to_apply() -> None:
    log = make_log()
    assert log.next_committed(100) == []


def test_progress_repr() -> None:
    assert repr(Progress(5, 4, False)) == "Progress(probe match=0 next=5)"


def test_single_voter_wins_immediately() -> None:
    storage = MemoryStorage(ConfState(frozenset({1})))
    node = RawNode(Config(id=1), storage, random.Random(1))
    node.campaign()
    assert node.raft.role is Role.LEADER
    node.campaign()  # a leader ignores campaign requests
    assert node.raft.term == 1


def test_votes_from_non_voters_do_not_count() -> None:
    storage = MemoryStorage(ConfState(frozenset({1, 2, 3}), frozenset({4})))
    node = RawNode(Config(id=1, pre_vote=False), storage, random.Random(1))
    node.campaign()
    assert node.raft.record_vote(4, True) is None
    assert node.raft.role is Role.CANDIDATE
