"""The host's pure decisions (cluster/host/policy.py): quiescence, send order, outcomes."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

import weir.cluster.host.policy as policy_module
from weir.cluster.host.policy import POLICY, Outcome
from weir.cluster.raft import Message, MessageType, NodeId, Ready, Role

from ..raft.env import Env

pytestmark = pytest.mark.timeout(10)

AFTER_TICKS = 3


@dataclass
class Quiet:
    quiesced: bool = False
    settled_ticks: int = 0
    heard_leader: bool = False


def everyone(node: NodeId) -> bool:
    return True


def settled_env() -> Env:
    env = Env(election_ticks=10, heartbeat_ticks=2)
    env.campaign(1)
    env.nodes[1].propose(b"x")
    env.stabilize()
    env.tick(1, 2)  # a heartbeat carries the final commit index
    env.stabilize()
    return env


def test_the_policy_does_no_io() -> None:
    tree = ast.parse(Path(policy_module.__file__).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module]
        else:
            continue
        for name in names:
            assert name.split(".")[0] not in {"asyncio", "grpc", "lmdb", "time", "random"}, name


def test_only_a_leaders_traffic_goes_before_the_local_fsync() -> None:
    early = {t for t in MessageType if POLICY.sent_before_durable(Message(t, 1, 2, 1))}
    assert early == {
        MessageType.APPEND,
        MessageType.HEARTBEAT,
        MessageType.SNAPSHOT,
        MessageType.TIMEOUT_NOW,
    }


def test_outcome_is_decided_by_the_term_applied_at_the_index() -> None:
    assert POLICY.outcome(3, 3) is Outcome.COMMITTED
    assert POLICY.outcome(3, 4) is Outcome.NOT_WRITTEN


def test_a_settled_leader_goes_quiet_after_its_settling_ticks() -> None:
    env = settled_env()
    quiet = Quiet()
    for _ in range(AFTER_TICKS - 1):
        assert not POLICY.can_quiesce(
            quiet, env.nodes[1], everyone, ready_out=False, after_ticks=AFTER_TICKS
        )
    assert not POLICY.can_quiesce(quiet, env.nodes[1], everyone, ready_out=True, after_ticks=1)
    assert quiet.settled_ticks == 0  # a Ready in flight starts the count again
    for _ in range(AFTER_TICKS - 1):
        assert not POLICY.can_quiesce(
            quiet, env.nodes[1], everyone, ready_out=False, after_ticks=AFTER_TICKS
        )
    assert POLICY.can_quiesce(
        quiet, env.nodes[1], everyone, ready_out=False, after_ticks=AFTER_TICKS
    )


def test_a_leader_with_a_lagging_follower_or_a_dead_member_stays_awake() -> None:
    env = settled_env()
    raw = env.nodes[1]
    quiet = Quiet()
    assert POLICY.quiet_ok(quiet, raw, everyone)
    assert not POLICY.quiet_ok(quiet, raw, lambda n: n != 3)
    env.isolate(3)
    raw.propose(b"y")
    env.stabilize()
    assert raw.raft.progress[3].match < raw.raft.log.last_index()
    assert not POLICY.quiet_ok(quiet, raw, everyone)


def test_a_follower_goes_quiet_once_it_hears_its_live_leader() -> None:
    env = settled_env()
    raw = env.nodes[2]
    quiet = Quiet()
    assert not POLICY.can_quiesce(quiet, raw, everyone, ready_out=False, after_ticks=AFTER_TICKS)
    heartbeat = Message(MessageType.HEARTBEAT, 2, 1, raw.raft.term, commit=raw.raft.log.committed)
    raw.step(heartbeat)
    assert not POLICY.after_message(quiet, raw, heartbeat, everyone)
    assert quiet.heard_leader
    assert POLICY.can_quiesce(quiet, raw, everyone, ready_out=False, after_ticks=AFTER_TICKS)
    assert not POLICY.quiet_ok(quiet, raw, lambda n: n != 1)


def test_a_quiet_follower_wakes_when_its_leaders_node_changes_liveness() -> None:
    env = settled_env()
    raw = env.nodes[2]
    quiet = Quiet(quiesced=True, heard_leader=True)
    assert not POLICY.after_liveness(quiet, raw, 3, everyone)  # not the leader's node
    assert quiet.heard_leader
    # Back alive (a fast restart) or dead: either way wait to hear the leader again.
    assert POLICY.after_liveness(quiet, raw, 1, everyone)
    assert not quiet.heard_leader
    POLICY.wake(quiet)
    assert (quiet.quiesced, quiet.settled_ticks) == (False, 0)
    assert not POLICY.after_liveness(Quiet(), raw, 9, everyone)  # not a member


def test_a_leader_steps_down_when_the_nodes_of_its_quorum_are_dead() -> None:
    """Quiet or not, at once, keeping its term: the core's CheckQuorum runs only on ticks."""
    env = settled_env()
    raw = env.nodes[1]
    # One of three voters' nodes dead: a quorum is alive, the leader stays (awake).
    assert POLICY.after_liveness(Quiet(quiesced=True), raw, 3, lambda n: n != 3)
    assert raw.raft.role is Role.LEADER and not raw.has_ready()
    # Both peers dead: no quorum can answer. It wakes, so its election timer runs.
    assert POLICY.after_liveness(Quiet(quiesced=True), raw, 2, lambda n: n == 1)
    assert (raw.raft.role, raw.raft.term, raw.raft.leader) == (Role.FOLLOWER, 1, 0)
    # The host must serve the Ready that reports the new soft state.
    assert raw.has_ready()
    soft = raw.ready().soft_state
    assert soft is not None and soft.role is Role.FOLLOWER


