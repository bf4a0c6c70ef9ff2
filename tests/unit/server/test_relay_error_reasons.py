"""A relay whose leader cannot be reached ends with a reason docs/errors.md lists (issue 8).

While a killed partition leader had no successor yet, queue-mode streams on
the surviving nodes ended UNAVAILABLE with ErrorInfo reason `UNAVAILABLE`:
the relay turned gRPC's own status (no ErrorInfo: it came from the
transport, not from a Weir node) into a reason named after the code. It is
now `RELAY_FAILED` when the relay could not open and `RELAY_ENDED` when it
broke; a Weir node's own refusal keeps its reason and metadata.
"""

from __future__ import annotations

import grpc
import grpc.aio
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from tests.support.aio import free_port, run
from weir.server.consume_relay import RelayedLog
from weir.server.errors import BrokerError
from weir.server.queue_relay import Relay, broker_error
from weir.v1 import broker_pb2

pytestmark = pytest.mark.timeout(30)

DOCUMENTED = {"RELAY_FAILED", "RELAY_ENDED"}


def rpc_error(
    code: grpc.StatusCode, info: error_details_pb2.ErrorInfo | None
) -> grpc.aio.AioRpcError:
    trailing = grpc.aio.Metadata()
    if info is not None:
        detail = any_pb2.Any()
        detail.Pack(info)
        status = status_pb2.Status(code=code.value[0], message="refused", details=[detail])
        trailing.add("grpc-status-details-bin", status.SerializeToString())
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, "refused")


def test_a_status_without_error_info_gets_the_relay_reason_and_keeps_its_code() -> None:
    for fallback in sorted(DOCUMENTED):
        error = broker_error(rpc_error(grpc.StatusCode.UNAVAILABLE, None), fallback)
        assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, fallback)
        assert error.retriable
    late = broker_error(rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, None), "RELAY_ENDED")
    assert (late.code, late.reason) == (grpc.StatusCode.DEADLINE_EXCEEDED, "RELAY_ENDED")


def test_a_weir_nodes_refusal_keeps_its_reason_and_metadata() -> None:
    info = error_details_pb2.ErrorInfo(
        reason="NOT_LEADER", domain="weir", metadata={"leader_id": "2", "retriable": "true"}
    )
    error = broker_error(rpc_error(grpc.StatusCode.UNAVAILABLE, info), "RELAY_FAILED")
    assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, "NOT_LEADER")
    assert error.metadata == {"leader_id": "2"}


def test_a_queue_relay_to_a_leader_nobody_answers_for_fails_with_relay_failed() -> None:
    """The killed leader's port: nothing listens there."""

    async def main() -> None:
        relay = Relay(
            2,
            f"127.0.0.1:{free_port()}",
            broker_pb2.Subscribe(topic="t", group="g", mode=broker_pb2.CONSUME_MODE_QUEUE),
            [0],
            lambda relay, response: None,
            4 * 1024 * 1024,
        )
        with pytest.raises(BrokerError) as failed:
            await relay.open()
        assert (failed.value.code, failed.value.reason) == (
            grpc.StatusCode.UNAVAILABLE,
            "RELAY_FAILED",
        )

    run(main)


def test_a_stream_relay_to_replicas_nobody_answers_for_fails_with_relay_failed() -> None:
    async def main() -> None:
        log = RelayedLog("t", 0, [f"127.0.0.1:{free_port()}"], 1024 * 1024)
        try:
            with pytest.raises(BrokerError) as failed:
                await log.open(broker_pb2.StartPosition(), None)
            assert failed.value.reason == "RELAY_FAILED"
        finally:
            log.close()

    run(main)
