"""Node-wide memory bounds under hostile clients, while well-behaved clients are served.

The second test (at the end) pushes the node's memory budget to its limit
with many producers and consumers and reads its peak from the log line the
node writes at stop.

Against one real `weir serve`, at once:

- producers that pipeline requests and never read a response (their
  connection announces a zero receive window, so no answer can reach them);
- streams that send most of a large request and then stop;
- consumers that grant huge credit on their own connection and then stop
  reading the socket.

The broker's resident set (VmRSS from /proc/PID/status, sampled every
50 ms) must stay under the bound that docs/operations.md states and
`weir.server.limits.rss_bound` computes from the node's settings; meanwhile a
well-behaved producer and consumer must keep their throughput within 2x of
what they got on the same node before the attack (best of five rounds
each, so that another process's burst on this shared machine does not
decide the result).

The hostile clients speak raw HTTP/2 (a few frames, written here) because
no gRPC client can be told to stop in the middle of a message or to stop
reading its socket while acknowledging the broker's settings and pings.
"""

from __future__ import annotations

import contextlib
import re
import socket
import struct
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.broker_process import BrokerProcess
from tests.support.raw_client import ConsumeStream, RawClient, read_batches, request
from weir.server.config import KiB, MiB, NodeConfig
from weir.server.limits import rss_bound
from weir.v1 import broker_pb2

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(120)]

PRODUCE = "/weir.v1.BrokerService/Produce"
CONSUME = "/weir.v1.BrokerService/Consume"

NON_READING_PRODUCERS = 300
HALF_SENT_REQUESTS = 60
STALLED_CONSUMERS = 60
# The node's settings: smaller requests and responses than the defaults so
# that the worst case of hundreds of calls fits this shared machine; the
# bound is computed from the same figures.
SETTINGS = {
    "calls_max": NON_READING_PRODUCERS + HALF_SENT_REQUESTS + STALLED_CONSUMERS + 20,
    "connections_max": STALLED_CONSUMERS + 20,
    "request_bytes_max": 4 * MiB,
    "consume_response_bytes_max": 256 * KiB,
    "produce_inflight_requests_max": 64,
}
HALF_SENT_DECLARED_BYTES = 4_000_000
HALF_SENT_BYTES = 3_900_000
BULK_BYTES = 8 * MiB  # per stalled consumer: more than loopback's socket buffers
GOOD_REQUESTS = 400
GOOD_RECORDS = 16
GOOD_VALUE = b"g" * 1024
ROUNDS = 5
ATTACK_SETUP_S = 40.0


# --- raw HTTP/2 ----------------------------------------------------------

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_DATA, _HEADERS, _RST, _SETTINGS, _PING, _WINDOW_UPDATE = 0, 1, 3, 4, 6, 8
_END_STREAM, _END_HEADERS, _ACK = 1, 4, 1
_FRAME_BYTES = 16384  # HTTP/2's default SETTINGS_MAX_FRAME_SIZE


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return (
        len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload
    )


def _header(name: bytes, value: bytes) -> bytes:
    """An HPACK literal header field without indexing, new name, no Huffman coding."""
    assert len(name) < 127 and len(value) < 127
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


def grpc_message(payload: bytes, declared_bytes: int | None = None) -> bytes:
    size = len(payload) if declared_bytes is None else declared_bytes
    return b"\x00" + struct.pack(">I", size) + payload


