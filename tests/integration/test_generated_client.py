"""A client generated from proto/ with plain grpcio-tools produces and consumes.

The client is generated into a temporary folder and run in its own
interpreter, which asserts that it imported nothing of the SDK: this is
what a user of any language starts from.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support.broker_process import BrokerProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

PROTO_DIR = Path(__file__).resolve().parents[2] / "proto"

CLIENT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[1])
    import grpc
    import weir
    from weir.v1 import admin_pb2, admin_pb2_grpc, broker_pb2, broker_pb2_grpc, records_pb2

    assert weir.__file__.startswith(sys.argv[1]), weir.__file__
    address = sys.argv[2]
    with grpc.insecure_channel(address) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        admin.CreateTopic(admin_pb2.CreateTopicRequest(name="gen", partition_count=3))
        broker = broker_pb2_grpc.BrokerServiceStub(channel)

        # No partition given: the broker routes by key (murmur2).
        records = [records_pb2.Record(key=b"k%d" % (i % 4), value=b"v%d" % i) for i in range(30)]
        request = broker_pb2.ProduceRequest(
            request_id=1, topic="gen", batch=records_pb2.RecordBatch(records=records)
        )
        (response,) = list(broker.Produce(iter([request]), timeout=30))
        assert not response.HasField("error"), response.error
        placed = {}
        for append in response.appends:
            for i, index in enumerate(append.record_indexes):
                placed[index] = (append.partition, append.base_offset + i)
        assert sorted(placed) == list(range(30))

        def requests():
            yield broker_pb2.ConsumeRequest(
                subscribe=broker_pb2.Subscribe(
                    topic="gen",
                    start=broker_pb2.StartPosition(kind=broker_pb2.START_KIND_EARLIEST),
                    credit=broker_pb2.Credit(messages=1000, bytes=1 << 20),
                )
            )
            done.wait()

        import threading
        done = threading.Event()
        call = broker.Consume(requests(), timeout=30)
        seen = {}
        for message in call:
            if message.WhichOneof("kind") != "batch":
                continue
            batch = message.batch
            for i, record in enumerate(batch.records):
                seen[(batch.partition, batch.base_offset + i)] = record.value
            if len(seen) == 30:
                break
        done.set()
        call.cancel()
        for index, where in placed.items():
            assert seen[where] == b"v%d" % index
    assert not [m for m in sys.modules if m.startswith(("weir.server", "weir.cluster", "weir.aio"))]
    print("generated client ok")
    """
)


def test_client_generated_with_plain_grpcio_tools(broker: BrokerProcess, tmp_path: Path) -> None:
    out = tmp_path / "gen"
    out.mkdir()
    sources = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.glob("weir/v1/*.proto"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTO_DIR}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            *sources,
        ],
        check=True,
        timeout=60,
    )
    (out / "weir" / "__init__.py").write_text("")
    (out / "weir" / "v1" / "__init__.py").write_text("")
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    result = subprocess.run(
        [sys.executable, str(script), str(out), broker.address],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stderr
    assert "generated client ok" in result.stdout
