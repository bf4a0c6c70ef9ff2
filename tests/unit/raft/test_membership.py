"""Single-server membership changes with learners (thesis §4.1-§4.2).

Rule: one change at a time. A leader proposes a change only when the
previous one (and its own no-op) is applied; a change takes effect on each
node when that node applies it (etcd's rule, see docs/raft.md).
"""

from __future__ import annotations

import random

from weir.cluster.raft import (
    ConfChange,
    ConfChangeRejected,
    ConfChangeType,
    Config,
    ConfState,
    Entry,
    EntryType,
    MemoryStorage,
    Message,
    MessageType,
    NotLeader,
    RawNode,
    Role,
    Snapshot,
    SnapshotMeta,
    bootstrap,
)

from .env import Env

ADD_LEARNER, ADD_VOTER, REMOVE = ConfChangeType


def change(env: Env, leader: int, kind: ConfChangeType, node: int) -> int:
    result = env.nodes[leader].propose_conf_change(ConfChange(kind, node))
    assert isinstance(result, int), result
    env.stabilize()
    return result


def joined(env: Env, node: int) -> None:
    """A new node starts with an empty storage and learns everything from the leader."""
    env.start(node, MemoryStorage(ConfState(frozenset())))


def test_learner_catches_up_without_voting_then_is_promoted() -> None:
    env = Env(bootstrapped=True)
    env.campaign(1)
    env.nodes[1].propose(b"a")
    env.stabilize()
    joined(env, 4)
    change(env, 1, ADD_LEARNER, 4)
    assert env.raft(1).conf.learners == {4}
    assert env.log(4) == env.log(1)
    # A learner's acknowledgement does not count towards commit.
    env.isolate(2)
    env.blocked.update({(1, 3), (3, 1)})
    env.blocked -= {(1, 4), (4, 1)}
    env.nodes[1].propose(b"b")
    env.stabilize()
    assert env.raft(1).log.committed < env.raft(1).log.last_index()
    env.heal()
    env.tick(1, env.raft(1).config.heartbeat_ticks)
    env.stabilize()
    change(env, 1, ADD_VOTER, 4)
    assert all(env.raft(i).conf.voters == {1, 2, 3, 4} for i in env.nodes)


def test_learner_never_campaigns() -> None:
    env = Env(bootstrapped=True)
    env.campaign(1)
    joined(env, 4)
    change(env, 1, ADD_LEARNER, 4)
    env.isolate(4)
    env.tick(4, 100)
    env.flush()
    assert env.raft(4).role is Role.FOLLOWER and env.raft(4).term == env.raft(1).term


def test_lagging_learner_is_not_promoted() -> None:
    env = Env(bootstrapped=True, promote_lag_entries_max=2)
    env.campaign(1)
    joined(env, 4)
    change(env, 1, ADD_LEARNER, 4)
    env.isolate(4)
    for n in range(5):
        env.nodes[1].propose(b"%d" % n)
        env.stabilize()
    result = env.nodes[1].propose_conf_change(ConfChange(ADD_VOTER, 4))
    assert isinstance(result, ConfChangeRejected) and "behind" in result.reason


def test_one_change_at_a_time() -> None:
    env = Env(bootstrapped=True)
    env.campaign(1)
    joined(env, 4)
    env.nodes[1].propose_conf_change(ConfChange(ADD_LEARNER, 4))
    second = env.nodes[1].propose_conf_change(ConfChange(REMOVE, 3))
    assert isinstance(second, ConfChangeRejected) and "pending" in second.reason


def test_new_leader_must_apply_its_noop_before_a_change() -> None:
    env = Env(bootstrapped=True, pre_vote=False)
    env.nodes[1].campaign()
    for _ in range(3):
        env.flush()
        env.deliver()
    assert env.raft(1).role is Role.LEADER
    result = env.nodes[1].propose_conf_change(ConfChange(REMOVE, 3))
    assert isinstance(result, ConfChangeRejected)