class RawConnection:
    """One HTTP/2 connection that holds gRPC streams open and obeys flow control.

    A reader thread acknowledges the broker's SETTINGS and PINGs and applies
    its WINDOW_UPDATEs; with `stall_after_data` it stops reading the socket
    (while still alive) once the first DATA frame arrives.
    """

    def __init__(self, address: str, receive_window: int, stall_after_data: bool = False) -> None:
        host, port = address.rsplit(":", 1)
        self._sock = socket.create_connection((host, int(port)), timeout=10)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._authority = address.encode()
        self._stall_after_data = stall_after_data
        self._released = threading.Event()
        self._state = threading.Condition()
        self._send_lock = threading.Lock()
        self._connection_window = 65535
        self._initial_window = 65535
        self._windows: dict[int, int] = {}
        self._next_stream = 1
        self.ended: set[int] = set()
        self.closed = False
        settings = struct.pack(">HI", 4, receive_window)  # SETTINGS_INITIAL_WINDOW_SIZE
        opening = _PREFACE + _frame(_SETTINGS, 0, 0, settings)
        if receive_window > 65535:
            increment = (receive_window - 65535).to_bytes(4, "big")
            opening += _frame(_WINDOW_UPDATE, 0, 0, increment)
        self._send(opening)
        self._reader = threading.Thread(target=self._read_loop, daemon=True)
        self._reader.start()

    def _send(self, data: bytes) -> None:
        with self._send_lock:
            self._sock.sendall(data)

    def _recv_exact(self, nbytes: int) -> bytes:
        out = bytearray()
        while len(out) < nbytes:
            chunk = self._sock.recv(nbytes - len(out))
            if not chunk:
                raise EOFError
            out += chunk
        return bytes(out)

    def _read_loop(self) -> None:
        self._sock.settimeout(None)
        with contextlib.suppress(OSError, EOFError):
            while True:
                head = self._recv_exact(9)
                kind, flags = head[3], head[4]
                stream = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
                payload = self._recv_exact(int.from_bytes(head[:3], "big"))
                if kind == _DATA and self._stall_after_data:
                    self._released.wait()
                    return
                self._on_frame(kind, flags, stream, payload)
        with self._state:
            self.closed = True
            self._state.notify_all()

    def _on_frame(self, kind: int, flags: int, stream: int, payload: bytes) -> None:
        with self._state:
            if kind == _SETTINGS and not flags & _ACK:
                for at in range(0, len(payload), 6):
                    ident, value = struct.unpack(">HI", payload[at : at + 6])
                    if ident == 4:
                        for open_stream in self._windows:
                            self._windows[open_stream] += value - self._initial_window
                        self._initial_window = value
                self._send(_frame(_SETTINGS, _ACK, 0, b""))
            elif kind == _PING and not flags & _ACK:
                self._send(_frame(_PING, _ACK, 0, payload))
            elif kind == _WINDOW_UPDATE:
                increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
                if stream == 0:
                    self._connection_window += increment
                elif stream in self._windows:
                    self._windows[stream] += increment
            elif kind == _RST or (kind == _HEADERS and flags & _END_STREAM):
                self.ended.add(stream)
            self._state.notify_all()

    def open(self, path: str) -> int:
        with self._state:
            stream = self._next_stream
            self._next_stream += 2
            self._windows[stream] = self._initial_window
        block = b"".join(
            _header(name, value)
            for name, value in (
                (b":method", b"POST"),
                (b":scheme", b"http"),
                (b":path", path.encode()),
                (b":authority", self._authority),
                (b"content-type", b"application/grpc"),
                (b"te", b"trailers"),
            )
        )
        self._send(_frame(_HEADERS, _END_HEADERS, stream, block))
        return stream

    def send(self, stream: int, data: bytes, wait_s: float) -> int:
        """Send what flow control allows, waiting up to wait_s for window; the bytes sent."""
        sent = 0
        deadline = time.monotonic() + wait_s
        while sent < len(data):
            with self._state:
                while (
                    room := min(self._connection_window, self._windows[stream], _FRAME_BYTES)
                ) <= 0:
                    left = deadline - time.monotonic()
                    if left <= 0 or self.closed or stream in self.ended:
                        return sent
                    self._state.wait(left)
                chunk = data[sent : sent + room]
                self._connection_window -= len(chunk)
                self._windows[stream] -= len(chunk)
            self._send(_frame(_DATA, 0, stream, chunk))
            sent += len(chunk)
        return sent

    def close(self) -> None:
        self._released.set()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._reader.join(10)


# --- measuring -----------------------------------------------------------


class RssSampler(threading.Thread):
    def __init__(self, broker: BrokerProcess) -> None:
        super().__init__(daemon=True)
        self.broker = broker
        self.peak_bytes = 0
        self.samples = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.05):
            self.peak_bytes = max(self.peak_bytes, self.broker.rss_bytes())
            self.samples += 1


