"""Deleting a topic under live streams ends them cleanly and leaves nothing behind."""

from __future__ import annotations

import grpc
import pytest

from tests.support.broker_process import BrokerProcess
from tests.support.raw_client import ConsumeStream, RawClient, error_info, request
from weir.v1 import admin_pb2, broker_pb2

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def test_delete_ends_consumers_and_refuses_producers(broker: BrokerProcess) -> None:
    with RawClient(broker.address) as client:
        client.create_topic("doomed", partitions=2)
        assert not client.produce_one(request("doomed", [b"a", b"b"])).HasField("error")
        stream = ConsumeStream(
            client,
            broker_pb2.Subscribe(
                topic="doomed",
                start=broker_pb2.StartPosition(kind=broker_pb2.START_KIND_LATEST),
                credit=broker_pb2.Credit(messages=100, bytes=1 << 20),
            ),
        )
        try:
            assert stream.next().WhichOneof("kind") == "subscribed"
            client.admin.DeleteTopic(admin_pb2.DeleteTopicRequest(name="doomed"), timeout=30)
            with pytest.raises(grpc.RpcError) as raised:
                stream.next()
            assert error_info(raised.value) == (grpc.StatusCode.NOT_FOUND, "TOPIC_NOT_FOUND")
        finally:
            stream.close()
        response = client.produce_one(request("doomed", [b"c"]))
        assert response.error.reason == "TOPIC_NOT_FOUND"

        client.create_topic("doomed", partitions=1)
        assert client.end_offsets("doomed") == [0]
