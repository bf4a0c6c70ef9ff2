"""Each feature of the core, shown through the messages `ready()` returns.

Thesis references: §9.6 PreVote, §6.2 CheckQuorum / leases, §3.10
leadership transfer, §5 log compaction, §4 membership changes.
"""

from __future__ import annotations

import random

import pytest

from weir.cluster.raft import (
    Config,
    ConfState,
    MemoryStorage,
    Message,
    MessageType,
    NotLeader,
    ProposalDropped,
    RawNode,
    Role,
)

from .env import Env, of_type


def elect(env: Env, leader: int = 1) -> None:
    env.campaign(leader)
    assert env.leader() == leader


# -- PreVote ----------------------------------------------------------------------


def test_prevote_does_not_bump_terms() -> None:
    """§9.6: a candidate first asks whether it could win, at term+1, without changing terms."""
    env = Env()
    env.nodes[1].campaign()
    ready = env.nodes[1].ready()
    assert ready.hard_state is None  # nothing to persist: our term did not change
    assert {(m.type, m.term) for m in ready.messages} == {(MessageType.PRE_VOTE, 1)}
    assert env.raft(1).role is Role.PRE_CANDIDATE


def test_partitioned_node_does_not_disrupt_after_heal() -> None:
    env = Env()
    elect(env)
    env.isolate(3)
    for _ in range(50):
        env.tick(3)
        env.flush()
    assert env.raft(3).term == 1  # pre-votes fail; its term never grew
    env.heal()
    env.tick(1, env.raft(1).config.heartbeat_ticks)
    env.stabilize()
    assert env.leader() == 1 and env.raft(1).term == 1


def test_prevote_rejected_when_log_is_behind() -> None:
    env = Env()
    elect(env)
    env.isolate(3)
    env.nodes[1].propose(b"a")
    env.stabilize()
    env.heal()
    # Nodes 1 and 2 stop hearing from a leader (lease expired) but 3 is behind.
    for i in (1, 2):
        env.raft(i).become_follower(1, 0)
        env.raft(i).election_elapsed = 100
    env.nodes[3].campaign()
    msgs = env.stabilize()
    answers = of_type(msgs, MessageType.PRE_VOTE_RESP)
    assert answers and all(m.reject for m in answers)
    assert env.raft(3).term == 1


def test_stale_prevote_is_answered_with_our_term() -> None:
    env = Env()
    elect(env)
    env.nodes[2].step(Message(MessageType.PRE_VOTE, 2, 3, term=0))
    (resp,) = env.handle(2)
    assert (resp.type, resp.reject, resp.term) == (MessageType.PRE_VOTE_RESP, True, 1)


# -- CheckQuorum and leases ------------------------------------------------------------


# The leader's side of CheckQuorum: test_check_quorum.py.


def test_leader_stays_while_quorum_answers() -> None:
    env = Env()
    elect(env)
    for _ in range(60):
        env.tick(1)
        env.stabilize()
    assert env.leader() == 1


def test_follower_in_lease_ignores_vote_requests() -> None:
    """A follower that heard from its leader within the election timeout ignores votes."""
    env = Env()
    elect(env)
    vote = Message(MessageType.VOTE, 2, 3, term=5, index=10, log_term=5)
    env.nodes[2].step(vote)
    assert env.handle(2) == [] and env.raft(2).term == 1
    # A vote that follows TimeoutNow (leadership transfer) is not disruptive.
    env.nodes[2].step(Message(MessageType.VOTE, 2, 3, term=5, index=10, log_term=5, transfer=True))
    (resp,) = env.handle(2)
    assert (resp.type, resp.reject, env.raft(2).term) == (MessageType.VOTE_RESP, False, 5)


def test_without_check_quorum_votes_are_not_ignored() -> None:
    env = Env(check_quorum=False, pre_vote=False)
    elect(env)
    env.nodes[2].step(Message(MessageType.VOTE, 2, 3, term=5, index=10, log_term=5))
    assert env.raft(2).term == 5


# -- Replication: batching, pipelining, flow control -------------------------------------


