"""HTTP/2 keepalive between clients and a node (issue 7, consumer robustness).

- Idle consume streams whose clients send keepalive pings survive many ping
  intervals against a node's policy (docs/operations.md, Keepalive): an SDK
  consumer at six times the policy's minimum interval (the SDK default,
  30 s, against the node default, 5 s), another at the minimum itself
  (where gRPC's own default policy cut a client off after its third ping),
  and a plain gRPC channel at the minimum. The node runs with every
  keepalive interval of its default policy divided by `SCALE`, so the test
  sees in 24 s the same pings, strikes and node pings that the default
  policy sees in 2 minutes (the ratios, the ping counts and the strike
  limit are the defaults'; that the defaults reach gRPC as these flags do is
  tests/unit/server/test_keepalive_policy.py). A proxy in front of each SDK
  consumer counts the bytes it sends while idle, so the test knows the pings
  went out; afterwards every stream still delivers a record and commits.
- A client that pings more often than the policy allows gets the documented
  error (docs/errors.md, Keepalive): `TooManyPingsError` from the SDK, and
  UNAVAILABLE "Too many pings" on a plain gRPC C-core channel. The node runs
  with a 60 s minimum there, so that a client pinging every second is cut
  off within seconds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

import grpc
import grpc.aio
import pytest

import weir
import weir.aio
from tests.support.aio import run
from tests.support.broker_process import BrokerProcess
from tests.support.fault_proxy import FaultProxy, ProxyLoop
from tests.support.raw_client import start_at
from weir._conn import KEEPALIVE_TIME_MS_DEFAULT
from weir.errors import TooManyPingsError
from weir.server.config import NodeConfig
from weir.v1 import broker_pb2

pytestmark = [pytest.mark.integration]

TOPIC = "idle"


def _node_default(name: str) -> int:
    (field,) = [f for f in dataclasses.fields(NodeConfig) if f.name == name]
    assert isinstance(field.default, int)
    return field.default


# The node's default keepalive policy (docs/operations.md) and the idle
# time that showed it: 2 minutes, 24 pings at the minimum interval.
DEFAULT_POLICY_INTERVAL_MS_MIN = _node_default("keepalive_client_ping_interval_ms_min")
DEFAULT_NODE_PING_INTERVAL_MS = _node_default("keepalive_ping_interval_ms")
DEFAULT_NODE_PING_TIMEOUT_MS = _node_default("keepalive_ping_timeout_ms")
DEFAULT_IDLE_S = 120.0
# Every interval divided by this: the same pings and strikes, 5 times sooner.
SCALE = 5
POLICY_INTERVAL_MS_MIN = DEFAULT_POLICY_INTERVAL_MS_MIN // SCALE  # 1 s
NODE_PING_INTERVAL_MS = DEFAULT_NODE_PING_INTERVAL_MS // SCALE  # 12 s
NODE_PING_TIMEOUT_MS = DEFAULT_NODE_PING_TIMEOUT_MS // SCALE
# The SDK's default interval as a multiple of the node's default minimum (6).
SDK_DEFAULT_RATIO = KEEPALIVE_TIME_MS_DEFAULT // DEFAULT_POLICY_INTERVAL_MS_MIN
SDK_DEFAULT_SCALED_MS = SDK_DEFAULT_RATIO * POLICY_INTERVAL_MS_MIN  # 6 s
IDLE_S = DEFAULT_IDLE_S / SCALE  # 24 s
# An HTTP/2 PING frame: a 9-byte frame header and 8 bytes of payload.
PING_FRAME_BYTES = 17
WAIT_S = 20.0


def create(address: str) -> None:
    with weir.Admin(address) as admin:
        admin.create_topic(TOPIC, 1)


def raw_channel(address: str, keepalive_time_ms: int) -> grpc.aio.Channel:
    """A plain gRPC channel with keepalive as a client in any language would set it."""
    return grpc.aio.insecure_channel(
        address,
        options=[
            ("grpc.keepalive_time_ms", keepalive_time_ms),
            ("grpc.keepalive_permit_without_calls", 1),
            # C-core stops pinging after two pings while it sends no data
            # unless told otherwise (grpc-js has no such limit).
            ("grpc.http2.max_pings_without_data", 0),
        ],
    )


async def raw_subscribe(channel: grpc.aio.Channel) -> grpc.aio.StreamStreamCall:
    call = channel.stream_stream(
        "/weir.v1.BrokerService/Consume",
        request_serializer=broker_pb2.ConsumeRequest.SerializeToString,
        response_deserializer=broker_pb2.ConsumeResponse.FromString,
    )()
    subscribe = broker_pb2.Subscribe(
        topic=TOPIC,
        start=start_at(broker_pb2.START_KIND_EARLIEST),
        credit=broker_pb2.Credit(messages=100, bytes=1 << 20),
    )
    await call.write(broker_pb2.ConsumeRequest(subscribe=subscribe))
    first = await call.read()
    assert first.WhichOneof("kind") == "subscribed", first
    return call


def sent_bytes(proxy: FaultProxy) -> int:
    return proxy.stats().bytes_forward


def test_the_sdk_default_keepalive_is_within_the_node_default_policy() -> None:
    # What lets the scaled test below stand for the defaults: the SDK's
    # default interval is a whole multiple (at least 1) of the node's minimum.
    assert KEEPALIVE_TIME_MS_DEFAULT % DEFAULT_POLICY_INTERVAL_MS_MIN == 0
    assert SDK_DEFAULT_RATIO >= 1
    assert DEFAULT_POLICY_INTERVAL_MS_MIN % SCALE == 0
    assert DEFAULT_NODE_PING_INTERVAL_MS % SCALE == 0


@pytest.mark.slow
@pytest.mark.timeout(IDLE_S + 90)
def test_idle_consume_streams_pinging_at_or_above_the_policy_minimum_survive(
    tmp_path: Path,
) -> None:
    broker = BrokerProcess(
        tmp_path / "data",
        "--keepalive-client-ping-interval-ms-min",
        str(POLICY_INTERVAL_MS_MIN),
        "--keepalive-ping-interval-ms",
        str(NODE_PING_INTERVAL_MS),
        "--keepalive-ping-timeout-ms",
        str(NODE_PING_TIMEOUT_MS),
    ).start()
    try:
        _idle_streams_survive(broker)
    finally:
        broker.stop()


def _idle_streams_survive(broker: BrokerProcess) -> None:
    create(broker.address)

    async def main() -> None:
        with ProxyLoop() as proxies:
            default_proxy = proxies.proxy(broker.address, "default keepalive, scaled")
            fast_proxy = proxies.proxy(broker.address, "keepalive at the policy minimum")
            channel = raw_channel(broker.address, POLICY_INTERVAL_MS_MIN)
            async with (
                weir.aio.Consumer(
                    default_proxy.address,
                    TOPIC,
                    group="default",
                    start="earliest",
                    keepalive_time_ms=SDK_DEFAULT_SCALED_MS,
                ) as default,
                weir.aio.Consumer(
                    fast_proxy.address,
                    TOPIC,
                    group="fast",
                    start="earliest",
                    keepalive_time_ms=POLICY_INTERVAL_MS_MIN,
                ) as fast,
            ):
                call = await raw_subscribe(channel)
                raw_read = asyncio.create_task(call.read())
                before = sent_bytes(default_proxy), sent_bytes(fast_proxy)
                # The idle time itself: nothing is produced, every stream waits.
                idle = await asyncio.gather(default.poll(IDLE_S), fast.poll(IDLE_S))
                assert idle == [None, None]
                assert not raw_read.done(), raw_read
                default_pings = (sent_bytes(default_proxy) - before[0]) // PING_FRAME_BYTES
                fast_pings = (sent_bytes(fast_proxy) - before[1]) // PING_FRAME_BYTES
                # Pings every 6 s and 1 s (the node's own pings every 12 s
                # add two acknowledgements to each): 3 and 20 at least, as
                # at 30 s and 5 s over 2 minutes.
                default_interval_s = SDK_DEFAULT_SCALED_MS / 1000
                fast_interval_s = POLICY_INTERVAL_MS_MIN / 1000
                assert default_pings >= IDLE_S // default_interval_s - 1, default_pings
                assert fast_pings >= IDLE_S // fast_interval_s - 4, fast_pings

                async with weir.aio.Producer(broker.address, linger_ms=1) as producer:
                    await (await producer.send(TOPIC, b"after the idle", partition=0))
                for consumer in (default, fast):
                    record = await consumer.poll(WAIT_S)
                    assert record is not None and record.value == b"after the idle"
                    assert await consumer.commit() == {0: 1}
                async with asyncio.timeout(WAIT_S):
                    response = await raw_read
                assert response.WhichOneof("kind") == "batch", response
                assert [r.value for r in response.batch.records] == [b"after the idle"]
                call.cancel()
            await channel.close()

    run(main, timeout_s=IDLE_S + 70)


@pytest.mark.timeout(90)
def test_a_client_pinging_too_often_gets_the_documented_error(tmp_path: Path) -> None:
    # A strict policy (pings at most every 60 s) so that a client pinging
    # every second collects its strikes within seconds.
    broker = BrokerProcess(
        tmp_path / "data", "--keepalive-client-ping-interval-ms-min", "60000"
    ).start()
    try:
        create(broker.address)

        async def main() -> None:
            async with weir.aio.Consumer(
                broker.address, TOPIC, start="earliest", keepalive_time_ms=1_000
            ) as consumer:
                started = time.monotonic()
                with pytest.raises(TooManyPingsError) as raised:
                    async for record in consumer:
                        raise AssertionError(f"nothing was produced, got {record}")
                assert time.monotonic() - started < WAIT_S
                error = raised.value
                assert error.code is grpc.StatusCode.UNAVAILABLE
                assert error.reason == "TOO_MANY_PINGS" and not error.retriable
                assert "keepalive_time_ms" in str(error)

            # What a generated client on gRPC C-core sees (docs/errors.md).
            channel = raw_channel(broker.address, 1_000)
            call = await raw_subscribe(channel)
            with pytest.raises(grpc.aio.AioRpcError) as status:
                async with asyncio.timeout(WAIT_S):
                    await call.read()
            assert status.value.code() is grpc.StatusCode.UNAVAILABLE
            assert status.value.details() == "Too many pings"
            await channel.close()

        run(main, timeout_s=80)
    finally:
        broker.stop()