def good_round(client: RawClient, first_id: int) -> tuple[float, float]:
    """Produce GOOD_REQUESTS pipelined requests, then consume them: seconds for each."""
    start_offset = client.end_offsets("good")[0]
    began = time.monotonic()
    requests = (
        request("good", [GOOD_VALUE] * GOOD_RECORDS, request_id=first_id + i)
        for i in range(GOOD_REQUESTS)
    )
    answers = list(client.produce(requests, timeout_s=60))
    produce_s = time.monotonic() - began
    assert len(answers) == GOOD_REQUESTS and not any(a.HasField("error") for a in answers)
    began = time.monotonic()
    stream = ConsumeStream(
        client,
        broker_pb2.Subscribe(
            topic="good",
            offsets={0: start_offset},
            credit=broker_pb2.Credit(messages=1 << 30, bytes=1 << 40),
        ),
        timeout_s=60,
    )
    try:
        assert stream.next().WhichOneof("kind") == "subscribed"
        batches = read_batches(stream, GOOD_REQUESTS * GOOD_RECORDS)
    finally:
        stream.close()
    consume_s = time.monotonic() - began
    assert batches[0].base_offset == start_offset
    return produce_s, consume_s


def best_of(client: RawClient, first_id: int) -> tuple[float, float]:
    rounds = [good_round(client, first_id + r * GOOD_REQUESTS) for r in range(ROUNDS)]
    return min(p for p, _ in rounds), min(c for _, c in rounds)


# --- the hostile clients -------------------------------------------------


def start_non_reading_producers(address: str, deadline: float) -> RawConnection:
    """Streams that pipeline small requests until flow control stops them; nothing is read."""
    connection = RawConnection(address, receive_window=0)
    streams = [connection.open(PRODUCE) for _ in range(NON_READING_PRODUCERS)]
    message = grpc_message(
        request(
            "hostile", [b"p" * 1024], request_id=1, acks=broker_pb2.ACKS_ALL
        ).SerializeToString()
    )
    offsets = dict.fromkeys(streams, 0)
    quiet_passes = 0
    # Until two passes in a row, 50 ms apart, move no byte: every stream is
    # then held by flow control, with the broker no longer reading it.
    while quiet_passes < 2 and time.monotonic() < deadline:
        moved = 0
        for stream in streams:
            sent = connection.send(stream, message[offsets[stream] :], wait_s=0)
            offsets[stream] = (offsets[stream] + sent) % len(message)
            moved += sent
        quiet_passes = 0 if moved else quiet_passes + 1
        time.sleep(0.05)
    return connection


def start_half_sent_requests(address: str, deadline: float) -> list[RawConnection]:
    """Streams that send HALF_SENT_BYTES of a larger request, then stop."""
    connections = [RawConnection(address, receive_window=65535) for _ in range(2)]
    streams = [
        (connections[i % 2], connections[i % 2].open(PRODUCE)) for i in range(HALF_SENT_REQUESTS)
    ]
    data = grpc_message(b"\x0a" + bytes(HALF_SENT_BYTES - 6), HALF_SENT_DECLARED_BYTES)
    sent = [0] * len(streams)
    while min(sent) < len(data) and time.monotonic() < deadline:
        for i, (connection, stream) in enumerate(streams):
            if sent[i] < len(data):
                sent[i] += connection.send(stream, data[sent[i] :], wait_s=0)
        time.sleep(0.005)
    assert min(sent) == len(data), "the broker must accept the start of every request"
    return connections


def start_stalled_consumers(address: str) -> list[RawConnection]:
    """One connection per consumer: huge credit, a huge window, then the socket is never read."""
    subscribe = broker_pb2.ConsumeRequest(
        subscribe=broker_pb2.Subscribe(
            topic="bulk",
            start=broker_pb2.StartPosition(kind=broker_pb2.START_KIND_EARLIEST),
            credit=broker_pb2.Credit(messages=1 << 30, bytes=1 << 40),
        )
    )
    connections = []
    for _ in range(STALLED_CONSUMERS):
        connection = RawConnection(address, receive_window=(1 << 31) - 1, stall_after_data=True)
        stream = connection.open(CONSUME)
        assert connection.send(stream, grpc_message(subscribe.SerializeToString()), wait_s=5)
        connections.append(connection)
    return connections