def test_appends_are_batched_and_bounded() -> None:
    env = Env(append_entries_max=3, append_bytes_max=100, inflight_messages_max=2)
    elect(env)
    for n in range(10):
        assert isinstance(env.nodes[1].propose(b"%02d" % n * 10), int)
    appends = [m for m in of_type(env.handle(1), MessageType.APPEND) if m.to == 2]
    # Two messages in flight at most, each with at most 3 entries and ~100 bytes.
    assert len(appends) == 2
    assert all(1 <= len(m.entries) <= 3 for m in appends)
    assert all(sum(len(e.data) for e in m.entries) <= 100 for m in appends)
    assert appends[1].index == appends[0].entries[-1].index  # pipelined back to back
    env.stabilize()
    assert len(env.applied[2]) == 11


def test_single_entry_larger_than_bytes_max_still_moves() -> None:
    env = Env(append_bytes_max=10)
    elect(env)
    env.nodes[1].propose(b"x" * 100)
    env.stabilize()
    assert env.applied[3][-1].data == b"x" * 100


def test_follower_in_probe_gets_one_append_at_a_time() -> None:
    env = Env(append_entries_max=1)
    elect(env)
    env.isolate(3)
    for n in range(5):
        env.nodes[1].propose(b"%d" % n)
        env.stabilize()
    env.heal()
    pr = env.raft(1).progress[3]
    pr.become_probe()
    pr.next = 2
    env.tick(1, env.raft(1).config.heartbeat_ticks)
    env.flush()
    env.deliver()
    env.flush()
    env.deliver()
    assert len([m for m in of_type(env.handle(1), MessageType.APPEND) if m.to == 3]) <= 1
    env.stabilize()
    assert env.log(3) == env.log(1)


def test_lost_appends_are_recovered_by_heartbeats() -> None:
    env = Env(inflight_messages_max=1)
    elect(env)
    env.blocked = {(1, 3)}
    env.nodes[1].propose(b"a")
    env.nodes[1].propose(b"b")
    env.stabilize()
    env.heal()
    for _ in range(5):
        env.tick(1)
        env.stabilize()
    assert env.log(3) == env.log(1)


def test_stale_rejection_is_ignored() -> None:
    env = Env()
    elect(env)
    env.nodes[1].step(Message(MessageType.APPEND_RESP, 1, 2, term=1, index=0, reject=True))
    assert env.raft(1).progress[2].match == 1


def test_messages_from_non_members_are_ignored() -> None:
    env = Env()
    elect(env)
    env.nodes[1].step(Message(MessageType.APPEND_RESP, 1, 9, term=1, index=5))
    assert 9 not in env.raft(1).progress


# -- Proposals -------------------------------------------------------------------------


def test_follower_rejects_proposals_with_leader_hint() -> None:
    env = Env()
    elect(env)
    assert env.nodes[2].propose(b"x") == NotLeader(1)
    assert NotLeader.retriable


def test_uncommitted_proposals_are_bounded() -> None:
    env = Env(uncommitted_entries_max=3)
    elect(env)
    env.isolate(1)
    results = [env.nodes[1].propose(b"p") for _ in range(4)]
    assert results[:3] == [2, 3, 4]
    assert isinstance(results[3], ProposalDropped)
    env.heal()
    env.tick(1, env.raft(1).config.heartbeat_ticks)
    env.stabilize()
    assert env.nodes[1].propose(b"p") == 5


def test_uncommitted_bytes_are_bounded() -> None:
    env = Env(uncommitted_bytes_max=10)
    elect(env)
    env.isolate(1)
    assert env.nodes[1].propose(b"x" * 20) == 2  # one oversized entry is allowed alone
    assert isinstance(env.nodes[1].propose(b"y"), ProposalDropped)


# -- Leadership transfer ---------------------------------------------------------------


def test_transfer_sends_timeout_now_and_target_wins() -> None:
    env = Env()
    elect(env)
    assert env.nodes[1].transfer_leadership(2) is None
    ready = env.nodes[1].ready()
    assert [(m.type, m.to) for m in ready.messages] == [(MessageType.TIMEOUT_NOW, 2)]
    env.nodes[1].advance(ready)
    env.queue.extend(ready.messages)
    env.stabilize()
    assert env.leader() == 2 and env.raft(2).term == 2


def test_transfer_to_lagging_follower_catches_it_up_first() -> None:
    env = Env()
    elect(env)
    env.isolate(3)
    env.nodes[1].propose(b"a")
    env.stabilize()
    env.heal()
    env.nodes[1].transfer_leadership(3)
    assert isinstance(env.nodes[1].propose(b"b"), ProposalDropped)
    assert env.nodes[1].transfer_leadership(3) is None  # already in progress
    msgs = env.stabilize()
    assert [m.to for m in of_type(msgs, MessageType.TIMEOUT_NOW)] == [3]
    assert env.leader() == 3


