"""The topic registry: names, partition counts, configs and their Raft group ids.

On a single node the registry lives in the storage's durable meta store.
The cluster issue moves it into the controller's replicated state machine
(DESIGN §5); callers only see `TopicRegistry`, so that move stays local.

Each partition owns a group id (u32), the key prefix of its log in LMDB.
Group ids are never reused, so a topic deleted and created again under the
same name starts with empty logs and no stale consumer offsets.

Deleting is two steps. `delete` makes the deletion durable and visible at
once: one meta write moves the topic's row from `topic` to `topic_deleting`,
and the topic's open logs are closed, so clients see TOPIC_NOT_FOUND and
the name is free again. `drop_deleted_data`, a background task the node
owns, then drops each partition's data (storage drops a group in bounded
chunks) and its group offsets, and removes the `topic_deleting` row last.
After a crash the rows left in `topic_deleting` resume the drop; other topic
changes never wait for it.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import logging
import struct
from collections.abc import Awaitable, Callable

import grpc

from weir.cluster.controller.model import (
    DEAD_LETTER_SUFFIX,
    MAX_DELIVERIES_DEFAULT,
    RETRY_BACKOFF_MS_MAX_DEFAULT,
    RETRY_BACKOFF_MS_MIN_DEFAULT,
    check_queue_config,
)
from weir.cluster.storage import (
    LogClosedError,
    MetaStore,
    NodeStorage,
    StorageError,
    StorageFullError,
)
from weir.server.config import NodeConfig
from weir.server.errors import (
    BrokerError,
    dead_letter_topic_required,
    invalid,
    topic_not_found,
)
from weir.server.naming import TOPIC_NAME_CHARS_MAX, check_topic_name

log = logging.getLogger("weir.server.topics")

TOPIC_NS = "topic"
# Deleted topics whose data is still being dropped, keyed by their first
# group id (unique forever, unlike the name, which a new topic may take).
DELETING_NS = "topic_deleting"
SEQ_NS = "seq"
_GROUP_SEQ_KEY = b"group"
# Group 0 is the controller's in the cluster design (DESIGN §5).
_FIRST_PARTITION_GROUP = 1
UNLIMITED = -1
# How long the data drop of a deleted topic waits before trying again when
# storage is full: dropping frees space, but even a delete needs a few free
# pages in LMDB, and retention or other deletes may provide them meanwhile.
DROP_RETRY_INTERVAL_S = 1.0


@dataclasses.dataclass(frozen=True, slots=True)
class TopicConfig:
    """A topic's settings. A stored row without a field reads it as its default."""

    retention_bytes: int = UNLIMITED
    retention_ms: int = UNLIMITED
    record_bytes_max: int = 1024 * 1024
    # Queue mode (weir.v1.TopicConfig): deliveries before a record is
    # dead-lettered (0: never), the redelivery backoff bounds, and where
    # dead letters go ("" means `<topic>.dlq`, `dead_letter_topic_of`; a
    # topic name too long for that default must set it to use queue mode).
    max_deliveries: int = MAX_DELIVERIES_DEFAULT
    retry_backoff_ms_min: int = RETRY_BACKOFF_MS_MIN_DEFAULT
    retry_backoff_ms_max: int = RETRY_BACKOFF_MS_MAX_DEFAULT
    dead_letter_topic: str = ""


def dead_letter_topic_of(topic: str, config: TopicConfig) -> str:
    """The topic `topic`'s dead letters go to: its setting, or `<topic>.dlq`.

    A name of more than TOPIC_NAME_CHARS_MAX - 4 characters has no default:
    `<topic>.dlq` would be no valid topic name, and a derived one (cut, or
    hashed) would be a rule every client had to know to find its dead
    letters. Such a topic needs its `dead_letter_topic` set, as RabbitMQ,
    SQS and Kafka Connect always need theirs: FAILED_PRECONDITION
    DEAD_LETTER_TOPIC_REQUIRED (docs/groups.md "Dead letters").
    """
    if config.dead_letter_topic:
        return config.dead_letter_topic
    if len(topic) + len(DEAD_LETTER_SUFFIX) > TOPIC_NAME_CHARS_MAX:
        raise dead_letter_topic_required(topic, DEAD_LETTER_SUFFIX, TOPIC_NAME_CHARS_MAX)
    return topic + DEAD_LETTER_SUFFIX