def test_invalid_changes_are_rejected() -> None:
    env = Env(bootstrapped=True)
    env.campaign(1)
    n = env.nodes[1]
    assert isinstance(n.propose_conf_change(ConfChange(ADD_LEARNER, 2)), ConfChangeRejected)
    assert isinstance(n.propose_conf_change(ConfChange(ADD_VOTER, 9)), ConfChangeRejected)
    assert isinstance(n.propose_conf_change(ConfChange(REMOVE, 9)), ConfChangeRejected)
    assert env.nodes[2].propose_conf_change(ConfChange(REMOVE, 3)) == NotLeader(1)


def test_cannot_remove_the_last_voter() -> None:
    storage = MemoryStorage(ConfState(frozenset({1})))
    node = RawNode(Config(id=1), storage, random.Random(1))
    node.campaign()
    while node.has_ready():
        ready = node.ready()
        storage.append(ready.entries)
        if ready.hard_state:
            storage.set_hard_state(ready.hard_state)
        node.advance(ready)
    result = node.propose_conf_change(ConfChange(REMOVE, 1))
    assert isinstance(result, ConfChangeRejected) and "last voter" in result.reason


def test_removed_follower_stops_counting() -> None:
    env = Env(bootstrapped=True)
    env.campaign(1)
    change(env, 1, REMOVE, 3)
    assert env.raft(1).conf.voters == {1, 2} and 3 not in env.raft(1).progress
    env.isolate(3)
    env.nodes[1].propose(b"after")
    env.stabilize()
    assert env.applied[2][-1].data == b"after"
    env.tick(3, 100)
    assert env.raft(3).role is Role.FOLLOWER  # not a voter any more: never campaigns


def test_removing_the_leader_makes_it_step_down() -> None:
    env = Env(bootstrapped=True)
    env.campaign(1)
    change(env, 1, REMOVE, 1)
    assert env.raft(1).role is Role.FOLLOWER
    for _ in range(40):
        env.tick(2)
        env.tick(3)
        env.stabilize()
    assert env.raft(2).role is Role.LEADER or env.raft(3).role is Role.LEADER


def test_removal_lowers_the_quorum_so_two_of_three_commit() -> None:
    """Thesis §4.1: once a removal is applied, the new, smaller majority commits.

    With voters {1, 2, 3, 4} a commit needs three of them. Node 4 is down, so
    1, 2 and 3 commit its removal; then node 3 is cut off as well and 1 and 2,
    a majority of {1, 2, 3} but not of the old four, still commit.
    """
    env = Env(bootstrapped=True)
    env.campaign(1)
    joined(env, 4)
    change(env, 1, ADD_LEARNER, 4)
    change(env, 1, ADD_VOTER, 4)
    assert env.raft(1).quorum() == 3
    env.isolate(4)
    change(env, 1, REMOVE, 4)
    assert env.raft(1).conf.voters == {1, 2, 3} and 4 not in env.raft(1).progress
    env.isolate(3)
    env.blocked -= {(1, 4), (4, 1), (2, 4), (4, 2)}
    index = env.nodes[1].propose(b"after")
    env.stabilize()
    assert env.raft(1).log.committed == index
    assert env.applied[2][-1].data == b"after"


def test_transfer_target_removed_cancels_transfer() -> None:
    """Thesis §3.10: a transfer to a node that stops being a voter is abandoned.

    The removal was proposed before the transfer started (a transfer blocks
    new proposals) and applies while the transfer waits for the target.
    """
    env = Env(bootstrapped=True)
    env.campaign(1)
    env.isolate(3)
    assert isinstance(env.nodes[1].propose_conf_change(ConfChange(REMOVE, 3)), int)
    assert env.nodes[1].transfer_leadership(3) is None
    assert env.raft(1).lead_transferee == 3
    env.stabilize()
    assert env.raft(1).conf.voters == {1, 2}
    assert env.raft(1).lead_transferee == 0
    assert isinstance(env.nodes[1].propose(b"ok"), int)