def test_transfer_is_abandoned_after_an_election_timeout() -> None:
    env = Env()
    elect(env)
    env.isolate(3)
    env.nodes[1].transfer_leadership(3)
    for _ in range(env.raft(1).config.election_ticks):
        env.tick(1)
        env.stabilize()
    assert env.raft(1).lead_transferee == 0
    assert isinstance(env.nodes[1].propose(b"ok"), int)


def test_transfer_rejections() -> None:
    env = Env()
    elect(env)
    assert isinstance(env.nodes[1].transfer_leadership(1), ProposalDropped)
    assert isinstance(env.nodes[1].transfer_leadership(7), ProposalDropped)
    assert env.nodes[2].transfer_leadership(3) == NotLeader(1)


# -- The Ready contract ----------------------------------------------------------------


def test_ready_twice_without_advance_is_a_programmer_error() -> None:
    env = Env()
    env.nodes[1].campaign()
    env.nodes[1].ready()
    with pytest.raises(AssertionError, match="before advance"):
        env.nodes[1].ready()


def test_advance_checks_that_the_host_persisted() -> None:
    env = Env(pre_vote=False)
    env.nodes[1].campaign()
    ready = env.nodes[1].ready()
    with pytest.raises(AssertionError, match="not persisted"):
        env.nodes[1].advance(ready)


def test_advance_checks_entries_were_persisted() -> None:
    env = Env()
    elect(env)
    env.nodes[1].propose(b"a")
    ready = env.nodes[1].ready()
    with pytest.raises(AssertionError, match="entries not persisted"):
        env.nodes[1].advance(ready)


def test_advance_with_a_foreign_ready_is_rejected() -> None:
    env = Env()
    env.nodes[1].campaign()
    ready = env.nodes[1].ready()
    with pytest.raises(AssertionError, match="not outstanding"):
        env.nodes[2].advance(ready)


def test_soft_state_reports_leadership() -> None:
    env = Env(pre_vote=False)
    env.nodes[1].campaign()
    env.flush()
    env.deliver()
    env.flush()
    env.deliver()
    ready = env.nodes[1].ready()
    assert ready.soft_state is not None and ready.soft_state.role is Role.LEADER


def test_leader_counts_its_own_entry_only_once_persisted() -> None:
    """A single-node group commits only after the host persisted the entry."""
    storage = MemoryStorage(ConfState(frozenset({1})))
    node = RawNode(Config(id=1), storage, random.Random(1))
    node.campaign()
    ready = node.ready()
    assert node.raft.role is Role.LEADER
    assert ready.committed_entries == ()
    storage.append(ready.entries)
    assert ready.hard_state is not None
    storage.set_hard_state(ready.hard_state)
    node.advance(ready)
    ready = node.ready()
    assert [e.index for e in ready.committed_entries] == [1]


def test_restart_keeps_term_vote_and_log() -> None:
    env = Env()
    elect(env)
    env.nodes[1].propose(b"a")
    env.stabilize()
    env.start(2)
    r = env.raft(2)
    assert (r.term, r.vote, r.log.last_index(), r.log.committed) == (1, 1, 2, 2)
    assert r.role is Role.FOLLOWER


def test_config_validates_limits() -> None:
    with pytest.raises(AssertionError):
        Config(id=0)
    with pytest.raises(AssertionError):
        Config(id=1, heartbeat_ticks=10, election_ticks=10)


def test_transfer_requests_do_not_delay_check_quorum() -> None:
    """Thesis §6.2: a leader that cannot reach a quorum steps down within an election timeout.

    Each transfer has its own clock (thesis §3.10: abandoned after an election
    timeout); requests arriving while the leader is cut off must not restart
    the CheckQuorum clock, or a stream of them keeps a deposed leader leading.
    """
    env = Env()
    elect(env)
    env.isolate(1)
    for tick in range(env.raft(1).check_quorum_ticks()):
        assert env.raft(1).role is Role.LEADER
        if tick % 4 == 0:
            env.nodes[1].transfer_leadership(2 + tick // 4 % 2)
        env.tick(1)
        env.flush()
    assert env.raft(1).role is Role.FOLLOWER