def check_dead_letters(topic: str, config: TopicConfig) -> None:
    """Refuses queue mode on a topic that dead-letters (max_deliveries > 0) to no valid topic.

    Queue mode checks this before any record of the topic is handed out, so
    that a record never reaches its last delivery with nowhere to go (its
    dead letter would be retried for as long as the partition's queue lives).
    Creating and configuring such a topic stay allowed: a stream-mode topic
    needs no dead-letter topic.
    """
    if config.max_deliveries > 0:
        dead_letter_topic_of(topic, config)


@dataclasses.dataclass(frozen=True, slots=True)
class Topic:
    name: str
    group_ids: tuple[int, ...]
    replication_factor: int
    config: TopicConfig

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
        )


@dataclasses.dataclass(frozen=True, slots=True)
class ConfigPatch:
    """A partial TopicConfig: None leaves a field as it is."""

    retention_bytes: int | None = None
    retention_ms: int | None = None
    record_bytes_max: int | None = None
    max_deliveries: int | None = None
    retry_backoff_ms_min: int | None = None
    retry_backoff_ms_max: int | None = None
    # "" sets it back to the default, `<topic>.dlq`.
    dead_letter_topic: str | None = None


class TopicRegistry:
    """Creates, deletes and looks up topics. All changes are durable before they are visible."""

    def __init__(self, storage: NodeStorage, config: NodeConfig) -> None:
        self._storage = storage
        self._meta: MetaStore = storage.meta
        self._config = config
        self._topics: dict[str, Topic] = {}
        # Deleted topics whose data is not dropped yet, oldest delete first,
        # keyed by first group id as in DELETING_NS. They count against
        # topics_max until dropped, which bounds this map.
        self._deleting: collections.OrderedDict[int, Topic] = collections.OrderedDict()
        self._delete_queued = asyncio.Event()
        # Changes are rare; one lock keeps create/delete/update linear. Data
        # drops run outside it, so they never hold up other changes.
        self._lock = asyncio.Lock()

    async def load(self) -> None:
        """Read every topic and every deletion whose data drop is still to finish."""
        legacy: list[Topic] = []
        for _, raw in self._meta.scan(TOPIC_NS):
            topic = Topic.decode(raw)
            # Before deletes were split in two, a deleted topic kept its row
            # under its name with "deleting": true until its data was gone.
            if json.loads(raw).get("deleting", False):
                legacy.append(topic)
            else:
                self._topics[topic.name] = topic
        for _, raw in self._meta.scan(DELETING_NS):
            topic = Topic.decode(raw)
            self._deleting[topic.group_ids[0]] = topic
        for topic in legacy:
            await self._meta.write(
                deletes=[(TOPIC_NS, topic.name.encode())],
                puts=[(DELETING_NS, _deleting_key(topic), topic.encode())],
            )
            self._deleting[topic.group_ids[0]] = topic
        if self._deleting:
            self._delete_queued.set()

    def get(self, name: str) -> Topic:
        check_topic_name(name)
        topic = self._topics.get(name)
        if topic is None:
            raise topic_not_found(name)
        return topic

    def all(self) -> list[Topic]:
        return sorted(self._topics.values(), key=lambda t: t.name)

    def is_live(self, topic: Topic) -> bool:
        """Whether `topic` (maybe held by a stream since it started) still exists.

        Its config may have changed since, its partitions not: group ids are
        never reused, so the first one identifies this incarnation of the name.
        """
        current = self._topics.get(topic.name)
        return current is not None and current.group_ids[:1] == topic.group_ids[:1]

    def group_ids_in_use(self) -> set[int]:
        """Group ids of live topics and of deleted topics whose data is not dropped yet."""
        ids = {g for t in self._topics.values() for g in t.group_ids}
        ids.update(g for t in self._deleting.values() for g in t.group_ids)
        return ids

    @property
    def pending_deletes(self) -> int:
        return len(self._deleting)

    def apply_patch(self, topic: str, base: TopicConfig, patch: ConfigPatch) -> TopicConfig:
        """`base` with `patch` merged, checked as the config of topic `topic`."""
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
        # The controller's check, so both modes accept exactly the same settings.
        error = check_queue_config(
            topic,
            max_deliveries=merged.max_deliveries,
            retry_backoff_ms_min=merged.retry_backoff_ms_min,
            retry_backoff_ms_max=merged.retry_backoff_ms_max,
            dead_letter_topic=merged.dead_letter_topic,
        )
        if error is not None:
            raise invalid(error.reason, error.message, **dict(error.metadata))
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
        config = self.apply_patch(name, base, patch)
        async with self._lock:
            if name in self._topics:
                raise BrokerError(
                    grpc.StatusCode.ALREADY_EXISTS,
                    "TOPIC_EXISTS",
                    f"topic {name!r} already exists",
                    {"topic": name},
                )
            if len(self._topics) + len(self._deleting) >= self._config.topics_max:
                raise BrokerError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    "TOO_MANY_TOPICS",
                    f"this node holds at most {self._config.topics_max} topics, counting "
                    f"{len(self._deleting)} deleted topics whose data is still being dropped",
                    {"limit": self._config.topics_max, "pending_deletes": len(self._deleting)},
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
            updated = dataclasses.replace(topic, config=self.apply_patch(name, topic.config, patch))
            await self._meta.write(puts=[(TOPIC_NS, name.encode(), updated.encode())])
            self._topics[name] = updated
            return updated

    async def delete(self, name: str) -> None:
        """Deletes durably and at once; the data is dropped later by `drop_deleted_data`."""
        async with self._lock:
            topic = self.get(name)
            # One transaction: after a crash the topic is either live or its
            # drop resumes; it is never both or neither.
            await self._meta.write(
                deletes=[(TOPIC_NS, name.encode())],
                puts=[(DELETING_NS, _deleting_key(topic), topic.encode())],
            )
            del self._topics[name]
            self._deleting[topic.group_ids[0]] = topic
            self._close_logs(topic)
            self._delete_queued.set()

    def _close_logs(self, topic: Topic) -> None:
        """Ends reads and appends on the deleted topic now, not when its drop gets to it."""
        closed = LogClosedError(f"topic {topic.name!r} was deleted")
        for group_id in topic.group_ids:
            try:
                self._storage.partition_log(group_id).close(closed)
            except StorageError:
                # A log that cannot even be opened (damaged, or the writer
                # died) has nobody reading it; its drop still runs.
                continue

    async def drop_deleted_data(self, forget_log: Callable[[int], Awaitable[None]]) -> None:
        """The node's background task that drops deleted topics' data, oldest delete first.

        For each partition: its log rows (in bounded chunks, by storage),
        then `forget_log(group_id)` (its group offsets); the topic's
        `topic_deleting` row goes last, so a crash anywhere resumes the drop.
        Dropping is idempotent, so a resumed drop simply starts over. A full
        storage is waited out; any other storage failure ends the task and,
        through the node's task group, the node.
        """
        while True:
            if not self._deleting:
                self._delete_queued.clear()
                await self._delete_queued.wait()
                continue
            first, topic = next(iter(self._deleting.items()))
            try:
                for group_id in topic.group_ids:
                    await self._storage.drop_partition_log(group_id)
                    await forget_log(group_id)
                await self._meta.write(deletes=[(DELETING_NS, _deleting_key(topic))])
            except StorageFullError as exc:
                log.warning(
                    "dropping the data of deleted topic %r waits for free space: %s",
                    topic.name,
                    exc,
                )
                await asyncio.sleep(DROP_RETRY_INTERVAL_S)
                continue
            del self._deleting[first]
            log.info("dropped the data of deleted topic %r", topic.name)

    def _next_group_id(self) -> int:
        raw = self._meta.get(SEQ_NS, _GROUP_SEQ_KEY)
        return _FIRST_PARTITION_GROUP if raw is None else int(struct.unpack(">I", raw)[0])


def _deleting_key(topic: Topic) -> bytes:
    return struct.pack(">I", topic.group_ids[0])
