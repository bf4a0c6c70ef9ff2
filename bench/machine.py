"""Machine calibration: what this machine gives every other benchmark (one JSON line).

Sessions run on different machines of the same size, and the broker's
figures move with them: the same commit measured 2,100-2,600 single-record
requests/s on one machine and about 1,000 on another, where a bare gRPC
server also cost three times more CPU per message. These figures come first
in `make bench`, so a change in the others can be told apart from a change
of machine:

- python_loop_ns: one iteration of a plain `for` loop adding integers;
- fdatasync_us: p50 and p99 of a 4 KiB write and `fdatasync` in the
  benchmarks' temporary directory;
- lmdb_sync_commit_us: p50 and p99 of a one-row LMDB write transaction with
  `sync=True` (two flushes: data, then the meta page), as every node's
  writer commits with sync durability;
- grpc_rtt_us: p50 and p99 of one 100 B message there and back on a
  grpc.aio stream between two processes on loopback, one message at a time.

`python -m bench machine` runs only this.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import lmdb

SAMPLES = 300
RTT_SAMPLES = 500
LOOP_ITERATIONS = 2_000_000


def _quantiles_us(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50": round(ordered[len(ordered) // 2] * 1e6, 1),
        "p99": round(ordered[int(len(ordered) * 0.99) - 1] * 1e6, 1),
    }


def python_loop_ns() -> float:
    started = time.perf_counter()
    total = 0
    for i in range(LOOP_ITERATIONS):
        total += i
    return round((time.perf_counter() - started) / LOOP_ITERATIONS * 1e9, 1)


def fdatasync_us(directory: Path) -> dict[str, float]:
    fd = os.open(directory / "sync", os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        block = b"x" * 4096
        samples = []
        for i in range(SAMPLES):
            os.pwrite(fd, block, (i % 16) * 4096)
            started = time.perf_counter()
            os.fdatasync(fd)
            samples.append(time.perf_counter() - started)
    finally:
        os.close(fd)
    return _quantiles_us(samples)


def lmdb_sync_commit_us(directory: Path) -> dict[str, float]:
    env = lmdb.open(str(directory / "lmdb"), map_size=64 * 2**20, sync=True, metasync=True)
    try:
        value = b"v" * 1024
        samples = []
        for i in range(SAMPLES):
            started = time.perf_counter()
            with env.begin(write=True) as txn:
                txn.put(b"%08d" % i, value)
            samples.append(time.perf_counter() - started)
    finally:
        env.close()
    return _quantiles_us(samples)


async def serve_bare(service: str, method: str, answer: bytes | None = None) -> None:
    """A bare grpc.aio server of one stream method that answers every message at once.

    With `answer` (constant bytes) or, without, the message itself. Prints
    its port, then serves until killed; no Weir code runs in it.
    """

    async def stream(_: object, context: grpc.aio.ServicerContext[bytes, bytes]) -> None:
        while True:
            message = await context.read()
            if message is grpc.aio.EOF:
                return
            await context.write(message if answer is None else answer)

    server = grpc.aio.server()
    handler = grpc.stream_stream_rpc_method_handler(stream)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service, {method: handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


async def _round_trips(port: int) -> list[float]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.stream_stream("/Echo/E")()
        message = b"m" * 100
        samples = []
        for _ in range(RTT_SAMPLES + 50):
            started = time.perf_counter()
            await call.write(message)
            await call.read()
            samples.append(time.perf_counter() - started)
        call.cancel()
    return samples[50:]  # the first ones warm the channel up


def grpc_rtt_us() -> dict[str, float]:
    server = subprocess.Popen(
        [sys.executable, __file__, "echo-server"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        samples = asyncio.run(_round_trips(port))
    finally:
        server.terminate()
        server.wait(10)
    return _quantiles_us(samples)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        figures = {
            "bench": "machine",
            "cpus": os.cpu_count(),
            "load_average_1m": round(os.getloadavg()[0], 2),
            "python_loop_ns": python_loop_ns(),
            "fdatasync_us": fdatasync_us(directory),
            "lmdb_sync_commit_us": lmdb_sync_commit_us(directory),
            "grpc_rtt_us": grpc_rtt_us(),
        }
    print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["echo-server"]:
        asyncio.run(serve_bare("Echo", "E"))
    else:
        main()