def test_bootstrapped_node_learns_config_from_its_log() -> None:
    storages = {}
    for i in (1, 2, 3):
        storages[i] = MemoryStorage(ConfState(frozenset()))
        bootstrap(storages[i], [1, 2, 3])
    env = Env(bootstrapped=True)
    for i in (1, 2, 3):
        env.start(i, storages[i])
    assert env.raft(1).conf.voters == set()  # applied when the host applies entries 1..3
    env.flush()
    assert env.raft(1).conf.voters == {1, 2, 3}
    env.campaign(1)
    assert env.leader() == 1


def test_restart_with_applied_index_replays_config() -> None:
    storage = MemoryStorage(ConfState(frozenset()))
    bootstrap(storage, [1, 2, 3])
    node = RawNode(Config(id=1), storage, random.Random(1), applied=3)
    assert node.raft.conf.voters == {1, 2, 3}
    assert not node.raft.has_unapplied_conf()


def test_compaction_records_the_config_in_effect_at_its_index() -> None:
    env = Env(bootstrapped=True)
    env.campaign(1)
    env.nodes[1].propose(b"a")
    env.stabilize()
    before = env.raft(1).log.applied
    joined(env, 4)
    change(env, 1, ADD_LEARNER, 4)
    assert env.raft(1).conf_at(before) == ConfState(frozenset({1, 2, 3}))
    assert env.raft(1).conf_at(env.raft(1).log.applied).learners == {4}
    env.nodes[1].compact(before, b"s")
    truncate = env.raft(1).pending_truncate
    assert truncate is not None and truncate.meta.conf.learners == frozenset()


def test_restart_with_applied_index_does_not_hand_out_applied_entries_again() -> None:
    env = Env(bootstrapped=True)
    env.campaign(1)
    env.nodes[1].propose(b"a")
    env.stabilize()
    applied = env.raft(2).log.applied
    node = RawNode(Config(id=2), env.storages[2], random.Random(2), applied=applied)
    assert node.raft.conf.voters == {1, 2, 3} and node.raft.log.applied == applied
    assert not node.has_ready() or node.ready().committed_entries == ()


def test_config_entry_applied_after_a_newer_snapshot_arrived_is_ignored() -> None:
    """Thesis §5.1: a snapshot holds the configuration as of its last index.

    A follower took a Ready holding a committed ADD_LEARNER; before the host
    advanced it, a snapshot at a later index arrived whose configuration has
    no learner (added and removed again). Advancing the old Ready must not
    apply the stale change on top of the snapshot's configuration.
    """
    env = Env(bootstrapped=True)
    env.campaign(1)
    node = env.nodes[2]
    add = Entry(2, 5, EntryType.CONFIG, ConfChange(ADD_LEARNER, 4).encode())
    node.step(
        Message(MessageType.APPEND, 2, 1, term=2, index=4, log_term=2, entries=(add,), commit=5)
    )
    ready = node.ready()
    assert [e.index for e in ready.committed_entries] == [5]
    conf = ConfState(frozenset({1, 2, 3}))
    snapshot = Snapshot(SnapshotMeta(8, 2, conf), b"")
    node.step(Message(MessageType.SNAPSHOT, 2, 1, term=2, snapshot=snapshot))
    env.persist(2, ready)
    node.advance(ready)
    assert env.raft(2).conf == conf
    env.handle(2)
    assert env.raft(2).conf == conf and env.raft(2).log.applied == 8


def test_compaction_below_a_pending_one_keeps_the_pending_one() -> None:
    """Thesis §5.1: a compaction records the configuration as of its index.

    A second, smaller compaction requested before the first is persisted would
    have to label its snapshot with a configuration the node already forgot;
    it is ignored instead.
    """
    env = Env(bootstrapped=True)
    env.campaign(1)
    env.nodes[1].propose(b"a")
    env.stabilize()
    before = env.raft(1).log.applied
    joined(env, 4)
    change(env, 1, ADD_LEARNER, 4)
    at = env.raft(1).log.applied
    env.nodes[1].compact(at, b"s1")
    first = env.raft(1).pending_truncate
    env.nodes[1].compact(before, b"s0")
    assert env.raft(1).pending_truncate is first
    env.handle(1)
    assert env.storages[1].snapshot().meta.conf == ConfState(frozenset({1, 2, 3}), frozenset({4}))
