"""Scenarios from the Raft paper (Ongaro & Ousterhout 2014), asserting on Ready output.

Section numbers refer to the paper; "thesis" to Ongaro's 2014 dissertation.
"""

from __future__ import annotations

import pytest

from weir.cluster.raft import (
    ConfState,
    Entry,
    EntryType,
    HardState,
    MemoryStorage,
    Message,
    MessageType,
    Raft,
    Role,
)
from weir.cluster.raft.raft import Raft as CoreRaft

from .env import Env, of_type


def storage_with(terms: list[int], ids: list[int], term: int, commit: int = 0) -> MemoryStorage:
    """A storage whose log holds one entry per listed term (index 1, 2, ...)."""
    storage = MemoryStorage(ConfState(frozenset(ids)))
    storage.append([Entry(t, i, EntryType.NORMAL, b"x%d" % i) for i, t in enumerate(terms, 1)])
    storage.set_hard_state(HardState(term, 0, commit))
    return storage


def env_with_logs(logs: dict[int, list[int]], terms: dict[int, int], **config: object) -> Env:
    env = Env(logs, **config)  # type: ignore[arg-type]
    for i, log in logs.items():
        env.start(i, storage_with(log, list(logs), terms[i]))
    return env


def test_election_messages_and_durable_vote_share_a_ready() -> None:
    """§5.2: a candidate increments its term, votes for itself and asks everyone.

    The vote request goes out in the same Ready as the hard state recording
    our own vote, which the host persists before sending.
    """
    env = Env(pre_vote=False)
    env.nodes[1].campaign()
    ready = env.nodes[1].ready()
    assert ready.hard_state == HardState(term=1, vote=1, commit=0)
    votes = of_type(ready.messages, MessageType.VOTE)
    assert [(m.to, m.term, m.index, m.log_term) for m in votes] == [(2, 1, 0, 0), (3, 1, 0, 0)]


def test_vote_grant_is_sent_with_the_vote_it_promises() -> None:
    env = Env(pre_vote=False)
    env.nodes[1].campaign()
    env.flush()
    env.deliver()
    ready = env.nodes[2].ready()
    assert ready.hard_state == HardState(term=1, vote=1, commit=0)
    (resp,) = ready.messages
    assert (resp.type, resp.to, resp.reject) == (MessageType.VOTE_RESP, 1, False)


def test_append_ack_is_sent_with_the_entries_it_promises() -> None:
    """§5.3: a follower acknowledges entries in the Ready that makes them durable."""
    env = Env()
    env.campaign(1)
    env.nodes[1].propose(b"a")
    env.flush()
    env.deliver()
    ready = env.nodes[2].ready()
    assert [(e.index, e.data) for e in ready.entries] == [(2, b"a")]
    (ack,) = ready.messages
    assert (ack.type, ack.index, ack.reject) == (MessageType.APPEND_RESP, 2, False)


def test_winner_appends_a_noop_and_commits_it() -> None:
    """§5.4.2 and §8: a new leader commits an entry of its own term first."""
    env = Env()
    env.campaign(1)
    assert env.leader() == 1
    assert env.raft(1).term == 1
    noop = env.applied[1][-1]
    assert (noop.index, noop.term, noop.type) == (1, 1, EntryType.NOOP)
    assert all(env.applied[i] == [noop] for i in (2, 3))


def test_election_safety_with_split_vote() -> None:
    """§5.2: two candidates in one term; at most one can win."""
    env = Env(pre_vote=False)
    env.nodes[1].campaign()
    env.nodes[2].campaign()
    env.stabilize()
    leaders = [i for i in env.nodes if env.raft(i).role is Role.LEADER]
    assert len(leaders) <= 1
    assert {env.raft(i).term for i in env.nodes} == {1}


def test_stale_log_cannot_win() -> None:
    """§5.4.1: a voter denies its vote to a candidate whose log is less up-to-date."""
    env = env_with_logs({1: [1], 2: [1, 1], 3: [1, 2]}, {1: 2, 2: 2, 3: 2}, pre_vote=False)
    env.nodes[1].campaign()
    msgs = env.stabilize()
    grants = [m for m in of_type(msgs, MessageType.VOTE_RESP) if m.to == 1]
    assert grants and all(m.reject for m in grants)
    assert env.raft(1).role is Role.FOLLOWER


