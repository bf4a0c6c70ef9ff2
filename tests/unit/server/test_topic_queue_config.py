"""A topic's queue settings on a node: the single-node registry, the admin wire and cluster topics.

The registry runs on real storage (LMDB in a temporary folder). Refused
configs must leave the stored rows as they were; rows written before the
settings existed read as the defaults.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from weir.cluster import controller as ctl
from weir.cluster.storage import NodeStorage, StorageConfig
from weir.server.admin import _patch, topic_proto
from weir.server.cluster_topics import _patch as cluster_patch
from weir.server.cluster_topics import topic_of
from weir.server.config import NodeConfig
from weir.server.errors import BrokerError
from weir.server.topics import (
    TOPIC_NS,
    ConfigPatch,
    Topic,
    TopicConfig,
    TopicRegistry,
    dead_letter_topic_of,
)
from weir.v1 import admin_pb2

pytestmark = pytest.mark.timeout(60)

QUEUE = ConfigPatch(
    max_deliveries=0, retry_backoff_ms_min=0, retry_backoff_ms_max=5000, dead_letter_topic="dead"
)

BAD_PATCHES = [
    (ConfigPatch(max_deliveries=-1), "max_deliveries"),
    (ConfigPatch(max_deliveries=1001), "max_deliveries"),
    (ConfigPatch(retry_backoff_ms_min=-1), "retry_backoff_ms_min"),
    (ConfigPatch(retry_backoff_ms_max=86_400_001), "retry_backoff_ms_max"),
    (ConfigPatch(retry_backoff_ms_min=70_000), "retry_backoff_ms_max"),  # above max 60000
    (ConfigPatch(dead_letter_topic="no spaces"), "dead_letter_topic"),
    (ConfigPatch(dead_letter_topic="orders"), "dead_letter_topic"),
]


def run(test: Callable[[pathlib.Path], Awaitable[None]], tmp_path: pathlib.Path) -> None:
    asyncio.run(test(tmp_path))


async def _registry(storage: NodeStorage, tmp_path: pathlib.Path) -> TopicRegistry:
    topics = TopicRegistry(storage, NodeConfig(data_dir=tmp_path / "data"))
    await topics.load()
    return topics


def _storage(tmp_path: pathlib.Path) -> NodeStorage:
    return NodeStorage(StorageConfig(path=tmp_path / "data"))


def _rows(storage: NodeStorage) -> list[tuple[bytes, bytes]]:
    return storage.meta.scan(TOPIC_NS)


def test_settings_are_stored_and_read_back_after_a_restart(tmp_path: pathlib.Path) -> None:
    async def test(tmp_path: pathlib.Path) -> None:
        async with _storage(tmp_path) as storage:
            topics = await _registry(storage, tmp_path)
            created = await topics.create("orders", 1, 0, QUEUE)
            assert created.config.max_deliveries == 0
            assert created.config.retry_backoff_ms_max == 5000
            assert created.config.dead_letter_topic == "dead"
            plain = await topics.create("plain", 1, 0, ConfigPatch())
            assert plain.config.max_deliveries == 5
            assert (plain.config.retry_backoff_ms_min, plain.config.retry_backoff_ms_max) == (
                1000,
                60_000,
            )
            assert dead_letter_topic_of("plain", plain.config) == "plain.dlq"
            assert dead_letter_topic_of("orders", created.config) == "dead"
        async with _storage(tmp_path) as storage:
            topics = await _registry(storage, tmp_path)
            assert topics.get("orders") == created
            assert topics.get("plain") == plain

    run(test, tmp_path)


def test_a_row_written_before_the_settings_reads_as_the_defaults(tmp_path: pathlib.Path) -> None:
    async def test(tmp_path: pathlib.Path) -> None:
        old_row = {
            "name": "legacy",
            "group_ids": [1],
            "replication_factor": 1,
            "config": {"retention_bytes": -1, "retention_ms": 1000, "record_bytes_max": 2048},
        }
        async with _storage(tmp_path) as storage:
            await storage.meta.write(puts=[(TOPIC_NS, b"legacy", json.dumps(old_row).encode())])
            topics = await _registry(storage, tmp_path)
            config = topics.get("legacy").config
            assert config == TopicConfig(retention_ms=1000, record_bytes_max=2048)
            assert config.max_deliveries == 5 and config.dead_letter_topic == ""
            # An update rewrites the row with every field.
            await topics.update_config("legacy", ConfigPatch(max_deliveries=9))
            stored = json.loads(dict(_rows(storage))[b"legacy"])
            assert stored["config"]["max_deliveries"] == 9
            assert stored["config"]["retry_backoff_ms_max"] == 60_000

    run(test, tmp_path)


@pytest.mark.parametrize(("patch", "field"), BAD_PATCHES)
def test_a_bad_create_is_refused_and_stores_nothing(
    tmp_path: pathlib.Path, patch: ConfigPatch, field: str
) -> None:
    async def test(tmp_path: pathlib.Path) -> None:
        async with _storage(tmp_path) as storage:
            topics = await _registry(storage, tmp_path)
            with pytest.raises(BrokerError) as refused:
                await topics.create("orders", 1, 0, patch)
            assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
            assert refused.value.reason == "INVALID_CONFIG"
            assert refused.value.metadata["field"] == field
            assert topics.all() == [] and _rows(storage) == []

    run(test, tmp_path)


@pytest.mark.parametrize(("patch", "field"), BAD_PATCHES)
def test_a_bad_update_is_refused_and_changes_nothing(
    tmp_path: pathlib.Path, patch: ConfigPatch, field: str
) -> None:
    async def test(tmp_path: pathlib.Path) -> None:
        async with _storage(tmp_path) as storage:
            topics = await _registry(storage, tmp_path)
            created = await topics.create("orders", 1, 0, ConfigPatch())
            rows = _rows(storage)
            with pytest.raises(BrokerError) as refused:
                await topics.update_config("orders", patch)
            assert refused.value.reason == "INVALID_CONFIG"
            assert refused.value.metadata["field"] == field
            assert topics.get("orders") == created
            assert _rows(storage) == rows

    run(test, tmp_path)


def test_update_merges_and_an_empty_dead_letter_topic_resets(tmp_path: pathlib.Path) -> None:
    async def test(tmp_path: pathlib.Path) -> None:
        async with _storage(tmp_path) as storage:
            topics = await _registry(storage, tmp_path)
            await topics.create("orders", 1, 0, QUEUE)
            both = await topics.update_config(
                "orders", ConfigPatch(retry_backoff_ms_min=70_000, retry_backoff_ms_max=80_000)
            )
            assert both.config.max_deliveries == 0  # untouched
            assert both.config.dead_letter_topic == "dead"
            reset = await topics.update_config("orders", ConfigPatch(dead_letter_topic=""))
            assert reset.config.dead_letter_topic == ""
            assert reset.config.retry_backoff_ms_min == 70_000

    run(test, tmp_path)


def test_the_admin_wire_sets_every_field_and_reads_only_those_set() -> None:
    config = TopicConfig(max_deliveries=0, retry_backoff_ms_min=0, dead_letter_topic="")
    wire = topic_proto(Topic("orders", (1, 2), 1, config)).config
    for name in admin_pb2.TopicConfig.DESCRIPTOR.fields_by_name:
        assert wire.HasField(name), name
    assert (wire.max_deliveries, wire.retry_backoff_ms_min) == (0, 0)
    assert (wire.retry_backoff_ms_max, wire.dead_letter_topic) == (60_000, "")

    assert _patch(admin_pb2.TopicConfig()) == ConfigPatch()
    chosen: dict[str, Any] = {
        "max_deliveries": 0,
        "retry_backoff_ms_min": 0,
        "retry_backoff_ms_max": 0,
        "dead_letter_topic": "",
    }
    assert _patch(admin_pb2.TopicConfig(**chosen)) == ConfigPatch(**chosen)


def test_cluster_topics_carry_every_setting() -> None:
    config = ctl.TopicConfig(
        max_deliveries=7, retry_backoff_ms_min=1, retry_backoff_ms_max=2, dead_letter_topic="d"
    )
    topic = topic_of(ctl.Topic("orders", config, 1, (ctl.Partition(1, (1,)),)))
    assert topic.config == TopicConfig(
        max_deliveries=7, retry_backoff_ms_min=1, retry_backoff_ms_max=2, dead_letter_topic="d"
    )
    patch = ConfigPatch(
        max_deliveries=0, retry_backoff_ms_min=3, retry_backoff_ms_max=4, dead_letter_topic=""
    )
    assert cluster_patch(patch) == ctl.ConfigPatch(
        max_deliveries=0, retry_backoff_ms_min=3, retry_backoff_ms_max=4, dead_letter_topic=""
    )
    # Field for field the same names and defaults in both modes.
    assert TopicConfig.__dataclass_fields__.keys() == ctl.TopicConfig.__dataclass_fields__.keys()
    assert cluster_patch(ConfigPatch()) == ctl.ConfigPatch()
    assert topic_of(ctl.Topic("t", ctl.TopicConfig(), 1, (ctl.Partition(1, (1,)),))).config == (
        TopicConfig()
    )
