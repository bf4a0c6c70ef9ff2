"""The topic registry: names, partition counts, configs and their Raft group ids.

On a single node the registry lives in the storage's durable meta store.
The cluster issue moves it into the controller's replicated state machine
(DESIGN §5); callers only see `TopicRegistry`, so that move stays local.

Each partition owns a group id (u32), the key prefix of its log in LMDB.
Group ids are never reused, so a topic deleted and created again under the
same name starts with empty logs and no stale consumer offsets.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import struct

import grpc

from weir.cluster.storage import MetaStore, NodeStorage
from weir.server.config import NodeConfig
from weir.server.errors import BrokerError, invalid, topic_not_found
from weir.server.naming import check_topic_name

TOPIC_NS = "topic"
SEQ_NS = "seq"
_GROUP_SEQ_KEY = b"group"
# Group 0 is the controller's in the cluster design (DESIGN §5).
_FIRST_PARTITION_GROUP = 1
UNLIMITED = -1


@dataclasses.dataclass(frozen=True, slots=True)
class TopicConfig:
    retention_bytes: int = UNLIMITED
    retention_ms: int = UNLIMITED
    record_bytes_max: int = 1024 * 1024


@dataclasses.dataclass(frozen=True, slots=True)
class Topic:
    name: str
    group_ids: tuple[int, ...]
    replication_factor: int
    config: TopicConfig
    deleting: bool = False

    @property
    def partition_count(self) -> int:
        return len(self.group_ids)

    def group_id(self, partition: int) -> int:
        if not 0 <= partition < len(self.group_ids):
            raise invalid(
                "PARTITION_OUT_OF_RANGE",
                f"topic {self.name!r} has partitions 0..{len(self.group_ids) - 1}, not {partition}",
                topic=self.name,
                partition=partition,
                partition_count=len(self.group_ids),
            )
        return self.group_ids[partition]

    def encode(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes) -> Topic:
        data = json.loads(raw)
        return cls(
            name=data["name"],
            group_ids=tuple(data["group_ids"]),
            replication_factor=data["replication_factor"],
            config=TopicConfig(**data["config"]),
            deleting=data.get("deleting", False),
        )


@dataclasses.dataclass(frozen=True, slots=True)
class ConfigPatch:
    """A partial TopicConfig: None leaves a field as it is."""

    retention_bytes: int | None = None
    retention_ms: int | None = None
    record_bytes_max: int | None = None


class TopicRegistry:
    """Creates, deletes and looks up topics. All changes are durable before they are visible."""

    def __init__(self, storage: NodeStorage, config: NodeConfig) -> None:
        self._storage = storage
        self._meta: MetaStore = storage.meta
        self._config = config
        self._topics: dict[str, Topic] = {}
        # Changes are rare; one lock keeps create/delete/update linear.
        self._lock = asyncio.Lock()

    async def load(self) -> None:
        """Read every topic; finish deletions a crash interrupted."""
        for _, raw in self._meta.scan(TOPIC_NS):
            topic = Topic.decode(raw)
            self._topics[topic.name] = topic
        for topic in [t for t in self._topics.values() if t.deleting]:
            await self._finish_delete(topic)

    def get(self, name: str) -> Topic:
        check_topic_name(name)
        topic = self._topics.get(name)
        if topic is None or topic.deleting:
            raise topic_not_found(name)
        return topic

    def all(self) -> list[Topic]:
        return sorted((t for t in self._topics.values() if not t.deleting), key=lambda t: t.name)

    def apply_patch(self, base: TopicConfig, patch: ConfigPatch) -> TopicConfig:
        merged = dataclasses.replace(
            base,
            **{k: v for k, v in dataclasses.asdict(patch).items() if v is not None},
        )
        for name in ("retention_bytes", "retention_ms"):
            value = getattr(merged, name)
            if value < UNLIMITED or value == 0:
                raise invalid(
                    "INVALID_CONFIG", f"{name} must be positive or -1 (unlimited)", field=name
                )
        limit = self._config.record_bytes_max_limit
        if not 1 <= merged.record_bytes_max <= limit:
            raise invalid(
                "INVALID_CONFIG",
                f"record_bytes_max must be between 1 and {limit}",
                field="record_bytes_max",
                limit=limit,
            )
        return merged

    async def create(
        self, name: str, partition_count: int, replication_factor: int, patch: ConfigPatch
    ) -> Topic:
        check_topic_name(name)
        if not 1 <= partition_count <= self._config.partitions_max:
            raise invalid(
                "INVALID_PARTITION_COUNT",
                f"partition_count must be between 1 and {self._config.partitions_max}",
                limit=self._config.partitions_max,
            )
        # One node holds one copy. Asking for more than the cluster can
        # place is refused, as Kafka does, rather than silently weakened.
        if replication_factor not in (0, 1):
            raise invalid(
                "INVALID_REPLICATION_FACTOR",
                f"replication_factor {replication_factor} exceeds the cluster size 1",
                cluster_size=1,
            )
        base = TopicConfig(record_bytes_max=self._config.record_bytes_max_default)
        config = self.apply_patch(base, patch)
        async with self._lock:
            if name in self._topics:
                raise BrokerError(
                    grpc.StatusCode.ALREADY_EXISTS,
                    "TOPIC_EXISTS",
                    f"topic {name!r} already exists",
                    {"topic": name},
                )
            if len(self._topics) >= self._config.topics_max:
                raise BrokerError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    "TOO_MANY_TOPICS",
                    f"this node holds at most {self._config.topics_max} topics",
                    {"limit": self._config.topics_max},
                )
            first = self._next_group_id()
            topic = Topic(
                name=name,
                group_ids=tuple(range(first, first + partition_count)),
                replication_factor=1,
                config=config,
            )
            await self._meta.write(
                puts=[
                    (TOPIC_NS, name.encode(), topic.encode()),
                    (SEQ_NS, _GROUP_SEQ_KEY, struct.pack(">I", first + partition_count)),
                ]
            )
            self._topics[name] = topic
            return topic

    async def update_config(self, name: str, patch: ConfigPatch) -> Topic:
        async with self._lock:
            topic = self.get(name)
            updated = dataclasses.replace(topic, config=self.apply_patch(topic.config, patch))
            await self._meta.write(puts=[(TOPIC_NS, name.encode(), updated.encode())])
            self._topics[name] = updated
            return updated

    async def delete(self, name: str) -> None:
        async with self._lock:
            topic = self.get(name)
            # Mark first, so a crash mid-way resumes the deletion on restart
            # instead of leaving logs that no topic owns.
            marked = dataclasses.replace(topic, deleting=True)
            await self._meta.write(puts=[(TOPIC_NS, name.encode(), marked.encode())])
            self._topics[name] = marked
            await self._finish_delete(marked)

    async def _finish_delete(self, topic: Topic) -> None:
        for group_id in topic.group_ids:
            await self._storage.drop_partition_log(group_id)
        await self._meta.write(deletes=[(TOPIC_NS, topic.name.encode())])
        self._topics.pop(topic.name, None)

    def _next_group_id(self) -> int:
        raw = self._meta.get(SEQ_NS, _GROUP_SEQ_KEY)
        return _FIRST_PARTITION_GROUP if raw is None else int(struct.unpack(">I", raw)[0])
