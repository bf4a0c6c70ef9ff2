"""Seeded random command sequences for a stream group, checked after every command.

Each sequence mixes joins (new members and reconnects, random subscriptions
over three topics), leaves, session expiries found by `Sessions`, acks
(current and stale generations), partition count changes (growth and
deletion) and ticks, with time moving in random steps. After every command:
the state's own invariants, no partition with two members (owned or being
revoked), no partition delivered to two streams according to the
instructions, generations only grow, and sticky targets (a join, a leave or
more partitions never move a partition between two members that stay).
When the commands stop and every rebalance timeout has passed, every
partition of a subscribed topic is owned by exactly one member with counts
per topic within one. Replaying the rest of the commands on a group
restored from a snapshot taken halfway gives the same instructions and the
same state.

A second family of sequences plays what lies between the state machine
and the clients (issue 8): each member's link keeps only its latest
assignment (changes merge until the serving node takes them), the serving
session acks on the member's behalf what `MemberAcks` allows, and each
client acks only an assignment that stops something, later, as the SDK
does. No time passes, so no revocation ever times out: safety (no
partition delivered on two streams as the sessions see them) holds after
every step, and once the links are taken and the clients acked, the group
is settled without a single `Tick`.

A failure names its seed; `WEIR_SEED=<seed>` runs that sequence alone.
"""

from __future__ import annotations

import os
import random
from collections import Counter

import pytest

from tests.unit.coordinator.stream_helpers import SESSION_MS, join, no_partition_twice
from weir.cluster.coordinator import (
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
    Sessions,
    StartDelivery,
    StopDelivery,
    StreamGroup,
    StreamLimits,
    Tick,
    TopicPartition,
)
from weir.cluster.coordinator.member_acks import MemberAcks

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]

SEQUENCES = 2_000
COMMANDS_MAX = 30
MEMBER_IDS = [f"m{i}" for i in range(7)]
TOPICS = ["t0", "t1", "t2"]
REBALANCE_MS_CHOICES = [1_000, 3_000, 8_000]
LIMITS = StreamLimits(group_members_max=5)


class Delivery:
    """What the serving nodes deliver to which member stream, following the instructions."""

    def __init__(self) -> None:
        self.streams: dict[str, set[TopicPartition]] = {}

    def follow(self, instructions: tuple[Instruction, ...]) -> None:
        for i in instructions:
            if isinstance(i, StopDelivery):
                stream = self.streams.setdefault(i.member_id, set())
                assert set(i.partitions) <= stream, f"{i} stops what it does not deliver"
                stream.difference_update(i.partitions)
            elif isinstance(i, StartDelivery):
                self.streams.setdefault(i.member_id, set()).update(i.partitions)
                delivered = Counter(p for s in self.streams.values() for p in s)
                twice = [p for p, n in delivered.items() if n > 1]
                assert not twice, f"delivered to two streams: {twice}"
            elif isinstance(i, MemberRemoved):
                assert not self.streams.pop(i.member_id, set()), "removed while delivering"


def random_command(
    rng: random.Random,
    group: StreamGroup,
    sessions: Sessions,
    counts: dict[str, int],
    now_ms: int,
) -> list[Command]:
    members = [m.member_id for m in group.members()]
    kind = rng.choices(
        ["join", "leave", "expire", "ack", "count", "tick"], weights=[6, 2, 2, 6, 1, 3]
    )[0]
    if kind == "join" or not members:
        member_id = rng.choice(MEMBER_IDS)
        topics = rng.sample(TOPICS, rng.randint(1, len(TOPICS)))
        return [
            join(
                now_ms,
                member_id,
                {t: counts[t] for t in topics},
                rebalance_ms=rng.choice(REBALANCE_MS_CHOICES),
            )
        ]
    if kind == "leave":
        return [Leave(now_ms, rng.choice(MEMBER_IDS))]
    if kind == "expire":
        for member_id in members:
            if rng.random() < 0.7:
                sessions.seen(member_id, now_ms)
        return [Expire(now_ms, m) for m in sessions.expired(now_ms)]
    if kind == "ack":
        member = group.member(rng.choice(members))
        assert member is not None
        generation = member.generation - rng.choice([0, 0, 0, 1, 2])
        return [AssignmentAck(now_ms, member.member_id, generation)]
    if kind == "count":
        topic = rng.choice(TOPICS)
        counts[topic] = 0 if rng.random() < 0.1 else counts[topic] + rng.randint(1, 4)
        return [PartitionCount(now_ms, topic, counts[topic])]
    return [Tick(now_ms)]


