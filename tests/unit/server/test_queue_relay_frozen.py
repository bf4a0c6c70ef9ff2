"""A queue relay to a leader that answers nothing (frozen) ends instead of waiting for ever.

Against an in-process gRPC server that stands for a frozen node: it accepts
the Consume call and then says nothing (or answers the subscribe and then
says nothing). `open()` is bounded (RELAY_OPEN_TIMEOUT_S, RELAY_FAILED), and
`abandon()` (the stream's node heard of another leader) ends an opening or
a running relay with NOT_LEADER naming that leader, never with a cancel that
would reach the stream's own task.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
import grpc.aio
import pytest

from tests.support.aio import run
from weir.server import queue_relay
from weir.server.errors import BrokerError
from weir.server.queue_relay import Relay
from weir.v1 import broker_pb2

pytestmark = pytest.mark.timeout(30)


async def silent_node(answer_subscribe: bool) -> tuple[grpc.aio.Server, str]:
    """A Consume endpoint that reads the subscribe, maybe answers it, then says nothing."""

    async def consume(
        requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        async for _ in requests:
            if answer_subscribe:
                subscribed = broker_pb2.Subscribed(topic="t")
                yield broker_pb2.ConsumeResponse(subscribed=subscribed).SerializeToString()
            await asyncio.Event().wait()  # frozen: neither answers nor ends

    handler = grpc.method_handlers_generic_handler(
        "weir.v1.BrokerService", {"Consume": grpc.stream_stream_rpc_method_handler(consume)}
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


def relay_to(address: str) -> Relay:
    subscribe = broker_pb2.Subscribe(topic="t", group="g", mode=broker_pb2.CONSUME_MODE_QUEUE)
    return Relay(2, address, subscribe, [0], lambda relay, response: None, 4 * 1024 * 1024)


@contextlib.asynccontextmanager
async def running_relay() -> AsyncIterator[tuple[Relay, asyncio.Task[BrokerError]]]:
    """A relay whose subscribe was answered, running, to a node that then says nothing."""
    server, address = await silent_node(answer_subscribe=True)
    relay = relay_to(address)
    try:
        await relay.open()
        running = asyncio.create_task(relay.run())
        await asyncio.sleep(0.1)
        assert not running.done()  # nothing ends it on its own
        yield relay, running
    finally:
        await relay.close()
        await server.stop(None)


def test_a_subscribe_nobody_answers_fails_relay_failed_in_bounded_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(queue_relay, "RELAY_OPEN_TIMEOUT_S", 0.3)

    async def main() -> None:
        server, address = await silent_node(answer_subscribe=False)
        relay = relay_to(address)
        try:
            with pytest.raises(BrokerError) as failed:
                await relay.open()
            assert (failed.value.code, failed.value.reason) == (
                grpc.StatusCode.UNAVAILABLE,
                "RELAY_FAILED",
            )
            assert "did not answer" in failed.value.message
        finally:
            await relay.close()
            await server.stop(None)

    run(main)


def test_abandoning_an_opening_relay_raises_not_leader_naming_the_new_leader() -> None:
    async def main() -> None:
        server, address = await silent_node(answer_subscribe=False)
        relay = relay_to(address)
        try:
            opening = asyncio.create_task(relay.open())
            await asyncio.sleep(0.2)  # the subscribe is out, its answer never comes
            relay.abandon(3)
            with pytest.raises(BrokerError) as moved:
                await opening
            assert (moved.value.reason, moved.value.metadata["leader_id"]) == ("NOT_LEADER", "3")
            assert moved.value.retriable
        finally:
            await relay.close()
            await server.stop(None)

    run(main)


def test_abandoning_a_running_relay_ends_it_with_not_leader() -> None:
    async def main() -> None:
        async with running_relay() as (relay, running):
            relay.abandon(3)
            ended = await running
            assert (ended.reason, ended.metadata["leader_id"]) == ("NOT_LEADER", "3")
            assert relay.failure is ended

    run(main)


def test_cancelling_the_task_that_runs_a_relay_still_cancels_it() -> None:
    async def main() -> None:
        async with running_relay() as (relay, running):
            relay.abandon(3)
            running.cancel()
            with pytest.raises(asyncio.CancelledError):
                await running

    run(main)