def test_the_quorum_counts_voters_only_and_this_node_alive() -> None:
    env = Env(ids=(1, 2, 3, 4, 5))
    env.campaign(1)
    raw = env.nodes[1]
    # Two of four peers alive, this node counted: three of five.
    assert POLICY.quorum_alive(raw, lambda n: n in (2, 3))
    assert not POLICY.quorum_alive(raw, lambda n: n == 2)
    assert not POLICY.after_liveness(Quiet(), raw, 4, lambda n: n in (2, 3))
    assert raw.raft.role is Role.LEADER
    assert not POLICY.after_liveness(Quiet(), raw, 3, lambda n: n == 2)
    assert raw.raft.role is Role.FOLLOWER


def test_a_campaign_wakes_a_quiet_follower() -> None:
    env = settled_env()
    raw = env.nodes[2]
    quiet = Quiet(quiesced=True, heard_leader=True)
    request = Message(MessageType.PRE_VOTE, 2, 3, raw.raft.term + 1, index=1, log_term=1)
    raw.step(request)
    assert POLICY.after_message(quiet, raw, request, everyone)
    assert raw.raft.role is Role.FOLLOWER and not quiet.heard_leader


def test_a_campaign_wakes_a_quiet_leader_although_its_lease_rejects_it() -> None:
    """Simulator seed 2067: a member that lost track of a quiet leader must hear from it."""
    env = settled_env()
    raw = env.nodes[1]
    quiet = Quiet(quiesced=True)
    assert POLICY.quiet_ok(quiet, raw, everyone)
    request = Message(MessageType.PRE_VOTE, 1, 3, raw.raft.term + 1, index=1, log_term=1)
    raw.step(request)
    assert raw.raft.role is Role.LEADER  # the lease rejected it
    assert POLICY.after_message(quiet, raw, request, everyone)
    ack = Message(MessageType.HEARTBEAT_RESP, 1, 2, raw.raft.term)
    raw.step(ack)
    assert not POLICY.after_message(quiet, raw, ack, everyone)


def test_a_follower_that_missed_the_final_commit_index_stays_awake() -> None:
    """Simulator seed 5009: the quiet leader will not send it again; a campaign will fetch it."""
    env = settled_env()
    env.nodes[1].propose(b"y")
    env.flush()
    env.deliver(MessageType.APPEND)  # the entry arrives; the commit index that follows will not
    env.flush()
    raw = env.nodes[2]
    assert raw.raft.log.committed < raw.raft.log.last_index()
    assert not POLICY.quiet_ok(Quiet(heard_leader=True), raw, everyone)


# ---- early reveals -----------------------------------------------------------------------


def reveal_upto(env: Env, i: int, *, rows: int | None = None, ready: Ready | None = None) -> int:
    """Asks the policy as the driver does for node `i`, whose application is caught up."""
    raw = env.nodes[i]
    applied = len(env.applied[i])  # every index of these logs is applied in order
    rows_committed = env.storages[i].last_index() if rows is None else rows
    return POLICY.reveal_upto(
        raw,
        visible_index=applied,
        applied_submitted=applied,
        rows_committed_index=rows_committed,
        ready=ready,
    )


