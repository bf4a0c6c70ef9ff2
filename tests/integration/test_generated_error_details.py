"""A generated client decodes the ErrorInfo of a failed call from the documented files only.

docs/errors.md tells a client in another language where the `google.rpc`
definitions come from (Weir does not copy them): the `.proto` files that the
`googleapis-common-protos` distribution ships. This test follows that text:
it generates stubs for `proto/weir/v1` and for `google/rpc/status.proto` and
`error_details.proto` from that distribution's folder, and a client in its
own interpreter, importing nothing of the SDK and none of the installed
`google.rpc` modules, reads reason, domain and metadata (with `retriable`)
from the trailer of a call the broker refused.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support.broker_process import BrokerProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

PROTO_DIR = Path(__file__).resolve().parents[2] / "proto"
GOOGLE_RPC_PROTOS = ("google/rpc/status.proto", "google/rpc/error_details.proto")

CLIENT = textwrap.dedent(
    """
    import sys
    out = sys.argv[1]
    sys.path.insert(0, out)
    import grpc
    from google.rpc import error_details_pb2, status_pb2
    from weir.v1 import admin_pb2, admin_pb2_grpc

    for module in (status_pb2, error_details_pb2, admin_pb2):
        assert module.__file__.startswith(out), module.__file__

    def error_info(error):
        trailer = dict(error.trailing_metadata())["grpc-status-details-bin"]
        status = status_pb2.Status.FromString(trailer)
        assert status.code == error.code().value[0], status
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                return info
        raise AssertionError(f"no ErrorInfo in {status}")

    with grpc.insecure_channel(sys.argv[2]) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        try:
            admin.DescribeTopic(admin_pb2.DescribeTopicRequest(name="missing"), timeout=30)
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.NOT_FOUND, error
            info = error_info(error)
        else:
            raise AssertionError("DescribeTopic of a missing topic succeeded")
        assert (info.reason, info.domain) == ("TOPIC_NOT_FOUND", "weir"), info
        assert dict(info.metadata) == {"topic": "missing", "retriable": "false"}, info

        admin.CreateTopic(admin_pb2.CreateTopicRequest(name="taken", partition_count=1))
        try:
            admin.CreateTopic(admin_pb2.CreateTopicRequest(name="taken", partition_count=1))
        except grpc.RpcError as error:
            info = error_info(error)
        else:
            raise AssertionError("a second CreateTopic of the same name succeeded")
        assert (info.reason, info.metadata["retriable"]) == ("TOPIC_EXISTS", "false"), info

    leaked = [m for m in sys.modules if m.startswith(("weir.errors", "weir.aio", "grpc_status"))]
    assert not leaked, leaked
    print("error details ok")
    """
)


def googleapis_proto_root() -> Path:
    """The folder holding google/rpc/*.proto of googleapis-common-protos, as the docs say."""
    return Path(str(importlib.metadata.distribution("googleapis-common-protos").locate_file("")))


def test_generated_client_decodes_error_info_from_the_trailer(
    broker: BrokerProcess, tmp_path: Path
) -> None:
    googleapis = googleapis_proto_root()
    for name in GOOGLE_RPC_PROTOS:
        assert (googleapis / name).is_file(), f"googleapis-common-protos ships no {name}"
    out = tmp_path / "gen"
    out.mkdir()
    sources = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.glob("weir/v1/*.proto"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTO_DIR}",
            f"-I{googleapis}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            *sources,
            *GOOGLE_RPC_PROTOS,
        ],
        check=True,
        timeout=60,
    )
    # Regular packages, so that these generated modules, not the installed
    # ones of the same name, are the ones imported.
    for package in ("weir", "weir/v1", "google/rpc"):
        (out / package / "__init__.py").write_text("")
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    result = subprocess.run(
        [sys.executable, str(script), str(out), broker.address],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stderr
    assert "error details ok" in result.stdout
