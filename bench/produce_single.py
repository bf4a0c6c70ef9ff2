"""Single-record produce requests from a generated client, three nodes (JSON lines on stdout).

What a client generated from the proto in any language does when it
publishes one record per request: plain grpcio (`BrokerServiceStub`, no
SDK), one `ProduceRequest` of one 100 B record per message on one Produce
stream, acks=ALL, without `partition` (the broker routes), to the node that
leads the topic's only partition (replication factor 3, sync durability).
The client runs in its own process, so its CPU is not the broker's; it
shares the machine's cores with the three nodes.

- throughput: `WEIR_BENCH_PRODUCE_SINGLE_RECORDS` (default 30,000)
  requests with at most 1,000 unanswered; records/s committed, and the CPU
  the three broker processes used meanwhile (utime + stime from
  /proc/<pid>/stat) divided by the records. Targets: >= 10,000 records/s,
  <= 60 us of broker CPU per record. Twice: a plain client (one response
  per request), then one that sets `combine_answers` and reads
  `ProduceResponse.more` (several answers per response).
- latency: the same client offering 2,000 records/s for
  `WEIR_BENCH_PRODUCE_SINGLE_LATENCY_S` seconds (default 5) to a fresh
  topic, with a generated Consume stream on the leader (credit window
  1,000); end-to-end p50 and p99 from the request's write to the consumer
  receiving the record (target p99 <= 20 ms), and p50 and p99 of the
  produce answer; plain, then with `combine_answers`.

- grpc_floor: the same throughput client against a bare grpc.aio server
  in its own process that is not Weir: it reads each request as bytes and
  answers it with one constant ProduceResponse, nothing else. Its CPU per
  request is what gRPC in Python costs one node before any broker work,
  the floor under the broker figures above (all three nodes together must
  stay within 60 us per record, and the leader alone reads every request).

`python -m bench produce_single` runs only this.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from weir.v1 import broker_pb2, broker_pb2_grpc, records_pb2

RECORDS = int(os.environ.get("WEIR_BENCH_PRODUCE_SINGLE_RECORDS", "30000"))
LATENCY_S = float(os.environ.get("WEIR_BENCH_PRODUCE_SINGLE_LATENCY_S", "5"))
VALUE_BYTES = 100
WINDOW = 1000
LATENCY_RATE_PER_S = 2000
CONSUME_CREDIT = 1000
CLIENT_TIMEOUT_S = 300


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def _request(i: int, topic: str, value: bytes, combine: bool = False) -> broker_pb2.ProduceRequest:
    return broker_pb2.ProduceRequest(
        request_id=i,
        topic=topic,
        batch=records_pb2.RecordBatch(records=[records_pb2.Record(value=value)]),
        acks=broker_pb2.ACKS_ALL,
        combine_answers=combine,
    )


async def throughput(address: str, topic: str, records: int, combine: bool) -> dict[str, object]:
    """`records` one-record requests, at most WINDOW unanswered."""
    value = os.urandom(VALUE_BYTES)
    async with grpc.aio.insecure_channel(address) as channel:
        call = broker_pb2_grpc.BrokerServiceStub(channel).Produce()
        window = asyncio.Semaphore(WINDOW)

        async def send() -> None:
            for i in range(records):
                await window.acquire()
                await call.write(_request(i, topic, value, combine))
            await call.done_writing()

        started = time.perf_counter()
        sending = asyncio.create_task(send())
        answered = 0
        while answered < records:
            response = await call.read()
            assert response is not grpc.aio.EOF, "the stream ended early"
            for answer in (response, *response.more):
                assert not answer.HasField("error"), answer.error
                answered += 1
                window.release()
        await sending
        elapsed = time.perf_counter() - started
    return {"seconds": elapsed}


async def latency(address: str, topic: str, seconds: float, combine: bool) -> dict[str, object]:
    """LATENCY_RATE_PER_S requests a second for `seconds`; e2e and answer latencies."""
    total = int(LATENCY_RATE_PER_S * seconds)
    sent_at = [0.0] * total
    answer_s: list[float] = []
    e2e_s: list[float] = []
    pad = b"x" * (VALUE_BYTES - 12)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = broker_pb2_grpc.BrokerServiceStub(channel)
        consume = stub.Consume()
        await consume.write(
            broker_pb2.ConsumeRequest(
                subscribe=broker_pb2.Subscribe(
                    topic=topic,
                    start=broker_pb2.StartPosition(kind=broker_pb2.START_KIND_EARLIEST),
                    credit=broker_pb2.Credit(
                        messages=CONSUME_CREDIT, bytes=CONSUME_CREDIT * VALUE_BYTES
                    ),
                )
            )
        )
        first = await consume.read()
        assert first.WhichOneof("kind") == "subscribed", first

        async def receive() -> None:
            while len(e2e_s) < total:
                response = await consume.read()
                assert response is not grpc.aio.EOF, "the consume stream ended early"
                if response.WhichOneof("kind") != "batch":
                    continue
                now = time.perf_counter()
                got = response.batch.records
                for record in got:
                    e2e_s.append(now - sent_at[int(record.value[:12])])
                await consume.write(
                    broker_pb2.ConsumeRequest(
                        credit=broker_pb2.Credit(
                            messages=len(got), bytes=sum(len(r.value) for r in got)
                        )
                    )
                )

        produce = stub.Produce()

        async def answers() -> None:
            while len(answer_s) < total:
                response = await produce.read()
                assert response is not grpc.aio.EOF, "the produce stream ended early"
                now = time.perf_counter()
                for answer in (response, *response.more):
                    assert not answer.HasField("error"), answer.error
                    answer_s.append(now - sent_at[answer.request_id])

        receiving = asyncio.create_task(receive())
        answering = asyncio.create_task(answers())
        interval = 1 / LATENCY_RATE_PER_S
        start = time.perf_counter()
        for i in range(total):
            delay = start + i * interval - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            sent_at[i] = time.perf_counter()
            await produce.write(_request(i, topic, b"%012d" % i + pad, combine))
        await produce.done_writing()
        await asyncio.wait_for(asyncio.gather(receiving, answering), 60)
        consume.cancel()
    return {
        "records": total,
        "e2e_p50_ms": _ms(e2e_s, 0.5),
        "e2e_p99_ms": _ms(e2e_s, 0.99),
        "answer_p50_ms": _ms(answer_s, 0.5),
        "answer_p99_ms": _ms(answer_s, 0.99),
    }


def _ms(samples: list[float], quantile: float) -> float:
    ordered = sorted(samples)
    if quantile == 0.5:
        return round(statistics.median(ordered) * 1000, 2)
    return round(ordered[max(0, int(len(ordered) * quantile) - 1)] * 1000, 2)


def floor_answer() -> bytes:
    """What the floor server answers every request with: a plausible one-record answer."""
    return broker_pb2.ProduceResponse(
        request_id=1,
        appends=[broker_pb2.PartitionAppend(partition=0, base_offset=1, record_count=1)],
    ).SerializeToString()


def grpc_floor() -> None:
    """The throughput client against a bare server (`bench.machine.serve_bare`) in a child process; one JSON line."""
    from bench.cluster import cpu_s

    server = subprocess.Popen(
        [sys.executable, __file__, "floor-server"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        before = cpu_s(server.pid)
        result = run_client("throughput", f"127.0.0.1:{port}", "floor", RECORDS)
        used_s = cpu_s(server.pid) - before
    finally:
        server.terminate()
        server.wait(10)
    seconds = float(str(result["seconds"]))
    emit(
        bench="grpc_floor_single_record_requests",
        server="bare grpc.aio, one answer per request, no broker work",
        requests=RECORDS,
        window=WINDOW,
        requests_per_s=round(RECORDS / seconds),
        server_cpu_us_per_request=round(used_s / RECORDS * 1e6, 1),
    )


def client() -> None:
    """The client process: `produce_single.py client MODE ADDRESS TOPIC N`; one JSON line."""
    mode, address, topic, amount = sys.argv[2:6]
    if mode.startswith("throughput"):
        result = asyncio.run(throughput(address, topic, int(amount), mode.endswith("combined")))
    else:
        result = asyncio.run(latency(address, topic, float(amount), mode.endswith("combined")))
    print(json.dumps(result), flush=True)


def run_client(mode: str, address: str, topic: str, amount: float) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, __file__, "client", mode, address, topic, str(amount)],
        check=True,
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT_S,
    )
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    from bench.cluster import cluster_cpu_s, create_led_topic, describe, wait_ready
    from tests.support.cluster_process import ClusterProcess

    with tempfile.TemporaryDirectory() as tmp:
        cluster = ClusterProcess(Path(tmp), extra_args=("--durability", "sync"))
        cluster.start()
        try:
            wait_ready(cluster)
            for combined in (False, True):
                topic = "single_combined" if combined else "single"
                create_led_topic(cluster, topic, 1)
                leader = describe(cluster, topic).partitions[0].leader_id
                before = cluster_cpu_s(cluster)
                mode = "throughput_combined" if combined else "throughput"
                result = run_client(mode, cluster.address(leader), topic, RECORDS)
                after = cluster_cpu_s(cluster)
                used_s = sum(after.values()) - sum(before.values())
                committed = describe(cluster, topic).partitions[0].end_offset
                assert committed == RECORDS, (committed, RECORDS)
                seconds = float(str(result["seconds"]))
                emit(
                    bench="cluster_produce_single_record_requests",
                    combine_answers=combined,
                    nodes=3,
                    replication_factor=3,
                    acks="all",
                    durability="sync",
                    record_bytes=VALUE_BYTES,
                    window=WINDOW,
                    records=RECORDS,
                    records_per_s=round(RECORDS / seconds),
                    target_records_per_s=10_000,
                    broker_cpu_us_per_record=round(used_s / RECORDS * 1e6, 1),
                    target_broker_cpu_us_per_record=60,
                    broker_cpu_s_per_node={n: round(after[n] - before[n], 2) for n in after},
                )
            for combined in (False, True):
                topic = "latency_combined" if combined else "latency"
                create_led_topic(cluster, topic, 1)
                leader = describe(cluster, topic).partitions[0].leader_id
                mode = "latency_combined" if combined else "latency"
                result = run_client(mode, cluster.address(leader), topic, LATENCY_S)
                emit(
                    bench="cluster_produce_single_record_latency",
                    combine_answers=combined,
                    rate_per_s=LATENCY_RATE_PER_S,
                    consumer_on="leader",
                    target_e2e_p99_ms=20,
                    **result,
                )
        finally:
            cluster.stop()
    grpc_floor()


if __name__ == "__main__":
    if sys.argv[1:2] == ["client"]:
        client()
    elif sys.argv[1:2] == ["floor-server"]:
        from bench.machine import serve_bare

        asyncio.run(serve_bare("weir.v1.BrokerService", "Produce", floor_answer()))
    else:
        main()
