"""The controller's state machine (Raft group 0): every node applies the same commands.

`ControllerState.apply(command)` is the only way the state changes. It is
deterministic (no I/O, clock or randomness; placement is computed from the
state alone), validates completely before it changes anything, and answers
either the created or changed value or a typed `ControllerError` after
which the state is exactly as before. Each command that changes something
raises `version` by one, so readers (reconcile, admin answers) can tell
whether there is anything new.

Group ids come from `next_group_id`, which only grows: group 0 is the
controller's, partitions start at 1, and an id is never handed out twice,
so a topic deleted and created again under the same name starts with empty
logs, and a lagging replica can tell a removed group from one it has not
heard of yet.

Deleting a topic is two steps, as on the single node: `DeleteTopic` frees
the name at once and records, per partition, the replicas that still hold
data; each node drops its data and proposes `ConfirmDrops`; the topic is
forgotten when no replica holds anything. Until then it counts against
`topics_max` and its partitions against `partitions_total_max`.
"""

from __future__ import annotations

import dataclasses

from weir.cluster.controller.commands import (
    AddPartitions,
    AllocateProducerIds,
    Command,
    ConfirmDrops,
    CoordinatorGroups,
    CreateCoordinatorGroups,
    CreateTopic,
    DeleteTopic,
    Done,
    InitNamedProducer,
    ProducerIdBlock,
    ProducerIdentity,
    RegisterNode,
    Result,
    Retired,
    SetLimits,
    UpdateTopicConfig,
)
from weir.cluster.controller.errors import (
    ControllerError,
    InvalidCoordinatorGroups,
    InvalidNode,
    InvalidPartitionCount,
    InvalidProducerName,
    InvalidReplicationFactor,
    NoNodes,
    TooManyNodes,
    TooManyPartitions,
    TooManyProducerNames,
    TooManyTopics,
    TopicExists,
    TopicNotFound,
)
from weir.cluster.controller.model import (
    ADDRESS_CHARS_MAX,
    FIRST_PARTITION_GROUP,
    GROUP_ID_MAX,
    NODE_ID_MAX,
    REPLICATION_FACTOR_DEFAULT,
    DeletingTopic,
    GroupId,
    Limits,
    NodeId,
    NodeInfo,
    Partition,
    Topic,
    check_config,
    check_topic_name,
    merge_config,
)
from weir.cluster.controller.placement import place_partitions

# Producer ids: 0 means "not idempotent" on the wire, so ids start at 1 and
# stay below 2**63 (the storage and most languages' signed 64-bit integers).
FIRST_PRODUCER_ID = 1
PRODUCER_ID_MAX = 2**63 - 1
PRODUCER_EPOCH_MAX = 2**32 - 1
# A block is at most this many ids; named producers at most this many (each
# one row of group 0's state, kept forever like Kafka's transactional ids
# until expiry, which Weir does not have yet).
PRODUCER_ID_BLOCK_MAX = 100_000
PRODUCER_NAMES_MAX = 100_000
PRODUCER_NAME_CHARS_MAX = 255
# Coordinator groups (docs/groups.md): fixed when the cluster is created.
COORDINATOR_GROUPS_DEFAULT = 6
COORDINATOR_GROUPS_MAX = 1024


def check_producer_name(name: str) -> str | None:
    """Why `name` is not a valid producer name, or None."""
    if not 1 <= len(name) <= PRODUCER_NAME_CHARS_MAX:
        return f"a producer name has 1 to {PRODUCER_NAME_CHARS_MAX} characters"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        return "a producer name has no control characters"
    return None


