"""Scripted nodes for SDK unit tests: channels that connect or not, by address.

`FakeNodes.install()` replaces the SDK's channel factory and connect check,
so a `weir._failover.Connection` "connects" to the addresses marked up and
fails to connect to the others, without any network. The calls made on a
channel are the test's business (each test patches `produce_call`,
`consume_call` or `admin_stub` to script them).
"""

from __future__ import annotations

import grpc
import grpc.aio
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from weir import _conn, _failover


class FakeChannel:
    def __init__(self, address: str) -> None:
        self.address = address
        self.closed = False

    async def close(self) -> None:
        self.closed = True


class FakeNodes:
    def __init__(self, up: dict[str, bool]) -> None:
        self.up = dict(up)
        self.connects: list[str] = []
        self.channels: list[FakeChannel] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FakeNodes:
        def open_channel(address: str, **options: object) -> FakeChannel:
            channel = FakeChannel(address)
            self.channels.append(channel)
            return channel

        async def wait_ready(channel: FakeChannel, timeout_s: float) -> bool:
            self.connects.append(channel.address)
            return self.up.get(channel.address, False)

        monkeypatch.setattr(_conn, "open_channel", open_channel)
        monkeypatch.setattr(_failover, "wait_ready", wait_ready)
        return self


def rpc_error(
    code: grpc.StatusCode, reason: str = "", message: str = "", **metadata: str
) -> grpc.aio.AioRpcError:
    """A call's final status as the broker sends it: code plus ErrorInfo in the trailer."""
    trailing = grpc.aio.Metadata()
    if reason:
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="weir", metadata=metadata))
        status = status_pb2.Status(code=code.value[0], message=message, details=[detail])
        trailing = grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString()))
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, message or code.name)
