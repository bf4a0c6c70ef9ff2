"""Acks, nacks and extensions on a queue stream: applied at once, answered once durable.

A request's ack ids (consume_queue.py reads them) are decoded and applied
in the partitions' states before the next request is read (`apply`); the
`AckResult` waits for the turns that carry them (`answer`), so it says the
acks are replicated. Ids of partitions this node reads through a relay go
to the leader in one relay request per relay.

Acks are the hot path of a work queue (one id per record): they are decoded
in one pass and applied per partition in one call
(`PartitionQueue.ack_many`), not a coroutine and a wake-up per id. Nacks and
extensions, rare and with more to check, go one by one.

Refusals per id (UNKNOWN_ACK_ID, NOT_IN_FLIGHT, NOT_LEADER, INVALID_NACK,
INVALID_EXTENSION) are listed in consume_queue.py's docstring; none changes
anything.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Protocol

from weir.cluster.queue import NotInFlight, Outcome, QueueError, decode_ack_ids
from weir.cluster.queue import UnknownAckId as UnknownAckIdError
from weir.server.consume_requests import Settlement
from weir.server.errors import BrokerError, invalid
from weir.server.queue_dispatch import (
    NACK_DELAY_MS_MAX,
    NACK_ERROR_BYTES_MAX,
    PartitionQueue,
    queue_error,
)
from weir.server.queue_relay import Relay
from weir.v1 import broker_pb2

ACK_DEADLINE_MS_MIN = 1_000
ACK_DEADLINE_MS_MAX = 600_000


class SettleHost(Protocol):
    """What settling needs of the stream (consume_queue._QueueStream)."""

    token: int

    def relay_of(self, partition: int) -> Relay | None: ...

    def live_queue(self, partition: int) -> PartitionQueue | None: ...

    async def queue_of(self, partition: int) -> PartitionQueue: ...

    def clock_ms(self) -> int: ...


@dataclass
class Applied:
    """A request applied here: its refused ids, the turns its settled ids wait
    for (partition -> the turn, their indexes) and the ids relayed (per relay:
    the relay, the ids, their indexes in the request)."""

    failures: list[broker_pb2.AckFailure] = field(default_factory=list)
    turns: dict[int, tuple[asyncio.Future[None], list[int]]] = field(default_factory=dict)
    relayed: dict[int, tuple[Relay, list[bytes], list[int]]] = field(default_factory=dict)

    def fail(self, index: int, error: BrokerError) -> None:
        self.failures.append(broker_pb2.AckFailure(index=index, error=error.to_proto()))

    def relay(self, relay: Relay, raw: bytes, index: int) -> None:
        entry = self.relayed.get(id(relay))
        if entry is None:
            entry = self.relayed[id(relay)] = (relay, [], [])
        entry[1].append(raw)
        entry[2].append(index)

    def wait_turn(self, partition: int, queue: PartitionQueue, indexes: list[int]) -> None:
        turn = self.turns.get(partition)
        if turn is None:
            self.turns[partition] = (queue.next_turn(), indexes)
        else:
            turn[1].extend(indexes)


async def apply(
    host: SettleHost, group: str, partition_count: int, kind: str, body: Settlement
) -> Applied:
    """Applies the request's ids now (module docstring)."""
    applied = Applied()
    refused = _request_refusal(kind, body)
    if refused is not None:
        for index in range(len(body.ack_ids)):
            applied.fail(index, refused)
    elif kind == "ack":
        await _apply_acks(host, group, partition_count, body.ack_ids, applied)
    else:
        now = host.clock_ms()
        for index, raw in enumerate(body.ack_ids):
            error = await _settle_one(
                host, group, partition_count, kind, body, raw, now, index, applied
            )
            if error is not None:
                applied.fail(index, error)
    return applied


async def _apply_acks(
    host: SettleHost, group: str, partition_count: int, ids: Any, applied: Applied
) -> None:
    # Pass 1, no await: decode, refuse, set relayed ids apart, group the rest by partition.
    local: dict[int, tuple[list[int], list[tuple[int, int]]]] = {}
    for index, ack_id in enumerate(decode_ack_ids(group, ids)):
        if isinstance(ack_id, UnknownAckIdError):
            applied.fail(index, queue_error(ack_id))
            continue
        partition = ack_id.partition
        if partition >= partition_count:
            unknown = UnknownAckIdError(f"the topic has no partition {partition}")
            applied.fail(index, queue_error(unknown))
            continue
        relay = host.relay_of(partition)
        if relay is not None:
            applied.relay(relay, ids[index], index)
            continue
        entry = local.get(partition)
        if entry is None:
            entry = local[partition] = ([], [])
        entry[0].append(index)
        entry[1].append((ack_id.offset, ack_id.attempt))
    # Pass 2: the partitions' queues (opening one awaits).
    queues: dict[int, PartitionQueue] = {}
    for partition, (indexes, _) in local.items():
        queue = host.live_queue(partition)
        if queue is None:
            try:
                queue = await host.queue_of(partition)
            except BrokerError as error:
                for index in indexes:
                    applied.fail(index, error)
                continue
        queues[partition] = queue
    # Pass 3, no await: apply per partition.
    for partition, queue in queues.items():
        indexes, acks = local[partition]
        if queue.failure is not None:  # it failed while another one opened
            for index in indexes:
                applied.fail(index, queue.failure)
            continue
        settled = []
        for index, outcome in zip(indexes, queue.ack_many(acks), strict=True):
            if isinstance(outcome, QueueError):
                applied.fail(index, queue_error(outcome))
            else:
                settled.append(index)
        if settled:
            applied.wait_turn(partition, queue, settled)


