"""Valid and malformed messages mixed on the same Produce and Consume streams.

Each call runs a seeded script of actions on one stream, in random order:
valid requests, invalid ones (unknown topic, empty batch, unknown acks,
negative credit, a second subscribe, an empty request), bytes that are
not a message at all, waiting for an answer, half-closing, cancelling.
Every call must end with a status within CALL_END_S of its script's end,
none may be UNKNOWN or INTERNAL, and afterwards the node must be healthy
and serve a normal produce and consume. A failure names the seed and the
script; WEIR_FUZZ_SEED=N reruns one seed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections.abc import Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.broker_process import BrokerProcess
from tests.support.raw_client import RawClient, read_partition, request
from weir.v1 import broker_pb2

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SEEDS = [int(os.environ["WEIR_FUZZ_SEED"])] if "WEIR_FUZZ_SEED" in os.environ else [1, 2, 3]
CALLS_PER_METHOD = 40
ACTIONS_MAX = 10
CONCURRENT_CALLS = 20
# A generous gRPC deadline, so that a call the broker never ends is seen as
# hung (it outlives CALL_END_S) rather than ended by the client's deadline.
CALL_DEADLINE_S = 60.0
CALL_END_S = 15.0
FORBIDDEN = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
# grpc's Python client, not the broker: when the server ends a bidirectional
# call while the client is writing, the failed write can replace the
# server's status with this one on the client side (grpc's
# `_AioCall.set_internal_error`). The broker's own INTERNAL never says this.
CLIENT_LOST_STATUS = "Internal error from Core"
PRODUCE = "/weir.v1.BrokerService/Produce"
CONSUME = "/weir.v1.BrokerService/Consume"


def _identity(raw: bytes) -> bytes:
    return raw


def produce_message(rng: random.Random, first: bool) -> tuple[str, bytes]:
    del first  # every Produce request stands alone
    kind = rng.choice(["valid", "valid", "unknown_topic", "empty", "bad_acks", "garbage", "cut"])
    valid = request("fz", [rng.randbytes(rng.randrange(1, 64))], request_id=rng.randrange(1 << 20))
    if kind == "valid":
        return kind, valid.SerializeToString()
    if kind == "unknown_topic":
        valid.topic = "no-such-topic"
    elif kind == "empty":
        del valid.batch.records[:]
    elif kind == "bad_acks":
        valid.acks = 77  # type: ignore[assignment]
    elif kind == "garbage":
        return kind, b"\xff" + rng.randbytes(rng.randrange(0, 40))
    else:  # a valid message cut short: no longer parses
        raw = valid.SerializeToString()
        return kind, raw[: rng.randrange(1, len(raw))]
    return kind, valid.SerializeToString()


def consume_message(rng: random.Random, first: bool) -> tuple[str, bytes]:
    subscribe = broker_pb2.ConsumeRequest(
        subscribe=broker_pb2.Subscribe(
            topic="fz",
            group=rng.choice(["", "g"]),
            start=broker_pb2.StartPosition(kind=broker_pb2.START_KIND_EARLIEST),
            credit=broker_pb2.Credit(messages=rng.randrange(0, 5), bytes=1 << 20),
        )
    )
    if first and rng.random() < 0.8:
        return "subscribe", subscribe.SerializeToString()
    kind = rng.choice(["credit", "commit", "negative", "subscribe", "empty", "garbage"])
    if kind == "credit":
        msg = broker_pb2.ConsumeRequest(credit=broker_pb2.Credit(messages=3, bytes=1 << 16))
    elif kind == "commit":
        msg = broker_pb2.ConsumeRequest(
            commit=broker_pb2.Commit(
                commit_id=rng.randrange(100),
                offsets=[broker_pb2.PartitionOffset(partition=0, offset=rng.randrange(3))],
            )
        )
    elif kind == "negative":
        msg = broker_pb2.ConsumeRequest(credit=broker_pb2.Credit(messages=-1, bytes=5))
    elif kind == "subscribe":
        msg = subscribe
    elif kind == "empty":
        msg = broker_pb2.ConsumeRequest()
    else:
        return kind, b"\xff" + rng.randbytes(rng.randrange(0, 40))
    return kind, msg.SerializeToString()


async def run_call(
    channel: grpc.aio.Channel,
    method: str,
    make: Callable[[random.Random, bool], tuple[str, bytes]],
    rng: random.Random,
) -> tuple[list[str], grpc.StatusCode | None, str]:
    """Run one scripted stream; the steps taken and the status it ended with (None: hung)."""
    call = channel.stream_stream(
        method, request_serializer=_identity, response_deserializer=_identity
    )(timeout=CALL_DEADLINE_S)
    steps: list[str] = []

    async def drain() -> None:
        async for _ in call:
            pass

    reader = asyncio.ensure_future(drain())
    try:
        for index in range(rng.randrange(1, ACTIONS_MAX + 1)):
            action = rng.choices(["send", "wait", "half_close", "cancel"], [8, 2, 1, 1])[0]
            if action == "send":
                kind, raw = make(rng, index == 0)
                steps.append(kind)
                try:
                    await call.write(raw)
                except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                    steps.append("(ended)")
                    break
            elif action == "wait":
                steps.append("wait")
                await asyncio.sleep(rng.choice([0.0, 0.01, 0.05]))
            elif action == "half_close":
                steps.append("half_close")
                break
            else:
                steps.append("cancel")
                call.cancel()
                break
        if not call.done():
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
                await call.done_writing()
        try:
            async with asyncio.timeout(CALL_END_S):
                code = await call.code()
        except TimeoutError:
            call.cancel()
            return steps, None, ""
        return steps, code, await call.details()
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)


async def fuzz(address: str, seed: int) -> list[str]:
    """Every failure found with this seed, as lines naming the call and its script."""
    rng = random.Random(seed)
    scripts = [
        (method, make, random.Random(rng.getrandbits(64)))
        for method, make in [(PRODUCE, produce_message), (CONSUME, consume_message)]
        for _ in range(CALLS_PER_METHOD)
    ]
    rng.shuffle(scripts)
    failures: list[str] = []
    async with grpc.aio.insecure_channel(address) as channel:
        for start in range(0, len(scripts), CONCURRENT_CALLS):
            batch = scripts[start : start + CONCURRENT_CALLS]
            results = await asyncio.gather(
                *(run_call(channel, method, make, call_rng) for method, make, call_rng in batch)
            )
            for (method, _, _), (steps, code, details) in zip(batch, results, strict=True):
                if code is None or (code in FORBIDDEN and details != CLIENT_LOST_STATUS):
                    ended = "never ended" if code is None else f"ended {code.name} ({details!r})"
                    failures.append(f"{method.rsplit('/', 1)[1]} {ended} after {steps}")
    return failures


@pytest.mark.parametrize("seed", SEEDS)
def test_mixed_streams_always_end_with_a_deliberate_status(
    broker: BrokerProcess, seed: int
) -> None:
    with RawClient(broker.address) as client:
        client.create_topic("fz")
        assert not client.produce_one(request("fz", [b"seed"])).HasField("error")
        failures = asyncio.run(fuzz(broker.address, seed))
        assert not failures, f"seed {seed} (rerun: WEIR_FUZZ_SEED={seed}):\n" + "\n".join(
            failures[:20]
        )
        with grpc.insecure_channel(broker.address) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            )
        assert health.status == health_pb2.HealthCheckResponse.SERVING, f"seed {seed}"
        before = len(read_partition(client, "fz", 0))
        assert not client.produce_one(request("fz", [b"after"])).HasField("error"), f"seed {seed}"
        records = read_partition(client, "fz", 0)
        assert len(records) == before + 1 and records[-1].value == b"after", f"seed {seed}"