def test_higher_term_makes_leader_step_down() -> None:
    """§5.1: a server that sees a higher term reverts to follower."""
    env = Env()
    env.campaign(1)
    env.nodes[1].step(Message(MessageType.APPEND_RESP, 1, 2, term=5))
    assert (env.raft(1).role, env.raft(1).term) == (Role.FOLLOWER, 5)


def test_stale_term_messages_are_answered_with_our_term() -> None:
    """§5.1: requests with a stale term are rejected; the sender learns the newer term."""
    env = Env()
    env.campaign(1)
    env.raft(2).term = 3  # as if node 2 moved on without us
    env.queue.clear()
    env.nodes[2].step(_heartbeats(env, 1)[0])
    (resp,) = env.handle(2)
    assert (resp.type, resp.term) == (MessageType.APPEND_RESP, 3)


def _heartbeats(env: Env, leader: int) -> list[Message]:
    for _ in range(env.raft(leader).config.heartbeat_ticks):
        env.tick(leader)
    return env.handle(leader)


# Figure 7: the leader's log (term 8) and followers (a)-(f).
FIGURE7_LEADER = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6]
FIGURE7_FOLLOWERS = {
    "a": [1, 1, 1, 4, 4, 5, 5, 6, 6],
    "b": [1, 1, 1, 4],
    "c": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],
    "d": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],
    "e": [1, 1, 1, 4, 4, 4, 4],
    "f": [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],
}


@pytest.mark.parametrize("name", sorted(FIGURE7_FOLLOWERS))
def test_figure7_follower_logs_are_repaired(name: str) -> None:
    """§5.3: the leader forces followers' logs to duplicate its own.

    Fast backtracking (conflict term hints) needs only a few round trips even
    for follower (f), which holds 8 entries the leader must overwrite.
    """
    follower = FIGURE7_FOLLOWERS[name]
    env = env_with_logs({1: FIGURE7_LEADER, 2: follower, 3: []}, {1: 7, 2: 7, 3: 7})
    # Node 3 (empty log) votes for 1; node 2 may or may not.
    env.nodes[1].campaign()
    msgs = env.stabilize()
    assert env.leader() == 1
    expected = [(i, t) for i, t in enumerate(FIGURE7_LEADER, 1)] + [(11, 8)]
    assert env.log(2) == expected
    rejections = [m for m in of_type(msgs, MessageType.APPEND_RESP) if m.frm == 2 and m.reject]
    assert len(rejections) <= 3


@pytest.mark.parametrize("raft_class", [CoreRaft, "broken"])
def test_figure8_previous_term_entry_not_committed_by_counting(raft_class: object) -> None:
    """§5.4.2, Figure 8 (c): S1 (term 4) replicates index 2 (term 2) to a majority.

    It must not commit it by counting replicas: S5 (last term 3) could still be
    elected and overwrite it. Only once the term-4 entry is on a majority do
    both become committed. The broken variant commits early, which this test
    detects.
    """
    from tests.sim.broken import CommitsPreviousTermByCount

    cls: type[Raft] = CommitsPreviousTermByCount if raft_class == "broken" else CoreRaft
    logs = {1: [1, 2], 2: [1, 2], 3: [1], 4: [1], 5: [1, 3]}
    terms = {1: 3, 2: 3, 3: 3, 4: 3, 5: 3}
    env = Env(logs, append_entries_max=1, pre_vote=False, raft_class=cls)
    for i, log in logs.items():
        env.start(i, storage_with(log, list(logs), terms[i], commit=1))
    env.blocked = {(1, 2), (2, 1), (1, 5), (5, 1)}  # S1 talks to S3 and S4 only
    env.nodes[1].campaign()
    leader = env.raft(1)
    for _ in range(20):
        env.flush()
        env.deliver()
        if leader.role is Role.LEADER and min(leader.progress[n].match for n in (3, 4)) >= 2:
            break
    assert leader.term == 4 and leader.log.last_index() == 3
    assert [leader.progress[n].match for n in (3, 4)] == [2, 2]
    if cls is CoreRaft:
        assert leader.log.committed == 1, "committed a term-2 entry by counting replicas"
        env.stabilize()
        assert leader.log.committed == 3
        assert [(e.index, e.term) for e in env.applied[3]][-2:] == [(2, 2), (3, 4)]
    else:
        assert leader.log.committed == 2
