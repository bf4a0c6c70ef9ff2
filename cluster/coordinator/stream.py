"""One stream-mode consumer group as a replicated state machine (docs/groups.md).

`StreamGroup.apply(command)` is the only way the state changes. It is
synchronous and deterministic: no I/O, no clock (commands carry `now_ms`),
no randomness, and every walk over members or partitions is in sorted
order, so every replica of the coordinator group that applies the same
commands holds the same state and would return the same instructions. The
leader acts on the instructions; followers drop them.

Each member has a *target* (what `target_assignment` gives it) and *owns*
the partitions it was told it has. Reconciling the two is cooperative: a
partition in a member's owned set but not its target is *revoked* (taken
out of what it owns, delivery stops at once, the member is sent its new
assignment) and stays with that member, still counted as its own, until the
member acknowledges that generation or the member's `rebalance_timeout_ms`
passes (`Tick`); only then is it free, and a free partition is given to the
member whose target holds it. A partition whose owner does not change is
never revoked, so it never pauses.

The generation rises by one for every applied command after which at least
one member is sent a changed assignment; a member's own generation is the
one of the last assignment it was sent. A commit is allowed from the
member's current generation, or from the one before (a commit that was in
flight when its new assignment went out), for partitions it owns or that
are being revoked from it and not yet acknowledged.

Member liveness is not here (see `sessions.py`): the leader tracks it and
proposes `Expire`. The state is O(members + partitions of the subscribed
topics); a group without members keeps its generation and nothing else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from weir.cluster.coordinator.assign import target_assignment
from weir.cluster.coordinator.messages import (
    Assignment,
    AssignmentAck,
    Command,
    Expire,
    Instruction,
    Join,
    JoinRefused,
    Leave,
    MemberRemoved,
    PartitionCount,
    Reason,
    RemovedBecause,
    StartDelivery,
    StopDelivery,
    StreamLimits,
    Tick,
    TopicPartition,
)

SNAPSHOT_VERSION = 1


@dataclass(frozen=True, slots=True)
class Revocation:
    """A partition taken from a member by the assignment of `generation`, not yet confirmed."""

    generation: int
    deadline_ms: int


@dataclass(frozen=True, slots=True)
class Member:
    member_id: str
    topics: frozenset[str]
    session_timeout_ms: int
    rebalance_timeout_ms: int
    # The generation of the last assignment sent to this member, and the one
    # before it in this membership (None right after joining).
    generation: int
    previous_generation: int | None
    target: frozenset[TopicPartition]
    owned: frozenset[TopicPartition]
    revoking: Mapping[TopicPartition, Revocation]

    def responsible_for(self, partition: TopicPartition) -> bool:
        """Owned, or revoked and not confirmed: nobody else may have it."""
        return partition in self.owned or partition in self.revoking


def _sorted(partitions: Iterable[TopicPartition]) -> tuple[TopicPartition, ...]:
    return tuple(sorted(partitions))


class StreamGroup:
    """Members, their subscriptions, targets, owned and revoking partitions, the generation."""

    def __init__(self, limits: StreamLimits | None = None) -> None:
        self.limits = limits or StreamLimits()
        self.generation = 0
        self._members: dict[str, Member] = {}
        # Only topics some member subscribes to are kept.
        self._partition_counts: dict[str, int] = {}

    # --- reading ---

    def members(self) -> tuple[Member, ...]:
        return tuple(self._members[m] for m in sorted(self._members))

    def member(self, member_id: str) -> Member | None:
        return self._members.get(member_id)

    def partition_counts(self) -> tuple[tuple[str, int], ...]:
        return tuple(sorted(self._partition_counts.items()))

    def next_deadline_ms(self) -> int | None:
        """When the earliest revocation times out: propose a `Tick` then."""
        deadlines = [r.deadline_ms for m in self._members.values() for r in m.revoking.values()]
        return min(deadlines, default=None)

    def validate_commit(
        self, member_id: str, generation: int, partitions: Iterable[TopicPartition]
    ) -> Reason | None:
        """Why this commit must be refused (it then changes nothing), or None."""
        member = self._members.get(member_id)
        if member is None:
            return Reason.UNKNOWN_MEMBER
        if generation not in (member.generation, member.previous_generation):
            return Reason.STALE_GENERATION
        if not all(member.responsible_for(p) for p in partitions):
            return Reason.PARTITION_NOT_ASSIGNED
        return None

    # --- applying ---

    def apply(self, command: Command) -> tuple[Instruction, ...]:
        plan = _Plan()
        match command:
            case Join():
                self._join(command, plan)
            case Leave():
                self._remove(command.member_id, RemovedBecause.LEFT, plan)
            case Expire():
                self._remove(command.member_id, RemovedBecause.SESSION_EXPIRED, plan)
            case AssignmentAck():
                self._ack(command)
            case PartitionCount():
                self._partition_count(command)
            case Tick():
                self._tick(command.now_ms)
        self._reconcile(command.now_ms, plan)
        return plan.instructions(self)

    def _check_join(self, command: Join) -> JoinRefused | None:
        limits = self.limits

        def refuse(reason: Reason, detail: str) -> JoinRefused:
            return JoinRefused(command.member_id, reason, detail)

        if not 1 <= len(command.member_id) <= limits.member_id_chars_max:
            return refuse(
                Reason.INVALID_JOIN, f"a member id has 1 to {limits.member_id_chars_max} characters"
            )
        topics = set(command.topics)
        if not 1 <= len(topics) <= limits.subscription_topics_max:
            return refuse(
                Reason.INVALID_JOIN,
                f"a subscription names 1 to {limits.subscription_topics_max} topics",
            )
        if (
            not limits.session_timeout_ms_min
            <= command.session_timeout_ms
            <= (limits.session_timeout_ms_max)
        ):
            return refuse(Reason.INVALID_JOIN, "session_timeout_ms is outside the limits")
        if (
            not limits.rebalance_timeout_ms_min
            <= command.rebalance_timeout_ms
            <= (limits.rebalance_timeout_ms_max)
        ):
            return refuse(Reason.INVALID_JOIN, "rebalance_timeout_ms is outside the limits")
        if any(count < 0 for _, count in command.partition_counts):
            return refuse(Reason.INVALID_JOIN, "a partition count is negative")
        if (
            command.member_id not in self._members
            and len(self._members) >= limits.group_members_max
        ):
            return refuse(
                Reason.GROUP_FULL, f"the group has {limits.group_members_max} members already"
            )
        return None

    def _join(self, command: Join, plan: _Plan) -> None:
        refused = self._check_join(command)
        if refused is not None:
            plan.refused.append(refused)
            return
        topics = frozenset(command.topics)
        for topic, count in command.partition_counts:
            if topic in topics:
                self._partition_counts.setdefault(topic, count)
        known = self._members.get(command.member_id)
        if known is None:
            self._members[command.member_id] = Member(
                member_id=command.member_id,
                topics=topics,
                session_timeout_ms=command.session_timeout_ms,
                rebalance_timeout_ms=command.rebalance_timeout_ms,
                generation=self.generation,
                previous_generation=None,
                target=frozenset(),
                owned=frozenset(),
                revoking={},
            )
            plan.changed.add(command.member_id)
            plan.joined.add(command.member_id)
        else:
            # A reconnect within the session: same partitions, told again on
            # the new stream.
            self._members[command.member_id] = dataclasses.replace(
                known,
                topics=topics,
                session_timeout_ms=command.session_timeout_ms,
                rebalance_timeout_ms=command.rebalance_timeout_ms,
            )
            plan.reconnected.add(command.member_id)
        self._retarget()

    def _remove(self, member_id: str, because: RemovedBecause, plan: _Plan) -> None:
        member = self._members.pop(member_id, None)
        if member is None:
            return
        # Nobody is left to confirm its revocations: everything it had is free.
        plan.removed.append((member, because))
        self._retarget()

    def _ack(self, command: AssignmentAck) -> None:
        member = self._members.get(command.member_id)
        if member is None or command.generation > member.generation:
            return  # an ack from a former member, or for a generation never sent
        revoking = {p: r for p, r in member.revoking.items() if r.generation > command.generation}
        if len(revoking) != len(member.revoking):
            self._members[command.member_id] = dataclasses.replace(member, revoking=revoking)

    def _partition_count(self, command: PartitionCount) -> None:
        if command.partition_count < 0:
            return
        if not any(command.topic in m.topics for m in self._members.values()):
            return
        if self._partition_counts.get(command.topic) == command.partition_count:
            return
        self._partition_counts[command.topic] = command.partition_count
        self._retarget()

    def _tick(self, now_ms: int) -> None:
        for member_id in sorted(self._members):
            member = self._members[member_id]
            revoking = {p: r for p, r in member.revoking.items() if r.deadline_ms > now_ms}
            if len(revoking) != len(member.revoking):
                self._members[member_id] = dataclasses.replace(member, revoking=revoking)

    def _retarget(self) -> None:
        """Recomputes every member's target after membership or a partition count changed."""
        subscribed = {t for m in self._members.values() for t in m.topics}
        for topic in [t for t in self._partition_counts if t not in subscribed]:
            del self._partition_counts[topic]
        targets = target_assignment(
            {m.member_id: m.topics for m in self._members.values()},
            self._partition_counts,
            {m.member_id: m.target for m in self._members.values()},
        )
        for member_id, target in targets.items():
            member = self._members[member_id]
            if member.target != target:
                self._members[member_id] = dataclasses.replace(member, target=target)

    def _reconcile(self, now_ms: int, plan: _Plan) -> None:
        """Moves every member's owned set toward its target, cooperatively."""
        ids = sorted(self._members)
        # Revoke what left a member's target; take back (without waiting)
        # partitions that came back to the member while being revoked.
        for member_id in ids:
            member = self._members[member_id]
            gone = member.owned - member.target
            back = member.target & member.revoking.keys()
            if not gone and not back:
                continue
            revoking = {p: r for p, r in member.revoking.items() if p not in back}
            deadline_ms = now_ms + member.rebalance_timeout_ms
            for partition in gone:
                # The generation is filled in below, once it is known to rise.
                revoking[partition] = Revocation(-1, deadline_ms)
            self._members[member_id] = dataclasses.replace(
                member, owned=(member.owned - gone) | back, revoking=revoking
            )
            plan.stopped[member_id] = gone
            plan.started[member_id] = set(back)
            plan.changed.add(member_id)
        # Give free partitions to the members whose target holds them.
        busy = {p for m in self._members.values() for p in (*m.owned, *m.revoking)}
        for member_id in ids:
            member = self._members[member_id]
            free = member.target - member.owned - busy
            if free:
                self._members[member_id] = dataclasses.replace(member, owned=member.owned | free)
                plan.started.setdefault(member_id, set()).update(free)
                plan.changed.add(member_id)
        changed = plan.changed & self._members.keys()
        if not changed:
            return
        self.generation += 1
        for member_id in sorted(changed):
            member = self._members[member_id]
            revoking = {
                p: Revocation(self.generation, r.deadline_ms) if r.generation < 0 else r
                for p, r in member.revoking.items()
            }
            self._members[member_id] = dataclasses.replace(
                member,
                generation=self.generation,
                previous_generation=member.generation if member_id not in plan.joined else None,
                revoking=revoking,
            )

    # --- snapshots (plain data; the encoding is the coordinator group's) ---

    def to_snapshot(self) -> dict[str, Any]:
        return {
            "version": SNAPSHOT_VERSION,
            "generation": self.generation,
            "partition_counts": [[t, c] for t, c in sorted(self._partition_counts.items())],
            "members": [
                {
                    "member_id": m.member_id,
                    "topics": sorted(m.topics),
                    "session_timeout_ms": m.session_timeout_ms,
                    "rebalance_timeout_ms": m.rebalance_timeout_ms,
                    "generation": m.generation,
                    "previous_generation": m.previous_generation,
                    "target": [[p.topic, p.partition] for p in _sorted(m.target)],
                    "owned": [[p.topic, p.partition] for p in _sorted(m.owned)],
                    "revoking": [
                        [p.topic, p.partition, m.revoking[p].generation, m.revoking[p].deadline_ms]
                        for p in _sorted(m.revoking)
                    ],
                }
                for m in self.members()
            ],
        }

    @classmethod
    def from_snapshot(
        cls, snapshot: Mapping[str, Any], limits: StreamLimits | None = None
    ) -> StreamGroup:
        assert snapshot["version"] == SNAPSHOT_VERSION, snapshot["version"]
        group = cls(limits)
        group.generation = int(snapshot["generation"])
        group._partition_counts = {str(t): int(c) for t, c in snapshot["partition_counts"]}
        for m in snapshot["members"]:
            previous = m["previous_generation"]
            group._members[str(m["member_id"])] = Member(
                member_id=str(m["member_id"]),
                topics=frozenset(str(t) for t in m["topics"]),
                session_timeout_ms=int(m["session_timeout_ms"]),
                rebalance_timeout_ms=int(m["rebalance_timeout_ms"]),
                generation=int(m["generation"]),
                previous_generation=None if previous is None else int(previous),
                target=frozenset(TopicPartition(str(t), int(p)) for t, p in m["target"]),
                owned=frozenset(TopicPartition(str(t), int(p)) for t, p in m["owned"]),
                revoking={
                    TopicPartition(str(t), int(p)): Revocation(int(g), int(d))
                    for t, p, g, d in m["revoking"]
                },
            )
        group.check_invariants()
        return group

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StreamGroup):
            return NotImplemented
        return self.to_snapshot() == other.to_snapshot()

    __hash__ = None  # type: ignore[assignment]

    # --- invariants ---

    def check_invariants(self) -> None:
        """Asserts what every applied command must leave true (cheap: O(members + partitions))."""
        assert len(self._members) <= self.limits.group_members_max
        subscribed = {t for m in self._members.values() for t in m.topics}
        assert set(self._partition_counts) <= subscribed, "a count of an unsubscribed topic"
        targeted: set[TopicPartition] = set()
        busy: set[TopicPartition] = set()
        for member in self.members():
            assert member.generation <= self.generation
            assert member.previous_generation is None or (
                member.previous_generation < member.generation
            )
            for p in member.target:
                assert p.topic in member.topics, f"{member.member_id}: {p} not subscribed"
                assert 0 <= p.partition < self._partition_counts.get(p.topic, 0)
                assert p not in targeted, f"{p} in two targets"
                targeted.add(p)
            assert member.owned <= member.target, f"{member.member_id} owns beyond its target"
            assert not member.owned & member.revoking.keys()
            for revocation in member.revoking.values():
                assert 0 < revocation.generation <= member.generation
            for p in (*member.owned, *member.revoking):
                assert p not in busy, f"{p} owned by two members"
                busy.add(p)
        expected = {
            TopicPartition(t, i)
            for t, count in self._partition_counts.items()
            for i in range(count)
        }
        assert targeted == expected, "the target does not cover the subscribed partitions"
        # Balanced: per topic, its subscribers' shares differ by at most one.
        shares: dict[tuple[str, str], int] = dict.fromkeys(
            ((t, m.member_id) for m in self._members.values() for t in m.topics), 0
        )
        for member in self._members.values():
            for p in member.target:
                shares[p.topic, member.member_id] += 1
        for topic in subscribed:
            counts = [n for (t, _), n in shares.items() if t == topic]
            assert max(counts) - min(counts) <= 1, f"{topic}: unbalanced shares {counts}"


