"""CheckQuorum (thesis §6.2): a leader that cannot reach a quorum steps down.

§6.2: "a leader steps down if an election timeout elapses without a
successful round of heartbeats to a majority of its cluster". The core
checks at every tick whether a quorum of voters (itself counted) answered
within the last `election_ticks - 1` ticks (`Raft.check_quorum_ticks`), so a
cut-off leader steps down within one election timeout of the cut, keeping
its term. The host may end a leadership sooner with `step_down()` when it
knows the quorum's nodes are dead (cluster/host/policy.py).
"""

from __future__ import annotations

from weir.cluster.raft import Role

from .env import Env
from .test_features import elect


def run(env: Env, leader: int, ticks: int) -> None:
    """`ticks` ticks of the leader, each followed by every exchange it causes."""
    for _ in range(ticks):
        env.tick(leader)
        env.stabilize()


def test_a_cut_off_leader_steps_down_one_tick_before_an_election_timeout() -> None:
    env = Env()
    elect(env)
    run(env, 1, 4)  # heartbeats answered at leader ticks 2 and 4
    raft = env.raft(1)
    window = raft.check_quorum_ticks()
    assert window == raft.config.election_ticks - 1
    assert raft.progress[2].heard_tick == raft.progress[3].heard_tick == 4
    env.isolate(1)
    run(env, 1, window - 1)
    assert raft.role is Role.LEADER
    run(env, 1, 1)
    assert (raft.role, raft.term, raft.leader) == (Role.FOLLOWER, 1, 0)


def test_the_window_slides_at_every_tick_not_once_per_election_timeout() -> None:
    """Cut just after a check on the old once-per-timeout schedule: the end is still one window later.

    Checking once per election timeout T over the last T would let this
    leader lead until tick 2T + 1, 2T - 2 ticks after the cut.
    """
    env = Env()
    elect(env)
    raft = env.raft(1)
    election_ticks = raft.config.election_ticks
    run(env, 1, election_ticks + 2)  # last answers at leader tick T + 2
    cut_at = raft.leader_ticks
    assert raft.progress[2].heard_tick == cut_at
    env.isolate(1)
    waited = 0
    while raft.role is Role.LEADER and waited < 2 * election_ticks:
        run(env, 1, 1)
        waited += 1
    assert waited == raft.check_quorum_ticks()


def test_one_answering_follower_of_three_keeps_the_leader() -> None:
    env = Env()
    elect(env)
    env.blocked.update({(1, 3), (3, 1)})
    run(env, 1, 5 * env.raft(1).config.election_ticks)
    assert env.raft(1).role is Role.LEADER


def test_a_minority_answering_does_not_keep_the_leader() -> None:
    """Five voters, only one follower answers: two of five is no quorum."""
    env = Env(ids=(1, 2, 3, 4, 5))
    elect(env)
    for cut in (3, 4, 5):
        env.blocked.update({(1, cut), (cut, 1)})
    raft = env.raft(1)
    run(env, 1, raft.check_quorum_ticks())
    assert raft.role is Role.FOLLOWER and raft.term == 1


def test_a_new_leader_has_one_window_to_hear_from_its_quorum() -> None:
    env = Env()
    elect(env)  # the votes and first appends were answered at leader tick 0
    raft = env.raft(1)
    assert raft.leader_ticks == 0
    env.isolate(1)
    run(env, 1, raft.check_quorum_ticks() - 1)
    assert raft.role is Role.LEADER
    run(env, 1, 1)
    assert raft.role is Role.FOLLOWER


def test_snapshots_go_only_to_members_heard_within_the_window() -> None:
    env = Env()
    elect(env)
    raft = env.raft(1)
    pr = raft.progress[2]
    assert raft.heard_recently(pr)
    raft.leader_ticks = pr.heard_tick + raft.check_quorum_ticks()
    assert not raft.heard_recently(pr)


def test_the_host_can_end_a_leadership_at_once_keeping_the_term() -> None:
    env = Env()
    elect(env)
    node = env.nodes[1]
    node.step_down()
    raft = env.raft(1)
    assert (raft.role, raft.term, raft.leader) == (Role.FOLLOWER, 1, 0)
    ready = node.ready()
    assert ready.soft_state is not None and ready.soft_state.role is Role.FOLLOWER
    node.advance(ready)
    node.step_down()  # not leading: nothing happens
    assert not node.has_ready()
