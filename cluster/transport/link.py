"""The stream from this node to one peer: dialling, handshake, frames, heartbeats.

A `PeerLink` owns one `SendQueue` and, while it runs, one task (started by
`PeerTransport` in its TaskGroup) that loops: dial a fresh channel, send our
Hello and check the answer, then write frames until the stream fails, then
wait out a jittered exponential backoff and dial again. Every frame takes as
many queued messages as fit `frame_bytes_max`; a stream with nothing to send
for `heartbeat_interval_ms` carries a heartbeat instead.

While the link is not connected, `offer` drops at once rather than queueing:
messages queued during an outage would be stale when it ends (Raft resends
what still matters), and a dead peer then costs no memory at all. Losing a
connection drops whatever was still queued, for the same reason.
"""

from __future__ import annotations

import asyncio
import logging
import random

import grpc
import grpc.aio

from weir.cluster.raft.types import NodeId

from . import codec
from .backoff import Backoff
from .config import PeerStats, TransportConfig
from .errors import PeerMisbehavedError, PeerRefusedError, PeerUnreachableError, TransportError
from .queue import SendQueue

logger = logging.getLogger(__name__)

EXCHANGE_METHOD = "/weir.cluster.v1.PeerService/Exchange"


def channel_options(config: TransportConfig) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", config.grpc_message_bytes_max),
        ("grpc.max_receive_message_length", config.grpc_message_bytes_max),
        # Every dial is a fresh channel paced by our own backoff; gRPC's
        # channel-level reconnect backoff would only add its own delays.
        ("grpc.enable_retries", 0),
    ]


class PeerLink:
    def __init__(
        self,
        config: TransportConfig,
        peer_id: NodeId,
        address: str,
        stats: PeerStats,
        rng: random.Random,
    ) -> None:
        self.config = config
        self.peer_id = peer_id
        self.address = address
        self.stats = stats
        self.queue = SendQueue(config.queue_bytes_max, config.queue_messages_max)
        self.connected = False
        # Bytes of the frame being written, so the memory bound can be checked.
        self.inflight_bytes = 0
        self._wakeup = asyncio.Event()
        self._backoff = Backoff(rng, config.reconnect_initial_ms, config.reconnect_max_ms)
        self._heartbeat_sequence = 0

    def offer(self, part: bytes) -> bool:
        """Queues one encoded message for the stream; False when it was dropped."""
        stats = self.stats
        if not self.connected:
            stats.drops_disconnected += 1
            stats.dropped_bytes += len(part)
            return False
        if not self.queue.put(part):
            stats.drops_queue_full += 1
            stats.dropped_bytes += len(part)
            return False
        stats.queue_messages = len(self.queue)
        stats.queue_bytes = self.queue.bytes
        self._wakeup.set()
        return True

    async def run(self) -> None:
        """Dials, sends, and redials after failures until cancelled."""
        try:
            while True:
                try:
                    await self._connect_and_send()
                except PeerRefusedError as exc:
                    self.stats.refusals += 1
                    logger.warning("peer %d at %s refused us: %s", self.peer_id, self.address, exc)
                except TransportError as exc:
                    if self.connected:
                        logger.info("stream to peer %d lost: %s", self.peer_id, exc)
                    else:
                        self.stats.connect_failures += 1
                        logger.debug(
                            "cannot reach peer %d at %s: %s", self.peer_id, self.address, exc
                        )
                self._disconnect()
                await asyncio.sleep(self._backoff.next_ms() / 1000)
        finally:
            self._disconnect()

    def _disconnect(self) -> None:
        if self.connected:
            self.connected = False
            messages, size = self.queue.clear()
            self.stats.drops_disconnected += messages
            self.stats.dropped_bytes += size
            self.stats.queue_messages = 0
            self.stats.queue_bytes = 0
        self.inflight_bytes = 0

    async def _connect_and_send(self) -> None:
        config = self.config
        channel = grpc.aio.insecure_channel(self.address, options=channel_options(config))
        try:
            call: grpc.aio.StreamStreamCall[bytes, bytes] = channel.stream_stream(EXCHANGE_METHOD)()
            try:
                try:
                    await self._handshake(call)
                    self.connected = True
                    self.stats.connects += 1
                    self._backoff.reset()
                    logger.info("connected to peer %d at %s", self.peer_id, self.address)
                    await self._pump(call)
                except grpc.aio.AioRpcError as exc:
                    raise await _ended(call, exc) from None
                except asyncio.InvalidStateError:
                    raise await _ended(call) from None
            finally:
                call.cancel()
        finally:
            await channel.close(grace=None)

    async def _handshake(self, call: grpc.aio.StreamStreamCall[bytes, bytes]) -> None:
        config = self.config
        try:
            async with asyncio.timeout(config.handshake_timeout_ms / 1000):
                await call.write(codec.hello_frame(config.cluster_id, config.node_id, self.peer_id))
                data = await call.read()
        except TimeoutError:
            raise PeerUnreachableError("no handshake answer in time") from None
        if data is grpc.aio.EOF:
            raise await _ended(call)
        assert isinstance(data, bytes)
        hello = codec.decode_response(data)
        if hello.cluster_id != config.cluster_id:
            raise PeerRefusedError(f"it belongs to cluster {hello.cluster_id!r}")
        if hello.node_id != self.peer_id:
            raise PeerRefusedError(f"it is node {hello.node_id}, not {self.peer_id}")

    async def _pump(self, call: grpc.aio.StreamStreamCall[bytes, bytes]) -> None:
        config = self.config
        stats = self.stats
        queue = self.queue
        idle_s = config.heartbeat_interval_ms / 1000
        while True:
            if not queue:
                self._wakeup.clear()
                try:
                    async with asyncio.timeout(idle_s):
                        await self._wakeup.wait()
                except TimeoutError:
                    self._heartbeat_sequence += 1
                    await self._write(call, codec.heartbeat_frame(self._heartbeat_sequence))
                    stats.heartbeats_sent += 1
                    continue
            parts = queue.take(config.frame_bytes_max)
            stats.queue_messages = len(queue)
            stats.queue_bytes = queue.bytes
            count = len(parts)
            frame = codec.batch_frame(parts)
            del parts
            await self._write(call, frame)
            stats.frames_sent += 1
            stats.messages_sent += count
            stats.bytes_sent += len(frame)

    async def _write(self, call: grpc.aio.StreamStreamCall[bytes, bytes], frame: bytes) -> None:
        self.inflight_bytes = len(frame)
        try:
            async with asyncio.timeout(self.config.write_timeout_ms / 1000):
                await call.write(frame)
        except TimeoutError:
            self.stats.write_timeouts += 1
            raise PeerUnreachableError("the peer stopped reading (write timed out)") from None
        finally:
            self.inflight_bytes = 0


async def _ended(
    call: grpc.aio.StreamStreamCall[bytes, bytes],
    error: grpc.aio.AioRpcError | None = None,
) -> TransportError:
    """The error that ended a stream, translated: no gRPC error leaves the link."""
    if error is not None:
        code, details = error.code(), error.details()
    else:
        code, details = await call.code(), await call.details()
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return PeerRefusedError(details or "handshake refused")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        # The peer says we sent a bad frame: a bug on one side or the other.
        return PeerMisbehavedError(f"peer rejected our frame: {details}")
    return PeerUnreachableError(f"{code.name}: {details}")
