"""Produce answers per partition, and combined answers, with real processes.

Three `weir serve` processes. A generated client's stream goes to the node
leading partition B; its first request is for partition A, whose leader is
another node, stopped with SIGSTOP, so that request's forwarded part cannot
be answered. The requests for B sent after it on the same stream are
answered meanwhile, in their order; once the stopped node runs again the
request for A is answered too (whatever its outcome), and the stream ends
cleanly (DESIGN §4 "Answers per partition").

A client that sets `combine_answers` gets several answers in one response
(`ProduceResponse.more`), each complete and in order within its partition;
requests without it on the same stream are answered one per response.
"""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from tests.integration.test_cluster_replication import (
    create_topic,
    describe_topic,
    wait_led_by,
    wait_ready,
)
from tests.support.broker_process import BrokerProcess
from tests.support.cluster_process import ClusterProcess
from tests.support.raw_client import RawClient
from weir.v1 import broker_pb2, broker_pb2_grpc, records_pb2

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

TOPIC = "answers"
B_REQUESTS = 20
# Well under the election timeout plus a forward's deadline: answers for B
# held back behind A would take longer than this.
B_ANSWERS_S_MAX = 8.0
A_ANSWER_S_MAX = 60.0


def request(request_id: int, partition: int) -> broker_pb2.ProduceRequest:
    return broker_pb2.ProduceRequest(
        request_id=request_id,
        topic=TOPIC,
        partition=partition,
        batch=records_pb2.RecordBatch(records=[records_pb2.Record(value=b"r%d" % request_id)]),
        acks=broker_pb2.ACKS_ALL,
    )


def test_a_stalled_partition_does_not_hold_back_the_answers_of_another(
    cluster: ClusterProcess,
) -> None:
    wait_ready(cluster)
    create_topic(cluster, 1, TOPIC, 3)
    wait_led_by(cluster, TOPIC, cluster.node_ids)
    # Two partitions with different leaders (balancing spreads them; wait if not yet).
    cluster.wait_until(
        lambda: (
            len({p.leader_id for p in describe_topic(cluster.address(1), TOPIC).partitions}) > 1
        ),
        60,
        "two partitions led by different nodes",
    )
    leaders = [p.leader_id for p in describe_topic(cluster.address(1), TOPIC).partitions]
    a = 0
    b = next(p for p, lead in enumerate(leaders) if lead != leaders[a])
    stalled, entry = leaders[a], leaders[b]

    async def main() -> None:
        async with grpc.aio.insecure_channel(cluster.address(entry)) as channel:
            call = broker_pb2_grpc.BrokerServiceStub(channel).Produce()
            # One round trip first, so the forwarder's stream to A's leader is open.
            await call.write(request(0, a))
            first = await call.read()
            assert first.request_id == 0 and not first.HasField("error"), first
            cluster.pause(stalled)
            try:
                started = time.monotonic()
                await call.write(request(1, a))
                for i in range(B_REQUESTS):
                    await call.write(request(2 + i, b))
                answered: list[int] = []
                async with asyncio.timeout(B_ANSWERS_S_MAX):
                    while len(answered) < B_REQUESTS:
                        answer = await call.read()
                        assert answer is not grpc.aio.EOF
                        assert not answer.HasField("error"), answer.error
                        assert answer.appends[0].partition == b, answer
                        answered.append(answer.request_id)
                print(f"{B_REQUESTS} answers for B in {time.monotonic() - started:.2f} s")
                assert answered == list(range(2, 2 + B_REQUESTS)), "in order within B"
            finally:
                cluster.resume(stalled)
            await call.done_writing()
            async with asyncio.timeout(A_ANSWER_S_MAX):
                last = await call.read()
                assert last is not grpc.aio.EOF
                assert last.request_id == 1
                print(f"the request for A answered after SIGCONT: {last}")
                assert await call.read() is grpc.aio.EOF
            assert await call.code() == grpc.StatusCode.OK

    asyncio.run(main())


def test_combined_answers_carry_every_answer_in_order(broker: BrokerProcess) -> None:
    with RawClient(broker.address) as client:
        client.create_topic(TOPIC, partitions=2)
    requests = 600

    async def main() -> list[broker_pb2.ProduceResponse]:
        async with grpc.aio.insecure_channel(broker.address) as channel:
            call = broker_pb2_grpc.BrokerServiceStub(channel).Produce()
            for i in range(requests):
                message = request(i, i % 2)
                # Every tenth request reads plain answers; one is refused.
                message.combine_answers = i % 10 != 0
                if i == 7:
                    message.topic = "missing"
                await call.write(message)
            await call.done_writing()
            return [r async for r in call]

    responses = asyncio.run(main())
    answers = []
    for response in responses:
        # Only combining requests are combined, and never nested.
        combined = [response, *response.more]
        if len(combined) > 1:
            assert all(r.request_id % 10 != 0 for r in combined)
        assert all(not r.more for r in response.more)
        answers.extend(combined)
    assert len(responses) < requests, "some answers were combined"
    assert sorted(a.request_id for a in answers) == list(range(requests))
    (refused,) = [a for a in answers if a.HasField("error")]
    assert refused.request_id == 7 and refused.error.reason == "TOPIC_NOT_FOUND"
    for partition in (0, 1):
        mine = [a for a in answers if a.request_id % 2 == partition and a.request_id != 7]
        assert [a.request_id for a in mine] == sorted(a.request_id for a in mine)
        assert [a.appends[0].base_offset for a in mine] == list(range(len(mine)))