@dataclass(slots=True)
class _Plan:
    """What one applied command changed, turned into instructions at the end."""

    changed: set[str] = dataclasses.field(default_factory=set)
    joined: set[str] = dataclasses.field(default_factory=set)
    reconnected: set[str] = dataclasses.field(default_factory=set)
    stopped: dict[str, frozenset[TopicPartition]] = dataclasses.field(default_factory=dict)
    started: dict[str, set[TopicPartition]] = dataclasses.field(default_factory=dict)
    removed: list[tuple[Member, RemovedBecause]] = dataclasses.field(default_factory=list)
    refused: list[JoinRefused] = dataclasses.field(default_factory=list)

    def instructions(self, group: StreamGroup) -> tuple[Instruction, ...]:
        # Every stop before any start, so no partition is ever delivered to
        # two streams, whatever order the serving nodes act in.
        out: list[Instruction] = list(self.refused)
        for member, because in self.removed:
            if member.owned:
                out.append(StopDelivery(member.member_id, _sorted(member.owned)))
            out.append(MemberRemoved(member.member_id, because))
        for member_id in sorted(self.stopped):
            if self.stopped[member_id]:
                out.append(StopDelivery(member_id, _sorted(self.stopped[member_id])))
        told = [m for m in (group.member(i) for i in sorted(self.changed | self.reconnected)) if m]
        for member in told:
            out.append(Assignment(member.member_id, member.generation, _sorted(member.owned)))
        for member in told:
            member_id = member.member_id
            # A reconnected member's new stream starts everything it owns.
            starting = (
                member.owned
                if member_id in self.reconnected
                else self.started.get(member_id, set())
            )
            if starting:
                out.append(StartDelivery(member_id, _sorted(starting)))
        return tuple(out)