def check_sticky(
    before: dict[str, frozenset[TopicPartition]],
    counts_before: dict[str, int],
    command: Command,
    after: StreamGroup,
) -> None:
    """A partition never moves between two members that were in the group before and after."""
    for member_id, old in before.items():
        new = after.member(member_id)
        if new is None:
            continue
        if isinstance(command, Join) and command.member_id not in before:
            assert new.target <= old, f"{member_id} gained on another member's join"
        elif isinstance(command, Leave | Expire):
            assert new.target >= old, f"{member_id} lost on another member's leaving"
        elif isinstance(command, PartitionCount) and command.partition_count > counts_before.get(
            command.topic, 0
        ):
            assert new.target >= old, f"{member_id} lost on more partitions"


def check_settled(group: StreamGroup, counts: dict[str, int]) -> None:
    subscribed = {t for m in group.members() for t in m.topics}
    expected = {TopicPartition(t, i) for t in subscribed for i in range(counts[t])}
    owners = Counter(p for m in group.members() for p in m.owned)
    assert set(owners) == expected, "a partition of a subscribed topic has no owner"
    assert all(n == 1 for n in owners.values())
    for member in group.members():
        assert member.owned == member.target and not member.revoking
    for topic in subscribed:
        shares = [
            sum(1 for p in m.owned if p.topic == topic)
            for m in group.members()
            if topic in m.topics
        ]
        assert max(shares) - min(shares) <= 1, f"{topic}: {shares}"


def run_sequence(seed: int) -> None:
    rng = random.Random(seed)
    group = StreamGroup(LIMITS)
    sessions = Sessions()
    delivery = Delivery()
    counts = {t: rng.randint(1, 9) for t in TOPICS}
    now_ms = 0
    log: list[tuple[Command, tuple[Instruction, ...]]] = []
    snapshot_at = rng.randrange(COMMANDS_MAX)
    snapshot: dict[str, object] | None = None
    while len(log) < COMMANDS_MAX:
        now_ms += rng.choice([0, 1, 100, 1_000, 4_000])
        for command in random_command(rng, group, sessions, counts, now_ms):
            if len(log) == snapshot_at:
                snapshot = group.to_snapshot()
            targets_before = {m.member_id: m.target for m in group.members()}
            counts_before = dict(group.partition_counts())
            generation_before = group.generation
            instructions = group.apply(command)
            log.append((command, instructions))
            sessions.sync(group, now_ms)
            group.check_invariants()
            no_partition_twice(group)
            delivery.follow(instructions)
            assert group.generation >= generation_before
            for i in instructions:
                if isinstance(i, Assignment):
                    assert i.generation == group.member(i.member_id).generation  # type: ignore[union-attr]
            if not any(isinstance(i, JoinRefused) for i in instructions):
                check_sticky(targets_before, counts_before, command, group)
            for member in group.members():
                assert delivery.streams.get(member.member_id, set()) == set(member.owned)
    # The commands stop; the leader proposes a tick once every timeout passed.
    now_ms += max(REBALANCE_MS_CHOICES) + SESSION_MS
    settle = Tick(now_ms)
    log.append((settle, group.apply(settle)))
    group.check_invariants()
    delivery.follow(log[-1][1])
    check_settled(group, counts)
    # A replica restored from the snapshot and given the same commands agrees.
    assert snapshot is not None
    replica = StreamGroup.from_snapshot(snapshot, LIMITS)
    for command, instructions in log[snapshot_at:]:
        assert replica.apply(command) == instructions, f"replica differs on {command}"
    assert replica.to_snapshot() == group.to_snapshot()


def seeds() -> list[int]:
    if "WEIR_SEED" in os.environ:
        return [int(os.environ["WEIR_SEED"])]
    return list(range(SEQUENCES))


def test_random_sequences_keep_the_group_safe_live_balanced_and_replayable() -> None:
    for seed in seeds():
        try:
            run_sequence(seed)
        except AssertionError as error:
            raise AssertionError(f"seed {seed} (rerun: WEIR_SEED={seed}): {error}") from error


