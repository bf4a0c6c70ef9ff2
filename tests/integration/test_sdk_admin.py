"""The admin client against a real broker: topics, configs, cluster, typed errors."""

from __future__ import annotations

import asyncio

import pytest

import weir
import weir.aio
from tests.support.broker_process import BrokerProcess
from weir.errors import InvalidArgumentError, TopicExistsError, TopicNotFoundError, UnavailableError

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def test_topic_lifecycle_with_the_async_admin(broker: BrokerProcess) -> None:
    async def body() -> None:
        async with weir.aio.Admin(broker.address) as admin:
            created = await admin.create_topic("orders", partitions=3, retention_ms=60_000)
            assert created.name == "orders"
            assert created.partition_count == 3
            assert created.config.retention_ms == 60_000
            assert created.config.retention_bytes == -1
            with pytest.raises(TopicExistsError) as exists:
                await admin.create_topic("orders")
            assert exists.value.reason == "TOPIC_EXISTS"
            assert exists.value.metadata.get("topic") == "orders"

            assert [t.name for t in await admin.list_topics()] == ["orders"]
            described = await admin.describe_topic("orders")
            assert [p.partition for p in described.partitions] == [0, 1, 2]
            assert all(p.start_offset == p.end_offset == 0 for p in described.partitions)

            updated = await admin.update_topic_config("orders", record_bytes_max=4096)
            assert updated.config.record_bytes_max == 4096
            assert updated.config.retention_ms == 60_000  # unset fields keep their value

            await admin.delete_topic("orders")
            with pytest.raises(TopicNotFoundError):
                await admin.describe_topic("orders")
            with pytest.raises(TopicNotFoundError):
                await admin.delete_topic("orders")

    asyncio.run(body())


def test_blocking_admin_reports_bad_input_and_the_cluster(broker: BrokerProcess) -> None:
    with weir.Admin(broker.address) as admin:
        with pytest.raises(InvalidArgumentError) as bad:
            admin.create_topic("no spaces allowed")
        assert bad.value.reason == "INVALID_TOPIC_NAME"
        assert not bad.value.retriable
        with pytest.raises(InvalidArgumentError):
            admin.create_topic("zero", partitions=0)
        cluster = admin.describe_cluster()
        assert cluster.cluster_id
        assert cluster.durability in ("sync", "async")
        assert [n.node_id for n in cluster.nodes] == [cluster.node_id]
        assert cluster.record_bytes_max_limit > 0


@pytest.mark.timeout(30)
def test_unreachable_broker_is_a_weir_error_not_a_grpc_one(broker: BrokerProcess) -> None:
    address = broker.address
    broker.kill()
    with (
        weir.Admin(address, request_timeout_ms=5_000) as admin,
        pytest.raises(UnavailableError) as err,
    ):
        admin.list_topics()
    assert err.value.retriable
