"""The idempotent, leader-aware sender against scripted streams.

Sequences per partition kept across retries, Kafka's in-order retry rule,
typed refusals, routing by the metadata cache, per-request timeouts and
answers matched by request id in any order.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.rpc import code_pb2

from tests.unit.sdk.test_sender import Harness, answer, failure, rec, run
from weir.aio.metadata import MetadataCache
from weir.aio.sender import AttemptOutcome
from weir.errors import ProducerFencedError, WeirError
from weir.v1 import admin_pb2, broker_pb2

pytestmark = pytest.mark.timeout(10)


def describe_response(leaders: dict[int, tuple[int, str]]) -> admin_pb2.DescribeTopicResponse:
    return admin_pb2.DescribeTopicResponse(
        topic=admin_pb2.Topic(name="t", partition_count=len(leaders)),
        partitions=[
            admin_pb2.PartitionInfo(partition=p, leader_id=node, leader_address=address)
            for p, (node, address) in sorted(leaders.items())
        ],
    )


class ScriptedMetadata:
    """DescribeTopic answers from a dict the test changes; counts the calls."""

    def __init__(self, leaders: dict[int, tuple[int, str]]) -> None:
        self.leaders = dict(leaders)
        self.calls = 0

    async def describe(self, topic: str) -> admin_pb2.DescribeTopicResponse:
        self.calls += 1
        return describe_response(self.leaders)


async def cache_of(script: ScriptedMetadata) -> MetadataCache:
    cache = MetadataCache(script.describe, max_age_s=60, refresh_interval_s=0.001)
    await cache.get("t")
    return cache


def test_sequences_are_given_at_seal_and_kept_across_a_broken_stream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def body() -> None:
        h = Harness(monkeypatch, up={"a:1": True, "b:2": True}, idempotent=True)
        task = asyncio.create_task(h.sender.run())
        first = [await h.acc.append("t", 0, rec(b"a%d" % i), 1.0) for i in range(3)]
        r1 = await h.next_request(0)
        second = await h.acc.append("t", 0, rec(b"b"), 1.0)
        r2 = await h.next_request(0)
        assert (r1.producer_id, r1.producer_epoch, r1.first_sequence) == (77, 3, 0)
        assert (r2.producer_id, r2.first_sequence) == (77, 3)
        await h.calls[0].responses.put(
            grpc.aio.AioRpcError(
                grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "gone"
            )
        )
        again = [await h.next_request(1), await h.next_request(1)]
        assert [(r.first_sequence, r.batch) for r in again] == [(0, r1.batch), (3, r2.batch)]
        await h.calls[1].responses.put(answer(again[0], 10))
        await h.calls[1].responses.put(answer(again[1], 13))
        assert [(await f).offset for f in first] == [10, 11, 12]
        assert (await second).offset == 13
        outcomes = [(a.first_sequence, a.outcome) for a in h.attempts]
        assert outcomes == [
            (0, AttemptOutcome.UNKNOWN),
            (3, AttemptOutcome.UNKNOWN),
            (0, AttemptOutcome.ACKNOWLEDGED),
            (3, AttemptOutcome.ACKNOWLEDGED),
        ]
        h.acc.close()
        h.sender.stop()
        await task

    run(body)


def test_out_of_order_behind_a_retried_batch_is_resent_after_it_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def body() -> None:
        h = Harness(monkeypatch, idempotent=True, max_inflight_requests=5)
        task = asyncio.create_task(h.sender.run())
        futs = []
        requests = []
        for i in range(3):
            futs.append(await h.acc.append("t", 0, rec(b"%d" % i), 1.0))
            requests.append(await h.next_request(0))
        assert [r.first_sequence for r in requests] == [0, 1, 2]
        call = h.calls[0]
        # The first is not written (a new leader's log replaced it); the
        # others are refused for the gap. Answers of one partition come in order.
        await call.responses.put(
            failure(requests[0], code=code_pb2.UNAVAILABLE, reason="NOT_WRITTEN", retriable=True)
        )
        for r in requests[1:]:
            await call.responses.put(
                failure(
                    r,
                    code=code_pb2.FAILED_PRECONDITION,
                    reason="OUT_OF_ORDER_SEQUENCE",
                    metadata={"expected_sequence": "0"},
                )
            )
        again = [await h.next_request(0) for _ in range(3)]
        assert [r.first_sequence for r in again] == [0, 1, 2]
        for offset, r in enumerate(again):
            await call.responses.put(answer(r, offset))
        assert [(await f).offset for f in futs] == [0, 1, 2]
        # The refusals for the gap cost no attempt of their own.
        assert [f.batch.attempts for f in futs] == [2, 1, 1]
        h.acc.close()
        h.sender.stop()
        await task

    run(body)


def test_a_retry_never_overtakes_a_later_batch_in_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    async def body() -> None:
        h = Harness(monkeypatch, idempotent=True, max_inflight_requests=5)
        task = asyncio.create_task(h.sender.run())
        await h.acc.append("t", 0, rec(b"a"), 1.0)
        r1 = await h.next_request(0)
        await h.acc.append("t", 0, rec(b"b"), 1.0)
        r2 = await h.next_request(0)
        await h.calls[0].responses.put(
            failure(r1, code=code_pb2.UNAVAILABLE, reason="PROPOSAL_DROPPED", retriable=True)
        )
        await asyncio.sleep(0.05)  # well past the backoff
        assert not h.calls[0].written, "the retry waits for the batch after it"
        await h.calls[0].responses.put(answer(r2, 5))  # r1 was not written, so r2 is refused
        retried = await h.next_request(0)
        assert retried.first_sequence == r1.first_sequence
        h.acc.close(ProducerFencedError("end"))
        h.sender.stop()
        await task

    run(body)


def test_unknown_producer_id_with_nothing_pending_numbers_the_partition_from_zero(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def body() -> None:
        h = Harness(monkeypatch, idempotent=True)
        task = asyncio.create_task(h.sender.run())
        first = await h.acc.append("t", 0, rec(b"a"), 1.0)
        r1 = await h.next_request(0)
        await h.calls[0].responses.put(answer(r1, 0))
        await first
        later = await h.acc.append("t", 0, rec(b"b"), 1.0)
        r2 = await h.next_request(0)
        assert r2.first_sequence == 1
        await h.calls[0].responses.put(
            failure(r2, code=code_pb2.FAILED_PRECONDITION, reason="UNKNOWN_PRODUCER_ID")
        )
        r3 = await h.next_request(0)
        assert r3.first_sequence == 0 and r3.batch == r2.batch
        await h.calls[0].responses.put(answer(r3, 1))
        assert (await later).offset == 1
        h.acc.close()
        h.sender.stop()
        await task

    run(body)


def test_producer_fenced_fails_everything_and_refuses_new_records(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def body() -> None:
        h = Harness(monkeypatch, idempotent=True)
        task = asyncio.create_task(h.sender.run())
        fut = await h.acc.append("t", 0, rec(b"a"), 1.0)
        request = await h.next_request(0)
        await h.calls[0].responses.put(
            failure(request, code=code_pb2.FAILED_PRECONDITION, reason="PRODUCER_FENCED")
        )
        with pytest.raises(ProducerFencedError) as raised:
            await fut
        assert not raised.value.retriable
        with pytest.raises(ProducerFencedError):
            await h.acc.append("t", 0, rec(b"b"), 1.0)
        h.sender.stop()
        await task

    run(body)


def test_batches_go_to_each_partitions_leader_and_answers_match_by_request_id(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def body() -> None:
        script = ScriptedMetadata({0: (1, "a:1"), 1: (2, "b:2")})
        h = Harness(
            monkeypatch,
            up={"a:1": True, "b:2": True, "c:3": True},
            idempotent=True,
            metadata=await cache_of(script),
        )
        task = asyncio.create_task(h.sender.run())
        on_a = [await h.acc.append("t", 0, rec(b"a%d" % i), 1.0) for i in range(1)]
        await asyncio.sleep(0.01)
        on_b = await h.acc.append("t", 1, rec(b"b"), 1.0)
        await asyncio.sleep(0.01)
        more_a = await h.acc.append("t", 0, rec(b"a-more"), 1.0)
        await asyncio.sleep(0.01)
        by_address = {c.address: c for c in h.calls}
        assert sorted(by_address) == ["a:1", "b:2"]
        a_requests = list(by_address["a:1"].written)
        (b_request,) = by_address["b:2"].written
        assert [r.partition for r in a_requests] == [0, 0] and b_request.partition == 1
        # Answers of one stream may come back in any order across requests.
        await by_address["a:1"].responses.put(answer(a_requests[1], 21))
        await by_address["a:1"].responses.put(answer(a_requests[0], 20))
        await by_address["b:2"].responses.put(answer(b_request, 7))
        assert (await on_a[0]).offset == 20 and (await more_a).offset == 21
        assert (await on_b).offset == 7
        h.acc.close()
        h.sender.stop()
        await task

    run(body)


def test_no_leader_yet_backs_off_refreshes_and_follows_the_new_leader(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def body() -> None:
        script = ScriptedMetadata({0: (1, "a:1")})
        cache = await cache_of(script)
        h = Harness(monkeypatch, up={"a:1": True, "b:2": True}, idempotent=True, metadata=cache)
        cache.on_change = h.acc.wakeup.set
        task = asyncio.create_task(h.sender.run())
        fut = await h.acc.append("t", 0, rec(b"a"), 1.0)
        request = await h.next_request(0)
        assert h.calls[0].address == "a:1"
        script.leaders = {0: (2, "b:2")}
        await h.calls[0].responses.put(
            failure(
                request,
                code=code_pb2.UNAVAILABLE,
                reason="NOT_LEADER",
                retriable=True,
                metadata={"leader_id": "0", "leader_address": ""},
            )
        )
        retried = await h.next_request(1)
        assert h.calls[1].address == "b:2" and script.calls >= 2
        assert retried.first_sequence == request.first_sequence
        await h.calls[1].responses.put(answer(retried, 4))
        assert (await fut).offset == 4
        h.acc.close()
        h.sender.stop()
        await task
        await cache.close()

    run(body)


def test_a_timeout_retries_only_that_request_while_the_stream_answers_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def body() -> None:
        h = Harness(monkeypatch, idempotent=True, request_timeout_s=0.2, max_inflight_requests=5)
        task = asyncio.create_task(h.sender.run())
        slow = await h.acc.append("t", 0, rec(b"slow"), 1.0)
        r_slow = await h.next_request(0)
        fast = [await h.acc.append("t", 1, rec(b"%d" % i), 1.0) for i in range(1)]
        r_fast = await h.next_request(0)
        await asyncio.sleep(0.1)
        await h.calls[0].responses.put(answer(r_fast, 1))
        assert (await fast[0]).offset == 1
        # Partition 0 never answers: after the timeout its batch alone is
        # sent again, on the same stream, with the same sequence.
        retried = await h.next_request(0)
        assert retried.partition == 0 and retried.first_sequence == r_slow.first_sequence
        assert retried.request_id != r_slow.request_id
        assert len(h.calls) == 1 and not h.calls[0].cancelled
        await h.calls[0].responses.put(answer(r_slow, 99))  # a late answer counts for nothing
        await h.calls[0].responses.put(answer(retried, 3))
        assert (await slow).offset == 3
        h.acc.close()
        h.sender.stop()
        await task

    run(body)


def test_idempotent_requests_carry_the_producer_fields_protobuf_reads() -> None:
    from weir._wire import produce_request, topic_field
    from weir.aio.sender import producer_fields, sequence_field

    raw = (
        produce_request(1, topic_field("t"), 2, b"", 3)
        + producer_fields(1 << 40, 7)
        + sequence_field((1 << 31) - 1)
    )
    parsed = broker_pb2.ProduceRequest.FromString(raw)
    assert (parsed.producer_id, parsed.producer_epoch, parsed.first_sequence) == (
        1 << 40,
        7,
        (1 << 31) - 1,
    )
    expected = broker_pb2.ProduceRequest(
        request_id=1,
        topic="t",
        partition=2,
        acks=broker_pb2.ACKS_ALL,
        batch=parsed.batch,
        producer_id=1 << 40,
        producer_epoch=7,
        first_sequence=(1 << 31) - 1,
    )
    assert raw == expected.SerializeToString()


def test_idempotence_refusals_are_typed_and_not_retriable() -> None:
    from weir.errors import (
        FailedPreconditionError,
        OutOfOrderSequenceError,
        UnknownProducerIdError,
        from_error_proto,
    )
    from weir.v1 import errors_pb2

    for reason, cls in [
        ("OUT_OF_ORDER_SEQUENCE", OutOfOrderSequenceError),
        ("PRODUCER_FENCED", ProducerFencedError),
        ("UNKNOWN_PRODUCER_ID", UnknownProducerIdError),
    ]:
        error = from_error_proto(
            errors_pb2.Error(
                code=code_pb2.FAILED_PRECONDITION, reason=reason, metadata={"topic": "t"}
            )
        )
        assert type(error) is cls and isinstance(error, FailedPreconditionError)
        assert not error.retriable and error.metadata == {"topic": "t"}
        assert cls.__doc__ is not None and ("producer" in cls.__doc__.lower())


def test_a_refresh_does_not_overwrite_a_newer_not_leader_hint() -> None:
    async def body() -> None:
        gate = asyncio.Event()
        script = ScriptedMetadata({0: (1, "a:1")})

        async def slow_describe(topic: str) -> admin_pb2.DescribeTopicResponse:
            response = await script.describe(topic)
            await gate.wait()
            return response

        cache = MetadataCache(script.describe, max_age_s=60, refresh_interval_s=0)
        await cache.get("t")
        cache._describe = slow_describe  # the next fetch answers with the old leader, late
        refresh = asyncio.create_task(cache.get("t", refresh=True))
        await asyncio.sleep(0)
        cache.set_leader("t", 0, 2, "b:2")
        gate.set()
        await refresh
        leader = cache.leader("t", 0)
        assert leader is not None and (leader.leader_id, leader.address) == (2, "b:2")
        assert leader.epoch == 1
        await cache.close()

    run(body)


def test_a_gap_left_by_a_failed_batch_is_closed_from_the_expected_sequence(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def body() -> None:
        h = Harness(monkeypatch, idempotent=True)
        task = asyncio.create_task(h.sender.run())
        lost = await h.acc.append("t", 0, rec(b"a"), 1.0)
        r1 = await h.next_request(0)
        await h.calls[0].responses.put(
            failure(r1, code=code_pb2.RESOURCE_EXHAUSTED, reason="RECORD_TOO_LARGE")
        )
        with pytest.raises(WeirError):
            await lost
        later = await h.acc.append("t", 0, rec(b"b"), 1.0)
        r2 = await h.next_request(0)
        assert r2.first_sequence == 1
        await h.calls[0].responses.put(
            failure(
                r2,
                code=code_pb2.FAILED_PRECONDITION,
                reason="OUT_OF_ORDER_SEQUENCE",
                metadata={"expected_sequence": "0"},
            )
        )
        r3 = await h.next_request(0)
        assert r3.first_sequence == 0 and r3.batch == r2.batch
        await h.calls[0].responses.put(answer(r3, 0))
        assert (await later).offset == 0
        h.acc.close()
        h.sender.stop()
        await task

    run(body)
