"""The single node's committed offsets: the coordinator groups' state machine over the meta store.

`GroupOffsets` decides through `OffsetsState` (weir.cluster.coordinator.offsets)
and stores the rows it changed, so both modes refuse, bound and keep alike;
these tests check what the adapter adds: the rows survive a reopen, a refused
commit writes nothing, and forgetting a log removes its rows.
"""

from __future__ import annotations

import pathlib

import grpc
import pytest

from tests.support.aio import run
from weir.cluster.storage import NodeStorage, StorageConfig
from weir.server.config import NodeConfig
from weir.server.errors import BrokerError
from weir.server.offsets import GroupOffsets
from weir.server.topics import ConfigPatch, TopicRegistry

pytestmark = pytest.mark.timeout(30)


def test_offsets_survive_a_reopen_never_go_back_and_are_forgotten(tmp_path: pathlib.Path) -> None:
    run(lambda: _scenario(tmp_path / "data"))


async def _scenario(path: pathlib.Path) -> None:
    async with NodeStorage(StorageConfig(path=path)) as storage:
        topics = TopicRegistry(storage, NodeConfig(data_dir=path))
        await topics.load()
        topic = await topics.create("t", 2, 0, ConfigPatch())
        offsets = GroupOffsets(storage.meta, topics)
        await offsets.load()
        assert await offsets.commit("g", topic, {0: 7, 1: 3}) == {0: 7, 1: 3}
        assert await offsets.commit("g", topic, {0: 2}) == {0: 7}
        with pytest.raises(BrokerError) as refused:
            await offsets.commit("g", topic, {0: 9, 1: -1})
        assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert refused.value.reason == "INVALID_OFFSET"
    async with NodeStorage(StorageConfig(path=path)) as storage:
        topics = TopicRegistry(storage, NodeConfig(data_dir=path))
        await topics.load()
        topic = topics.get("t")
        offsets = GroupOffsets(storage.meta, topics)
        await offsets.load()
        assert await offsets.fetch("g", topic, [0, 1]) == {0: 7, 1: 3}
        await offsets.forget_log(topic.group_ids[0])
        assert await offsets.fetch("g", topic, [0, 1]) == {1: 3}
    async with NodeStorage(StorageConfig(path=path)) as storage:
        topics = TopicRegistry(storage, NodeConfig(data_dir=path))
        await topics.load()
        offsets = GroupOffsets(storage.meta, topics)
        assert await offsets.fetch("g", topics.get("t"), [0, 1]) == {1: 3}