@pytest.fixture
def bounded_broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    flags = [f"--{name.replace('_', '-')}={value}" for name, value in SETTINGS.items()]
    process = BrokerProcess(tmp_path / "data", "--durability", "async", *flags).start()
    try:
        yield process
    finally:
        process.stop()


def test_hostile_clients_stay_under_the_stated_bound(
    bounded_broker: BrokerProcess, tmp_path: Path
) -> None:
    bound = rss_bound(NodeConfig(data_dir=tmp_path, **SETTINGS))
    address = bounded_broker.address
    with RawClient(address) as client:
        client.create_topic("good")
        client.create_topic("hostile")
        client.create_topic("bulk")
        value = b"b" * (64 * KiB)
        bulk = (request("bulk", [value] * 16, request_id=i) for i in range(BULK_BYTES // MiB))
        assert not any(r.HasField("error") for r in client.produce(bulk))

        idle = best_of(client, first_id=0)
        sampler = RssSampler(bounded_broker)
        sampler.start()
        hostile: list[RawConnection] = []
        try:
            deadline = time.monotonic() + ATTACK_SETUP_S
            hostile.extend(start_stalled_consumers(address))
            hostile.append(start_non_reading_producers(address, deadline))
            hostile.extend(start_half_sent_requests(address, deadline))
            attacked = best_of(client, first_id=ROUNDS * GOOD_REQUESTS)
            with grpc.insecure_channel(address) as channel:
                health = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=10
                )
            assert health.status == health_pb2.HealthCheckResponse.SERVING
        finally:
            sampler.done.set()
            sampler.join()
            for connection in hostile:
                connection.close()

    print(
        f"peak RSS {sampler.peak_bytes / MiB:.0f} MiB over {sampler.samples} samples;"
        f" stated bound {bound.total_bytes / MiB:.0f} MiB ({bound});"
        f" idle produce/consume {idle[0]:.3f}/{idle[1]:.3f} s,"
        f" under attack {attacked[0]:.3f}/{attacked[1]:.3f} s"
    )
    assert sampler.samples > 0
    assert sampler.peak_bytes < bound.total_bytes
    assert attacked[0] < 2 * idle[0], "produce throughput fell by more than half"
    assert attacked[1] < 2 * idle[1], "consume throughput fell by more than half"


# --- the node-wide memory budget ----------------------------------------

# A budget far below what the clients below ask for at once, so that
# producers wait for it and responses shrink; requests and records small
# enough that the config rule (the largest parsed request fits in half the
# budget) holds.
BUDGET_SETTINGS = {
    "inflight_bytes_max": 4 * MiB,
    "request_bytes_max": 1 * MiB,
    "record_bytes_max_limit": 256 * KiB,
    "record_bytes_max_default": 256 * KiB,
    "produce_request_records_max": 1000,
    "consume_response_bytes_max": 512 * KiB,
}
BUDGET_PRODUCERS = 12
BUDGET_REQUESTS = 40  # per producer, pipelined on one stream
BUDGET_RECORDS = 12  # per request: 12 x 16 KiB, about 200 KiB a request
BUDGET_VALUE = b"v" * (16 * KiB)
BUDGET_CONSUMERS = 4
BUDGET_STALLED = 8
_BUDGET_LINE = re.compile(
    r"memory budget at stop: node peak_bytes=(\d+) bytes_max=(\d+) waits=(\d+)"
    r" short_grants=\d+; responses peak_bytes=(\d+) bytes_max=(\d+) waits=\d+"
    r" short_grants=(\d+)"
)


def stalled_consumers(address: str, topic: str, count: int) -> list[RawConnection]:
    """Consumers that grant huge credit and never read past their first DATA frame."""
    subscribe = broker_pb2.ConsumeRequest(
        subscribe=broker_pb2.Subscribe(
            topic=topic,
            start=broker_pb2.StartPosition(kind=broker_pb2.START_KIND_EARLIEST),
            credit=broker_pb2.Credit(messages=1 << 30, bytes=1 << 40),
        )
    )
    connections = []
    for _ in range(count):
        connection = RawConnection(address, receive_window=(1 << 31) - 1, stall_after_data=True)
        stream = connection.open(CONSUME)
        assert connection.send(stream, grpc_message(subscribe.SerializeToString()), wait_s=5)
        connections.append(connection)
    return connections


def produce_all(address: str, producer: int) -> int:
    """One well-behaved producer: pipelines its requests, reads every answer."""
    with RawClient(address) as client:
        requests = (
            request("load", [BUDGET_VALUE] * BUDGET_RECORDS, request_id=producer * 1000 + i)
            for i in range(BUDGET_REQUESTS)
        )
        answers = list(client.produce(requests, timeout_s=90))
    assert len(answers) == BUDGET_REQUESTS
    assert not [a.error for a in answers if a.HasField("error")]
    return len(answers)


def consume_all(address: str, records: int) -> int:
    """One well-behaved consumer: reads `records` records from the start of "load"."""
    with RawClient(address) as client:
        stream = ConsumeStream(
            client,
            broker_pb2.Subscribe(
                topic="load",
                start=broker_pb2.StartPosition(kind=broker_pb2.START_KIND_EARLIEST),
                credit=broker_pb2.Credit(messages=1 << 30, bytes=1 << 40),
            ),
            timeout_s=90,
        )
        try:
            assert stream.next().WhichOneof("kind") == "subscribed"
            batches = read_batches(stream, records)
        finally:
            stream.close()
    assert batches[0].base_offset == 0
    return sum(len(b.records) for b in batches)


def test_budget_peak_stays_under_inflight_bytes_max_and_everyone_completes(
    tmp_path: Path,
) -> None:
    """Producers and consumers together ask for far more than the budget; it holds.

    Twelve producers pipeline about 8 MiB each against a 4 MiB budget (so
    their readers wait for it), eight consumers stall holding responses
    (taking the responses' share), and four well-behaved consumers read
    everything meanwhile on floor-sized responses. Every call completes; at
    stop the node logs its budget's figures, whose peak must not exceed
    inflight_bytes_max.
    """
    flags = [f"--{name.replace('_', '-')}={value}" for name, value in BUDGET_SETTINGS.items()]
    broker = BrokerProcess(tmp_path / "data", *flags).start()
    stalled: list[RawConnection] = []
    try:
        with RawClient(broker.address) as client:
            client.create_topic("load")
            client.create_topic("stalled")
            bulk = (request("stalled", [BUDGET_VALUE] * 60, request_id=i) for i in range(16))
            assert not any(r.HasField("error") for r in client.produce(bulk))
        stalled = stalled_consumers(broker.address, "stalled", BUDGET_STALLED)
        records = BUDGET_PRODUCERS * BUDGET_REQUESTS * BUDGET_RECORDS
        with ThreadPoolExecutor(BUDGET_PRODUCERS + BUDGET_CONSUMERS) as pool:
            consumers = [
                pool.submit(consume_all, broker.address, records) for _ in range(BUDGET_CONSUMERS)
            ]
            producers = [
                pool.submit(produce_all, broker.address, n) for n in range(BUDGET_PRODUCERS)
            ]
            assert sum(f.result(timeout=100) for f in producers) == (
                BUDGET_PRODUCERS * BUDGET_REQUESTS
            )
            assert [f.result(timeout=100) for f in consumers] == [records] * BUDGET_CONSUMERS
    finally:
        for connection in stalled:
            connection.close()
        broker.stop()
    match = _BUDGET_LINE.search(broker.output())
    assert match is not None, "the node logs its budget at stop:\n" + broker.output()
    peak, bytes_max, waits, share_peak, share_max, short_grants = map(int, match.groups())
    print(
        f"budget peak {peak} of {bytes_max} bytes, {waits} waits;"
        f" responses' share peak {share_peak} of {share_max}, {short_grants} short grants"
    )
    assert bytes_max == BUDGET_SETTINGS["inflight_bytes_max"]
    assert peak <= bytes_max and share_peak <= share_max == bytes_max // 2
    # The budget was the limit: producers waited for it and responses shrank.
    assert waits > 0 and short_grants > 0
