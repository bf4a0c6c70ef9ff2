"""One step function per role: what a message of the current term does.

`Raft.step()` has already settled terms and vote requests; the functions
here see only messages of the current term (and granted pre-vote answers).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .progress import ProgressState
from .types import Message, MessageType, Role

if TYPE_CHECKING:
    from .raft import Raft


def step_leader(r: Raft, m: Message) -> None:
    pr = r.progress.get(m.frm)
    if pr is None:
        return  # not (or no longer) a member
    if m.type is MessageType.APPEND_RESP:
        pr.heard_tick = r.leader_ticks
        if m.reject:
            _on_append_rejected(r, m)
        else:
            _on_append_acked(r, m)
    elif m.type is MessageType.HEARTBEAT_RESP:
        pr.heard_tick = r.leader_ticks
        # Appends or their answers may have been lost; a heartbeat answer shows
        # the follower is reachable, so open the window by one to retry.
        pr.heard_from()
        if pr.match < r.log.last_index():
            r.send_append(m.frm)


def _on_append_rejected(r: Raft, m: Message) -> None:
    pr = r.progress[m.frm]
    hint = m.hint_index
    if m.hint_term > 0:
        # Skip our entries whose term is above the follower's: they cannot match.
        hint, _ = r.log.hint_for(m.hint_index, m.hint_term)
    if pr.maybe_decrease(m.index, hint):
        r.send_append(m.frm)


def _on_append_acked(r: Raft, m: Message) -> None:
    pr = r.progress[m.frm]
    was_paused = pr.is_paused()
    if not pr.maybe_update(m.index):
        return
    if pr.state is ProgressState.PROBE or (
        pr.state is ProgressState.SNAPSHOT and pr.match >= pr.pending_snapshot
    ):
        pr.become_replicate()
    if r.maybe_commit():
        r.commit_pending = True  # told to every follower at the next Ready (flush())
    if was_paused:
        r.send_append(m.frm)
    # Fill the pipeline: as many batches as the in-flight window allows.
    while r.send_append(m.frm, send_if_empty=False):
        pass
    if m.frm == r.lead_transferee and pr.match == r.log.last_index():
        r.send_timeout_now(m.frm)


def step_candidate(r: Raft, m: Message) -> None:
    """Pre-candidates and candidates (§5.2)."""
    if m.type in (
        MessageType.APPEND,
        MessageType.HEARTBEAT,
        MessageType.SNAPSHOT,
        MessageType.TIMEOUT_NOW,
    ):
        # Another server won this term (§5.2): follow it. A TimeoutNow is its
        # leadership transfer to us (§3.10): honour it even mid-(pre-)campaign,
        # or a follower that started a pre-vote just before the leader chose it
        # drops the transfer (found by the simulator, seed 4848).
        r.become_follower(r.term, m.frm)
        step_follower(r, m)
        return
    expected = MessageType.PRE_VOTE_RESP if r.role is Role.PRE_CANDIDATE else MessageType.VOTE_RESP
    if m.type is expected:
        r.record_vote(m.frm, not m.reject)


def step_follower(r: Raft, m: Message) -> None:
    if m.type is MessageType.APPEND:
        r.election_elapsed = 0
        r.leader = m.frm
        _handle_append(r, m)
    elif m.type is MessageType.HEARTBEAT:
        r.election_elapsed = 0
        r.leader = m.frm
        r.log.commit_to(m.commit)
        r.send(MessageType.HEARTBEAT_RESP, m.frm)
    elif m.type is MessageType.SNAPSHOT:
        r.election_elapsed = 0
        r.leader = m.frm
        _handle_snapshot(r, m)
    elif m.type is MessageType.TIMEOUT_NOW:
        # Thesis §3.10: the leader chose us; campaign now, skipping PreVote and leases.
        r.campaign(pre_vote=False, transfer=True)


def _handle_append(r: Raft, m: Message) -> None:
    log = r.log
    if m.index < log.committed:
        # Everything up to our commit index already matches (Log Matching).
        r.send(MessageType.APPEND_RESP, m.frm, index=log.committed)
        return
    last = log.maybe_append(m.index, m.log_term, m.commit, m.entries)
    if last is not None:
        r.send(MessageType.APPEND_RESP, m.frm, index=last)
        return
    hint_index, hint_term = log.hint_for(m.index, m.log_term)
    r.send(
        MessageType.APPEND_RESP,
        m.frm,
        index=m.index,
        reject=True,
        hint_index=hint_index,
        hint_term=hint_term,
    )


def _handle_snapshot(r: Raft, m: Message) -> None:
    assert m.snapshot is not None
    meta = m.snapshot.meta
    log = r.log
    index = log.committed
    if meta.index <= log.committed:
        pass  # we already hold all of it
    elif log.match_term(meta.index, meta.term):
        # Our log contains the snapshot's last entry: keep the log, advance commit.
        log.commit_to(meta.index)
        index = meta.index
    else:
        log.restore(m.snapshot)
        r.conf = meta.conf
        r.conf_history = [(meta.index, meta.conf)]
        index = meta.index
    r.send(MessageType.APPEND_RESP, m.frm, index=index)


STEPS: dict[Role, Callable[[Raft, Message], None]] = {
    Role.LEADER: step_leader,
    Role.CANDIDATE: step_candidate,
    Role.PRE_CANDIDATE: step_candidate,
    Role.FOLLOWER: step_follower,
}