class ControllerState:
    """Nodes, topics, deleted topics still being dropped, coordinator groups and limits."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.version = 0
        self.next_group_id: GroupId = FIRST_PARTITION_GROUP
        self.limits = limits or Limits()
        self._nodes: dict[NodeId, NodeInfo] = {}
        self._topics: dict[str, Topic] = {}
        # Keyed by the deleted topic's first group id, unique forever.
        self._deleting: dict[GroupId, DeletingTopic] = {}
        # Coordinator i is _coordinators[i]; empty until CreateCoordinatorGroups.
        self._coordinators: tuple[Partition, ...] = ()
        # Derived (never encoded): the coordinators' group ids.
        self._coordinator_ids: frozenset[GroupId] = frozenset()
        self.next_producer_id = FIRST_PRODUCER_ID
        # Producer name -> (producer id, epoch).
        self._producer_names: dict[str, tuple[int, int]] = {}

    @classmethod
    def build(
        cls,
        *,
        version: int,
        next_group_id: GroupId,
        limits: Limits,
        nodes: tuple[NodeInfo, ...],
        topics: tuple[Topic, ...],
        deleting: tuple[DeletingTopic, ...],
        coordinator_groups: tuple[Partition, ...] = (),
        next_producer_id: int = FIRST_PRODUCER_ID,
        producer_names: tuple[tuple[str, int, int], ...] = (),
    ) -> ControllerState:
        """A state from its parts (a decoded snapshot); asserts its invariants."""
        state = cls(limits)
        state.version = version
        state.next_group_id = next_group_id
        state._nodes = {n.node_id: n for n in nodes}
        state._topics = {t.name: t for t in topics}
        state._deleting = {d.key: d for d in deleting}
        state._set_coordinators(coordinator_groups)
        state.next_producer_id = max(FIRST_PRODUCER_ID, next_producer_id)
        state._producer_names = {name: (pid, epoch) for name, pid, epoch in producer_names}
        state.check_invariants()
        return state

    # -- reads ---------------------------------------------------------------

    def nodes(self) -> tuple[NodeInfo, ...]:
        return tuple(self._nodes[n] for n in sorted(self._nodes))

    def node(self, node_id: NodeId) -> NodeInfo | None:
        return self._nodes.get(node_id)

    def topics(self) -> tuple[Topic, ...]:
        return tuple(self._topics[name] for name in sorted(self._topics))

    def topic(self, name: str) -> Topic | None:
        return self._topics.get(name)

    def deleting(self) -> tuple[DeletingTopic, ...]:
        return tuple(self._deleting[key] for key in sorted(self._deleting))

    def coordinator_groups(self) -> tuple[Partition, ...]:
        """The coordinator groups in coordinator order (empty before they are created)."""
        return self._coordinators

    def is_coordinator_group(self, group_id: GroupId) -> bool:
        return group_id in self._coordinator_ids

    def live_partition_ids(self) -> frozenset[GroupId]:
        """Group ids of live topics' partitions (whose committed offsets mean something)."""
        return frozenset(p.group_id for t in self._topics.values() for p in t.partitions)

    def producer_names(self) -> tuple[tuple[str, int, int], ...]:
        """(name, producer id, epoch) of every named producer, by name."""
        return tuple((n, pid, e) for n, (pid, e) in sorted(self._producer_names.items()))

    def partitions(self) -> tuple[Partition, ...]:
        """Every group that should be running: live topics' partitions and coordinator groups.

        Sorted by group id. These are the groups placement counts and leader
        balancing balances; deleted topics' groups are not among them.
        """
        groups = [p for t in self._topics.values() for p in t.partitions]
        groups.extend(self._coordinators)
        return tuple(sorted(groups, key=lambda p: p.group_id))

    def partition_count_total(self) -> int:
        """Partitions that exist anywhere, deleted ones still being dropped included."""
        live = sum(t.partition_count for t in self._topics.values())
        dropping = sum(d.topic.partition_count for d in self._deleting.values())
        return live + dropping + len(self._coordinators)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ControllerState):
            return NotImplemented
        return self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]

    def _key(self) -> tuple[object, ...]:
        return (
            self.version,
            self.next_group_id,
            self.limits,
            self.nodes(),
            self.topics(),
            self.deleting(),
            self.coordinator_groups(),
            self.next_producer_id,
            self.producer_names(),
        )

    def __repr__(self) -> str:
        return (
            f"ControllerState(version={self.version}, nodes={len(self._nodes)}, "
            f"topics={len(self._topics)}, deleting={len(self._deleting)}, "
            f"next_group_id={self.next_group_id})"
        )

    # -- the state machine ---------------------------------------------------

    def apply(self, command: Command) -> Result:
        """Apply one committed command; an error leaves the state unchanged."""
        before = self.version
        match command:
            case RegisterNode():
                result: Result = self._register_node(command)
            case CreateTopic():
                result = self._create_topic(command)
            case DeleteTopic():
                result = self._delete_topic(command)
            case AddPartitions():
                result = self._add_partitions(command)
            case UpdateTopicConfig():
                result = self._update_topic_config(command)
            case ConfirmDrops():
                result = self._confirm_drops(command)
            case CreateCoordinatorGroups():
                result = self._create_coordinator_groups(command)
            case SetLimits():
                result = self._set_limits(command)
            case Retired():
                result = Done()
            case AllocateProducerIds():
                result = self._allocate_producer_ids(command)
            case InitNamedProducer():
                result = self._init_named_producer(command)
            case _:
                raise AssertionError(f"unknown controller command {command!r}")
        assert self.version in (before, before + 1)
        assert not (isinstance(result, ControllerError) and self.version != before)
        return result

    def _register_node(self, command: RegisterNode) -> Result:
        node = command.node
        if not 1 <= node.node_id <= NODE_ID_MAX:
            return InvalidNode.of(f"node id must be between 1 and {NODE_ID_MAX}")
        address = node.address
        if not address or len(address) > ADDRESS_CHARS_MAX or not address.isprintable():
            return InvalidNode.of(
                f"a node's address is 1 to {ADDRESS_CHARS_MAX} printable characters",
                node_id=node.node_id,
            )
        known = self._nodes.get(node.node_id)
        if known == node:
            return node
        if known is None and len(self._nodes) >= self.limits.nodes_max:
            return TooManyNodes.of(
                f"the cluster has at most {self.limits.nodes_max} nodes",
                limit=self.limits.nodes_max,
            )
        self._nodes[node.node_id] = node
        self.version += 1
        return node

    def _replication_factor(self, asked: int) -> int | ControllerError:
        size = len(self._nodes)
        if size == 0:
            return NoNodes.of("no node has registered with the controller yet")
        if asked == 0:
            return min(REPLICATION_FACTOR_DEFAULT, size)
        if not 1 <= asked <= size:
            # Refused, as Kafka does, rather than silently weakened.
            return InvalidReplicationFactor.of(
                f"replication_factor {asked} exceeds the cluster size {size}",
                cluster_size=size,
            )
        return asked

    def _check_new_partitions(self, count: int) -> ControllerError | None:
        total = self.partition_count_total() + count
        if total > self.limits.partitions_total_max:
            return TooManyPartitions.of(
                f"the cluster holds at most {self.limits.partitions_total_max} partitions, "
                "counting those of deleted topics whose data is still being dropped",
                limit=self.limits.partitions_total_max,
            )
        if self.next_group_id + count - 1 > GROUP_ID_MAX:
            return TooManyPartitions.of("the cluster has used every group id")
        return None

    def _place(self, count: int, replication_factor: int) -> tuple[Partition, ...]:
        first = self.next_group_id
        replicas = place_partitions(
            sorted(self._nodes), self.partitions(), first, count, replication_factor
        )
        self.next_group_id = first + count
        return tuple(Partition(first + i, r) for i, r in enumerate(replicas))

    def _create_topic(self, command: CreateTopic) -> Result:
        if (error := check_topic_name(command.name)) is not None:
            return error
        limit = self.limits.partitions_max
        if not 1 <= command.partition_count <= limit:
            return InvalidPartitionCount.of(
                f"partition_count must be between 1 and {limit}", limit=limit
            )
        replication_factor = self._replication_factor(command.replication_factor)
        if isinstance(replication_factor, ControllerError):
            return replication_factor
        if (error := check_config(command.config, self.limits, command.name)) is not None:
            return error
        if command.name in self._topics:
            return TopicExists.of(f"topic {command.name!r} already exists", topic=command.name)
        if len(self._topics) + len(self._deleting) >= self.limits.topics_max:
            return TooManyTopics.of(
                f"the cluster holds at most {self.limits.topics_max} topics, counting "
                f"{len(self._deleting)} deleted topics whose data is still being dropped",
                limit=self.limits.topics_max,
                pending_deletes=len(self._deleting),
            )
        if (error := self._check_new_partitions(command.partition_count)) is not None:
            return error
        topic = Topic(
            name=command.name,
            config=command.config,
            replication_factor=replication_factor,
            partitions=self._place(command.partition_count, replication_factor),
        )
        self._topics[topic.name] = topic
        self.version += 1
        return topic

    def _delete_topic(self, command: DeleteTopic) -> Result:
        topic = self._topics.get(command.name)
        if topic is None:
            return TopicNotFound.of(f"topic {command.name!r} does not exist", topic=command.name)
        pending = tuple((p.group_id, frozenset(p.replicas)) for p in topic.partitions)
        deleting = DeletingTopic(topic, pending)
        assert deleting.key not in self._deleting, "group ids are never reused"
        del self._topics[topic.name]
        self._deleting[deleting.key] = deleting
        self.version += 1
        return topic

    def _add_partitions(self, command: AddPartitions) -> Result:
        topic = self._topics.get(command.name)
        if topic is None:
            return TopicNotFound.of(f"topic {command.name!r} does not exist", topic=command.name)
        limit = self.limits.partitions_max
        if not topic.partition_count < command.partition_count <= limit:
            return InvalidPartitionCount.of(
                f"partition_count must be above {topic.partition_count} (the current count) "
                f"and at most {limit}",
                limit=limit,
                partition_count=topic.partition_count,
            )
        added = command.partition_count - topic.partition_count
        if (error := self._check_new_partitions(added)) is not None:
            return error
        # Nodes are never removed, so the topic's factor still fits the cluster.
        assert topic.replication_factor <= len(self._nodes)
        grown = dataclasses.replace(
            topic, partitions=topic.partitions + self._place(added, topic.replication_factor)
        )
        self._topics[topic.name] = grown
        self.version += 1
        return grown

    def _update_topic_config(self, command: UpdateTopicConfig) -> Result:
        topic = self._topics.get(command.name)
        if topic is None:
            return TopicNotFound.of(f"topic {command.name!r} does not exist", topic=command.name)
        config = merge_config(topic.config, command.patch)
        if (error := check_config(config, self.limits, topic.name)) is not None:
            return error
        if config == topic.config:
            return topic
        updated = dataclasses.replace(topic, config=config)
        self._topics[topic.name] = updated
        self.version += 1
        return updated

    def _confirm_drops(self, command: ConfirmDrops) -> Result:
        # Idempotent: a confirmation for a group that is not pending on that
        # node (repeated, or for a topic already forgotten) changes nothing.
        dropped = frozenset(command.group_ids)
        changed = False
        for key in sorted(self._deleting):
            deleting = self._deleting[key]
            pending = []
            for group_id, nodes in deleting.pending:
                if group_id in dropped and command.node_id in nodes:
                    nodes = nodes - {command.node_id}
                if nodes:
                    pending.append((group_id, nodes))
            if tuple(pending) == deleting.pending:
                continue
            changed = True
            if pending:
                self._deleting[key] = DeletingTopic(deleting.topic, tuple(pending))
            else:
                del self._deleting[key]
        if changed:
            self.version += 1
        return Done()

    def _create_coordinator_groups(self, command: CreateCoordinatorGroups) -> Result:
        if self._coordinators:
            # Idempotent: the count is fixed by the first creation.
            return CoordinatorGroups(self._coordinators)
        if not 1 <= command.count <= COORDINATOR_GROUPS_MAX:
            return InvalidCoordinatorGroups.of(
                f"coordinator_groups must be between 1 and {COORDINATOR_GROUPS_MAX}",
                limit=COORDINATOR_GROUPS_MAX,
            )
        # Three replicas, or the cluster's size if smaller, like a topic's default.
        replication_factor = self._replication_factor(0)
        if isinstance(replication_factor, ControllerError):
            return replication_factor
        if (error := self._check_new_partitions(command.count)) is not None:
            return error
        self._set_coordinators(self._place(command.count, replication_factor))
        self.version += 1
        return CoordinatorGroups(self._coordinators)

    def _set_coordinators(self, groups: tuple[Partition, ...]) -> None:
        self._coordinators = tuple(groups)
        self._coordinator_ids = frozenset(p.group_id for p in groups)

    def _set_limits(self, command: SetLimits) -> Result:
        if (error := command.limits.check()) is not None:
            return error
        if command.limits != self.limits:
            self.limits = command.limits
            self.version += 1
        return Done()

    # -- invariants ----------------------------------------------------------

    def _allocate_producer_ids(self, command: AllocateProducerIds) -> Result:
        count = min(max(1, command.count), PRODUCER_ID_BLOCK_MAX)
        first = self.next_producer_id
        assert first + count - 1 <= PRODUCER_ID_MAX, "producer ids exhausted"
        self.next_producer_id = first + count
        self.version += 1
        return ProducerIdBlock(first, count)

    def _init_named_producer(self, command: InitNamedProducer) -> Result:
        name = command.producer_name
        problem = check_producer_name(name)
        if problem is not None:
            return InvalidProducerName.of(problem)
        known = self._producer_names.get(name)
        if known is None and len(self._producer_names) >= PRODUCER_NAMES_MAX:
            return TooManyProducerNames.of(
                f"the cluster holds {PRODUCER_NAMES_MAX} producer names already"
            )
        if known is None or known[1] >= PRODUCER_EPOCH_MAX:
            # A new name, or one whose epochs ran out: a new id at epoch 0.
            identity = (self.next_producer_id, 0)
            self.next_producer_id += 1
        else:
            identity = (known[0], known[1] + 1)
        self._producer_names[name] = identity
        self.version += 1
        return ProducerIdentity(*identity)

    def check_invariants(self) -> None:
        """Asserts what every reachable state satisfies; tests call it after each command."""
        assert self.version >= 0
        assert FIRST_PARTITION_GROUP <= self.next_group_id <= GROUP_ID_MAX + 1
        assert self.limits.check() is None
        for node_id, node in self._nodes.items():
            assert node.node_id == node_id and 1 <= node_id <= NODE_ID_MAX
        seen: set[GroupId] = set()

        def claim(group_id: GroupId) -> None:
            assert FIRST_PARTITION_GROUP <= group_id < self.next_group_id, group_id
            assert group_id not in seen, f"group {group_id} belongs to two partitions"
            seen.add(group_id)

        for name, topic in self._topics.items():
            assert topic.name == name and check_topic_name(name) is None
            assert 1 <= topic.replication_factor <= len(self._nodes)
            assert topic.partitions
            for partition in topic.partitions:
                claim(partition.group_id)
                assert len(partition.replicas) == topic.replication_factor
                assert all(n in self._nodes for n in partition.replicas)
        for key, deleting in self._deleting.items():
            assert deleting.key == key and deleting.pending
            replicas = {p.group_id: p.replicas for p in deleting.topic.partitions}
            for partition in deleting.topic.partitions:
                claim(partition.group_id)
            for group_id, nodes in deleting.pending:
                assert nodes and nodes <= frozenset(replicas[group_id])
        assert len(self._coordinators) <= COORDINATOR_GROUPS_MAX
        for partition in self._coordinators:
            claim(partition.group_id)
            assert all(n in self._nodes for n in partition.replicas)
        assert self._coordinator_ids == {p.group_id for p in self._coordinators}
        assert FIRST_PRODUCER_ID <= self.next_producer_id <= PRODUCER_ID_MAX + 1
        for pid, _ in self._producer_names.values():
            assert FIRST_PRODUCER_ID <= pid < self.next_producer_id