class MemberStream:
    """A member's link (latest assignment only), its serving session and its client."""

    def __init__(self, topic: str, partition_count: int) -> None:
        self.topic = topic
        # The partitions of its topic when it subscribed: `holds_all` compares with them.
        self.all = {TopicPartition(topic, p) for p in range(partition_count)}
        self.latest: Assignment | None = None
        self.delivering: set[TopicPartition] = set()
        self.acks = MemberAcks(trusted=True)
        # The generation the client acknowledges when it gets to it (0: none),
        # once it committed what it read of these partitions.
        self.client_owes = 0
        self.uncommitted: set[TopicPartition] = set()


class MergingWorld:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.group = StreamGroup(LIMITS)
        self.counts = {t: rng.randint(1, 9) for t in TOPICS}
        self.streams: dict[str, MemberStream] = {}
        self.joined = 0

    def apply(self, command: Command) -> None:
        for i in self.group.apply(command):
            if isinstance(i, Assignment) and i.member_id in self.streams:
                self.streams[i.member_id].latest = i  # merged with what was not taken
            elif isinstance(i, MemberRemoved):
                self.streams.pop(i.member_id, None)
        self.group.check_invariants()
        no_partition_twice(self.group)

    def check_delivery(self) -> None:
        delivered = Counter(p for s in self.streams.values() for p in s.delivering)
        twice = [p for p, n in delivered.items() if n > 1]
        assert not twice, f"delivered on two streams: {twice}"
        for member_id, stream in self.streams.items():
            for other_id, other in self.streams.items():
                early = stream.delivering & other.uncommitted
                assert other_id == member_id or not early, (
                    f"{member_id} reads {early} before {other_id} committed them"
                )

    def join(self) -> None:
        member_id = f"n{self.joined}"
        self.joined += 1
        topic = self.rng.choice(TOPICS)
        self.streams[member_id] = MemberStream(topic, self.counts[topic])
        self.apply(join(0, member_id, {topic: self.counts[topic]}, rebalance_ms=300_000))
        if self.group.member(member_id) is None:
            self.streams.pop(member_id, None)  # refused: the group is full

    def take(self, member_id: str) -> None:
        """The serving session takes the link's latest assignment and tells the stream."""
        stream = self.streams[member_id]
        assignment, stream.latest = stream.latest, None
        if assignment is None:
            return
        now = set(assignment.partitions)
        stopped = stream.delivering - now
        stream.delivering = now
        if stopped:
            stream.client_owes = assignment.generation
            stream.uncommitted |= stopped
        on_behalf = stream.acks.told(
            assignment.generation, stopped=bool(stopped), holds_all=now == stream.all
        )
        if on_behalf is not None:
            self.apply(AssignmentAck(0, member_id, on_behalf))

    def client_acks(self, member_id: str) -> None:
        stream = self.streams[member_id]
        if stream.client_owes:
            generation, stream.client_owes = stream.client_owes, 0
            stream.uncommitted.clear()
            send = stream.acks.client_ack(generation)
            if send is not None:
                self.apply(AssignmentAck(0, member_id, send))

    def step(self) -> None:
        kind = self.rng.choices(["join", "leave", "take", "client"], weights=[3, 1, 5, 3])[0]
        if kind == "join" or not self.streams:
            self.join()
        elif kind == "leave":
            self.apply(Leave(0, self.rng.choice(sorted(self.streams))))
        elif kind == "take":
            self.take(self.rng.choice(sorted(self.streams)))
        else:
            self.client_acks(self.rng.choice(sorted(self.streams)))
        self.check_delivery()

    def drain(self) -> None:
        """Every link taken and every client acked, until nothing changes."""
        for _ in range(3 * LIMITS.group_members_max):
            for member_id in sorted(self.streams):
                self.take(member_id)
                self.client_acks(member_id)
                self.check_delivery()
            if all(s.latest is None and not s.client_owes for s in self.streams.values()):
                return
        raise AssertionError("the links never went quiet")


def run_merging_sequence(seed: int) -> None:
    world = MergingWorld(random.Random(seed))
    for _ in range(COMMANDS_MAX):
        world.step()
    world.drain()
    # Not one Tick was applied: every revocation was acknowledged.
    assert world.group.next_deadline_ms() is None, "a revocation waits for its timeout"
    check_settled(world.group, world.counts)
    for member_id, stream in world.streams.items():
        member = world.group.member(member_id)
        assert member is not None and stream.delivering == set(member.owned)


def test_merged_assignments_and_clients_acking_only_revocations_settle_without_timeouts() -> None:
    for seed in seeds():
        try:
            run_merging_sequence(seed)
        except AssertionError as error:
            raise AssertionError(f"seed {seed} (rerun: WEIR_SEED={seed}): {error}") from error