async def _settle_one(
    host: SettleHost,
    group: str,
    partition_count: int,
    kind: str,
    body: Any,
    raw: bytes,
    now: int,
    index: int,
    applied: Applied,
) -> BrokerError | None:
    """A nack or an extension of one id."""
    ack_id = decode_ack_ids(group, [raw])[0]
    if isinstance(ack_id, UnknownAckIdError):
        return queue_error(ack_id)
    if ack_id.partition >= partition_count:
        return queue_error(UnknownAckIdError(f"the topic has no partition {ack_id.partition}"))
    relay = host.relay_of(ack_id.partition)
    if relay is not None:
        applied.relay(relay, raw, index)
        return None
    queue = host.live_queue(ack_id.partition)
    if queue is None:
        try:
            queue = await host.queue_of(ack_id.partition)
        except BrokerError as error:
            return error
    offset, attempt = ack_id.offset, ack_id.attempt
    outcome: Outcome | QueueError | None
    if kind == "nack":
        delay = body.delay_ms if body.HasField("delay_ms") else None
        outcome = queue.nack(offset, attempt, delay, body.error)
        if outcome in (Outcome.STALE_ATTEMPT, Outcome.ALREADY_ACKED):
            outcome = NotInFlight(f"offset {offset} attempt {attempt} is no longer held")
    else:
        outcome = queue.extend(offset, attempt, host.token, now + body.extension_ms)
        if outcome is Outcome.ALREADY_ACKED:
            outcome = NotInFlight(f"offset {offset} is acked")
    if isinstance(outcome, QueueError):
        return queue_error(outcome)
    if kind == "nack":
        applied.wait_turn(ack_id.partition, queue, [index])
    return None


async def answer(kind: str, body: Settlement, applied: Applied) -> broker_pb2.ConsumeResponse:
    """The request's `AckResult`, once its relayed ids are answered and its turns done."""
    failures = applied.failures
    relayed = list(applied.relayed.values())
    answers = await asyncio.gather(
        *(relay.request(kind, body, ids) for relay, ids, _ in relayed), return_exceptions=True
    )
    for (_, _, indexes), result in zip(relayed, answers, strict=True):
        if isinstance(result, broker_pb2.AckResult):
            failures.extend(
                broker_pb2.AckFailure(index=indexes[f.index], error=f.error)
                for f in result.failures
            )
        elif isinstance(result, BrokerError):
            failures.extend(
                broker_pb2.AckFailure(index=i, error=result.to_proto()) for i in indexes
            )
        else:
            raise result
    for turn, indexes in applied.turns.values():
        try:
            await asyncio.shield(turn)
        except BrokerError as error:
            failures.extend(broker_pb2.AckFailure(index=i, error=error.to_proto()) for i in indexes)
    failures.sort(key=lambda f: f.index)
    return broker_pb2.ConsumeResponse(
        ack=broker_pb2.AckResult(request_id=body.request_id, failures=failures)
    )


def _request_refusal(kind: str, body: Any) -> BrokerError | None:
    """A refusal of every id of the request for one of its own fields."""
    if kind == "nack":
        if body.HasField("delay_ms") and body.delay_ms > NACK_DELAY_MS_MAX:
            return invalid(
                "INVALID_NACK",
                f"a nack's delay_ms is at most {NACK_DELAY_MS_MAX}, not {body.delay_ms}",
                field="delay_ms",
            )
        if len(body.error.encode()) > NACK_ERROR_BYTES_MAX:
            return invalid(
                "INVALID_NACK",
                f"a nack's error is at most {NACK_ERROR_BYTES_MAX} bytes",
                field="error",
            )
    if (
        kind == "extend_deadline"
        and not ACK_DEADLINE_MS_MIN <= body.extension_ms <= ACK_DEADLINE_MS_MAX
    ):
        return invalid(
            "INVALID_EXTENSION",
            f"extension_ms must be within {ACK_DEADLINE_MS_MIN}..{ACK_DEADLINE_MS_MAX}, not"
            f" {body.extension_ms}",
            field="extension_ms",
        )
    return None


__all__ = ["ACK_DEADLINE_MS_MAX", "ACK_DEADLINE_MS_MIN", "Applied", "SettleHost", "answer", "apply"]
