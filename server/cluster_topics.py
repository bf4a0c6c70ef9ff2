"""Topics in cluster mode, backed by the controller (group 0).

`ClusterTopics` has the interface the produce, consume and admin paths use
of `TopicRegistry`: reads come from this node's applied copy of the
controller state; create, delete, config updates and added partitions are
controller proposals (`ControlProposer`), answered once this node applied
them, so a client sees its own change on the node it talks to. Topics are
handed out as the single node's `Topic` values (group ids, replication
factor, config), so the data path does not know which mode it runs in.

Committed offsets live in the coordinator groups (server/cluster_coordinator.py).

Deleted topics' data is dropped by reconcile (server/cluster_node.py), not
here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable

from weir.cluster import controller as ctl
from weir.cluster.controller.model import REPLICATION_FACTOR_DEFAULT, merge_config
from weir.server.cluster_meta import ClusterMetadata, ControlProposer
from weir.server.config import NodeConfig
from weir.server.errors import topic_not_found
from weir.server.naming import check_topic_name
from weir.server.topics import ConfigPatch, Topic, TopicConfig

# How long a topic creation with the default replication factor waits for the
# founding members to register (each does so within a second of starting).
REGISTRATION_WAIT_S = 5.0
# How long a creation waits, after it was applied here, for every new
# partition to have a leader known here, so that a producer that follows at
# once is not told NOT_LEADER with no leader to go to. Elections take about
# one election timeout (1-2 s); past the bound the topic is answered anyway.
LEADERS_WAIT_S = 5.0

WaitLed = Callable[[Iterable[int], float], Awaitable[bool]]


def topic_of(topic: ctl.Topic) -> Topic:
    config = topic.config
    return Topic(
        name=topic.name,
        group_ids=topic.group_ids,
        replication_factor=topic.replication_factor,
        config=TopicConfig(
            retention_bytes=config.retention_bytes,
            retention_ms=config.retention_ms,
            record_bytes_max=config.record_bytes_max,
            max_deliveries=config.max_deliveries,
            retry_backoff_ms_min=config.retry_backoff_ms_min,
            retry_backoff_ms_max=config.retry_backoff_ms_max,
            dead_letter_topic=config.dead_letter_topic,
        ),
    )


def _patch(patch: ConfigPatch) -> ctl.ConfigPatch:
    return ctl.ConfigPatch(
        retention_bytes=patch.retention_bytes,
        retention_ms=patch.retention_ms,
        record_bytes_max=patch.record_bytes_max,
        max_deliveries=patch.max_deliveries,
        retry_backoff_ms_min=patch.retry_backoff_ms_min,
        retry_backoff_ms_max=patch.retry_backoff_ms_max,
        dead_letter_topic=patch.dead_letter_topic,
    )


class ClusterTopics:
    """The topic registry of a clustered node: the controller's topics, as this node applied them."""

    def __init__(
        self,
        metadata: ClusterMetadata,
        proposer: ControlProposer,
        config: NodeConfig,
        wait_led: WaitLed | None = None,
    ) -> None:
        self._wait_led = wait_led
        self._metadata = metadata
        self._proposer = proposer
        self._config = config
        # Converted values, reused while the controller's value is the same object.
        self._cache: dict[str, tuple[ctl.Topic, Topic]] = {}

    def _convert(self, topic: ctl.Topic) -> Topic:
        cached = self._cache.get(topic.name)
        if cached is not None and cached[0] is topic:
            return cached[1]
        converted = topic_of(topic)
        self._cache[topic.name] = (topic, converted)
        return converted

    def get(self, name: str) -> Topic:
        check_topic_name(name)
        topic = self._metadata.state.topic(name)
        if topic is None:
            raise topic_not_found(name)
        return self._convert(topic)

    def controller_topic(self, name: str) -> ctl.Topic:
        """The controller's own value: partitions with their replicas."""
        check_topic_name(name)
        topic = self._metadata.state.topic(name)
        if topic is None:
            raise topic_not_found(name)
        return topic

    def all(self) -> list[Topic]:
        topics = self._metadata.state.topics()
        live = {t.name for t in topics}
        for name in [n for n in self._cache if n not in live]:
            del self._cache[name]
        return [self._convert(t) for t in topics]

    def is_live(self, topic: Topic) -> bool:
        current = self._metadata.state.topic(topic.name)
        return current is not None and current.group_ids[:1] == topic.group_ids[:1]

    def group_ids_in_use(self) -> set[int]:
        state = self._metadata.state
        ids = {p.group_id for p in state.partitions()}
        ids.update(p.group_id for d in state.deleting() for p in d.topic.partitions)
        return ids

    @property
    def pending_deletes(self) -> int:
        return len(self._metadata.state.deleting())

    async def create(
        self, name: str, partition_count: int, replication_factor: int, patch: ConfigPatch
    ) -> Topic:
        check_topic_name(name)
        if replication_factor == 0:
            replication_factor = min(REPLICATION_FACTOR_DEFAULT, len(self._config.peers))
        # The controller checks the factor against registered nodes; right
        # after the cluster starts some founding members may not have
        # registered yet: a default factor would get fewer copies for good,
        # an explicit one would be refused. Wait for them, bounded.
        wanted = min(replication_factor, len(self._config.peers))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(REGISTRATION_WAIT_S):
                await self._metadata.wait_for(lambda state: len(state.nodes()) >= wanted)
        base = ctl.TopicConfig(record_bytes_max=self._config.record_bytes_max_default)
        config = merge_config(base, _patch(patch))
        result = await self._proposer.propose(
            ctl.CreateTopic(name, partition_count, replication_factor, config)
        )
        assert isinstance(result, ctl.Topic), result
        if self._wait_led is not None:
            await self._wait_led(result.group_ids, LEADERS_WAIT_S)
        return self._convert(result)

    async def update_config(self, name: str, patch: ConfigPatch) -> Topic:
        check_topic_name(name)
        result = await self._proposer.propose(ctl.UpdateTopicConfig(name, _patch(patch)))
        assert isinstance(result, ctl.Topic), result
        return self._convert(result)

    async def add_partitions(self, name: str, partition_count: int) -> Topic:
        check_topic_name(name)
        result = await self._proposer.propose(ctl.AddPartitions(name, partition_count))
        assert isinstance(result, ctl.Topic), result
        if self._wait_led is not None:
            await self._wait_led(result.group_ids, LEADERS_WAIT_S)
        return self._convert(result)

    async def delete(self, name: str) -> None:
        check_topic_name(name)
        await self._proposer.propose(ctl.DeleteTopic(name))
