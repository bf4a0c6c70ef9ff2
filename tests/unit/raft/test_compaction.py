"""Log prefix truncation (retention) and catching up by snapshot (thesis §5)."""

from __future__ import annotations

import pytest

from weir.cluster.raft import (
    CompactedError,
    ConfState,
    Message,
    MessageType,
    Snapshot,
    SnapshotMeta,
    UnavailableError,
)

from .env import Env, of_type


def compacted_cluster() -> Env:
    """Node 3 misses entries 2..6; the leader then drops its log up to 5."""
    env = Env()
    env.campaign(1)
    env.isolate(3)
    for n in range(5):
        env.nodes[1].propose(b"e%d" % n)
        env.stabilize()
    env.nodes[1].compact(5, b"state@5")
    ready = env.nodes[1].ready()
    assert ready.truncate is not None and ready.truncate.meta == SnapshotMeta(
        5, 1, ConfState(frozenset({1, 2, 3}))
    )
    env.persist(1, ready)
    env.nodes[1].advance(ready)
    assert env.storages[1].first_index() == 6
    return env


def test_follower_behind_first_index_gets_a_snapshot() -> None:
    env = compacted_cluster()
    env.heal()
    env.tick(1, env.raft(1).config.heartbeat_ticks)
    msgs = env.stabilize()
    (snap,) = of_type(msgs, MessageType.SNAPSHOT)
    assert snap.to == 3 and snap.snapshot is not None and snap.snapshot.data == b"state@5"
    assert env.snapshots[3] == b"state@5"
    assert env.log(3) == env.log(1)
    assert env.raft(3).log.applied == env.raft(1).log.applied == 6
    assert [e.index for e in env.applied[3]] == [1, 6]  # 2..5 came inside the snapshot


def test_compacting_twice_or_below_first_index_is_a_no_op() -> None:
    env = compacted_cluster()
    env.nodes[1].compact(3, b"older")
    assert env.raft(1).pending_truncate is None
    with pytest.raises(AssertionError, match="applied"):
        env.nodes[1].compact(99, b"future")


def test_snapshot_already_covered_by_log_only_advances_commit() -> None:
    env = Env()
    env.campaign(1)
    env.nodes[1].propose(b"a")
    env.stabilize()
    r2 = env.raft(2)
    snapshot = Snapshot(SnapshotMeta(2, 1, ConfState(frozenset({1, 2, 3}))), b"")
    r2.log.committed = 1
    env.nodes[2].step(Message(MessageType.SNAPSHOT, 2, 1, term=1, snapshot=snapshot))
    assert r2.log.committed == 2 and r2.log.pending_snapshot is None
    (resp,) = env.handle(2)
    assert (resp.type, resp.index) == (MessageType.APPEND_RESP, 2)


def test_stale_snapshot_is_acknowledged_with_commit() -> None:
    env = Env()
    env.campaign(1)
    snapshot = Snapshot(SnapshotMeta(1, 1, ConfState(frozenset({1, 2, 3}))), b"")
    env.nodes[2].step(Message(MessageType.SNAPSHOT, 2, 1, term=1, snapshot=snapshot))
    (resp,) = env.handle(2)
    assert resp.index == env.raft(2).log.committed == 1


def test_lost_snapshot_is_retried() -> None:
    env = compacted_cluster()
    env.heal()
    env.tick(1, env.raft(1).config.heartbeat_ticks)
    pr = env.raft(1).progress[3]
    while pr.state.value != "snapshot":  # heartbeat, answer, probe: then a snapshot
        env.flush()
        env.deliver()
    env.blocked = {(1, 3)}
    assert [m.type for m in env.handle(1)] == [MessageType.SNAPSHOT]
    assert env.raft(1).progress[3].state.value == "snapshot"
    env.heal()
    for _ in range(env.raft(1).config.election_ticks + 2):
        env.tick(1)
        env.stabilize()
    assert env.log(3) == env.log(1)


def test_unavailable_snapshot_is_retried_later() -> None:
    env = compacted_cluster()
    storage = env.storages[1]
    real = storage.snapshot

    def not_yet() -> Snapshot:
        raise UnavailableError("still being written")

    storage.snapshot = not_yet  # type: ignore[method-assign]
    env.heal()
    env.tick(1, env.raft(1).config.heartbeat_ticks)
    env.stabilize()
    assert env.raft(1).progress[3].state.value != "snapshot"
    storage.snapshot = real  # type: ignore[method-assign]
    env.tick(1, env.raft(1).config.heartbeat_ticks)
    env.stabilize()
    assert env.log(3) == env.log(1)


def test_log_reads_below_first_index_raise_compacted() -> None:
    env = compacted_cluster()
    log = env.raft(1).log
    with pytest.raises(CompactedError):
        log.entries(2, 4, 100)
    with pytest.raises(UnavailableError):
        log.entries(6, 99, 100)
    assert log.term_or_none(3) is None
    assert log.term(5) == 1


def test_restart_from_snapshot_and_log() -> None:
    env = compacted_cluster()
    env.start(1)
    r = env.raft(1)
    assert (r.log.first_index(), r.log.applied, r.log.committed) == (6, 5, 6)
    assert r.conf == ConfState(frozenset({1, 2, 3}))