def test_a_leader_reveals_its_stored_entries_once_acknowledged_not_its_new_ones() -> None:
    env = Env(election_ticks=10, heartbeat_ticks=2)
    env.campaign(1)
    visible = len(env.applied[1])
    env.nodes[1].propose(b"a")
    env.handle(1)  # stored on the leader; appends to both followers
    env.deliver()
    env.flush()  # stored on the followers
    env.nodes[1].propose(b"b")  # unstable: its turn waits for the disk
    env.deliver()  # the followers' acknowledgements commit "a"
    log = env.raft(1).log
    assert log.committed == visible + 1 and log.unstable_offset == visible + 2
    assert reveal_upto(env, 1) == visible + 1
    # Only rows committed to this node's disk are revealed.
    assert reveal_upto(env, 1, rows=visible) == visible


def test_a_follower_does_not_reveal_stored_rows_that_a_new_leaders_suffix_replaces() -> None:
    env = Env(election_ticks=10, heartbeat_ticks=2)
    env.campaign(1)
    env.isolate(1)
    env.nodes[1].propose(b"stale")
    env.flush()  # stored on node 1 only
    stale = env.raft(1).log.last_index()
    env.tick(3, 10)  # node 3's lease on leader 1 runs out
    env.campaign(2)
    env.nodes[2].propose(b"fresh")
    env.stabilize()
    assert env.raft(2).log.committed >= stale
    env.heal()
    for _ in range(20):  # until node 1 holds the new leader's suffix, unstable
        env.nodes[2].tick()
        for node in (2, 3):
            env.handle(node)
        env.deliver()
        log = env.raft(1).log
        if log.unstable_offset <= env.storages[1].last_index():
            break
        env.handle(1)
    else:
        raise AssertionError("node 1 never received the replacing suffix")
    assert log.committed >= stale  # committed, and the stored row there is another one
    assert env.storages[1].term(stale) != log.term(stale)
    assert reveal_upto(env, 1) == log.unstable_offset - 1 < stale


def test_nothing_is_revealed_while_entries_wait_or_a_snapshot_is_in_the_way() -> None:
    env = Env(election_ticks=10, heartbeat_ticks=2)
    env.campaign(1)
    env.nodes[1].propose(b"a")
    env.handle(1)
    env.deliver()
    env.flush()
    env.deliver()  # acknowledgements: "a" is committed, not applied yet
    raw = env.nodes[1]
    visible = len(env.applied[1])
    rows = env.storages[1].last_index()

    def ask(applied_submitted: int, ready: Ready | None = None) -> int:
        return POLICY.reveal_upto(
            raw,
            visible_index=visible,
            applied_submitted=applied_submitted,
            rows_committed_index=rows,
            ready=ready,
        )

    assert ask(visible) == visible + 1
    # Applied, waiting for their turn's commit to become visible (or revealed ahead).
    assert ask(visible + 1) == visible
    assert ask(visible - 1) == visible
    # A snapshot in the outstanding Ready replaces the log; the turn serves it.
    snapshot = env.storages[1].snapshot()
    assert ask(visible, Ready(None, None, (), snapshot, None, (), ())) == visible


def test_nothing_is_revealed_while_a_received_snapshot_is_not_written() -> None:
    env = Env(election_ticks=10, heartbeat_ticks=2)
    env.campaign(1)
    env.isolate(3)
    for data in (b"a", b"b", b"c"):
        env.nodes[1].propose(data)
    env.stabilize()
    applied = env.raft(1).log.applied
    env.nodes[1].compact(applied, b"state")
    env.stabilize()
    env.heal()
    for _ in range(20):  # until node 3 holds the leader's snapshot, not written yet
        env.nodes[1].tick()
        for node in (1, 2):
            env.handle(node)
        env.deliver()
        if env.raft(3).log.pending_snapshot is not None:
            break
        env.handle(3)
    else:
        raise AssertionError("node 3 never received the snapshot")
    log = env.raft(3).log
    assert log.committed == applied == log.unstable_offset - 1 > len(env.applied[3])
    # Whatever rows storage holds: the snapshot replaces them, and its turn serves it.
    assert reveal_upto(env, 3, rows=applied) == len(env.applied[3])
