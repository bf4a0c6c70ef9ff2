"""InitProducer: producer ids and epochs for idempotent producers.

Ids are never reused. A producer without a name gets a fresh id at epoch 0,
taken from a block of ids this node reserved durably, so most calls cost no
write: in a cluster the block comes from the controller (group 0's
`AllocateProducerIds`), on a single node from the meta store. A block this
node did not finish handing out before a restart is simply skipped.

A named producer (Kafka's transactional.id) keeps its id and gets the next
epoch on every call, durably before the answer (group 0's
`InitNamedProducer`, or a meta store row on a single node): a partition
that has seen the new epoch refuses the old one with PRODUCER_FENCED.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any, Protocol

import grpc

from weir.cluster.controller import (
    AllocateProducerIds,
    InitNamedProducer,
    ProducerIdBlock,
    ProducerIdentity,
)
from weir.cluster.controller.state import (
    FIRST_PRODUCER_ID,
    PRODUCER_EPOCH_MAX,
    PRODUCER_NAMES_MAX,
    check_producer_name,
)
from weir.cluster.storage import MetaStore, StorageError
from weir.server.cluster_meta import ControlProposer
from weir.server.errors import BrokerError, abort, invalid, storage_error
from weir.v1 import broker_pb2

# Ids one block holds: one durable write (or controller round) per this many
# anonymous producers.
PRODUCER_ID_BLOCK = 1_000
META_NAMESPACE = "producer"
META_NEXT_ID_KEY = b"next_id"
META_NAMES_NAMESPACE = "producer_name"
_U64 = struct.Struct(">Q")
_IDENTITY = struct.Struct(">QI")


class ProducerIds(Protocol):
    async def init(self, producer_name: str) -> tuple[int, int]:
        """(producer id, epoch) for a producer; raises BrokerError."""
        ...


class _Blocks:
    """Hands out ids from the current block; refills through `refill()` (one at a time)."""

    def __init__(self) -> None:
        self._next = 0
        self._end = 0
        self._lock = asyncio.Lock()

    async def take(self) -> int:
        async with self._lock:
            if self._next >= self._end:
                self._next, count = await self.refill()
                self._end = self._next + count
            producer_id = self._next
            self._next += 1
            return producer_id

    async def refill(self) -> tuple[int, int]:
        raise NotImplementedError


class LocalProducerIds(_Blocks):
    """A single node's producer ids, kept in its meta store."""

    def __init__(self, meta: MetaStore) -> None:
        super().__init__()
        self._meta = meta
        self._names_lock = asyncio.Lock()

    async def refill(self) -> tuple[int, int]:
        raw = self._meta.get(META_NAMESPACE, META_NEXT_ID_KEY)
        first = FIRST_PRODUCER_ID if raw is None else _U64.unpack(raw)[0]
        # Durable before any id of the block is handed out, so a restart
        # starts after the whole block.
        await self._meta.write(
            [(META_NAMESPACE, META_NEXT_ID_KEY, _U64.pack(first + PRODUCER_ID_BLOCK))]
        )
        return first, PRODUCER_ID_BLOCK

    async def init(self, producer_name: str) -> tuple[int, int]:
        if not producer_name:
            return await self.take(), 0
        problem = check_producer_name(producer_name)
        if problem is not None:
            raise invalid("INVALID_PRODUCER_NAME", problem)
        key = producer_name.encode()
        async with self._names_lock:
            raw = self._meta.get(META_NAMES_NAMESPACE, key)
            if raw is None:
                if len(self._meta.scan(META_NAMES_NAMESPACE)) >= PRODUCER_NAMES_MAX:
                    raise BrokerError(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        "TOO_MANY_PRODUCER_NAMES",
                        f"this node holds {PRODUCER_NAMES_MAX} producer names already",
                    )
                identity = (await self.take(), 0)
            else:
                producer_id, epoch = _IDENTITY.unpack(raw)
                identity = (
                    (await self.take(), 0)
                    if epoch >= PRODUCER_EPOCH_MAX
                    else (producer_id, epoch + 1)
                )
            await self._meta.write([(META_NAMES_NAMESPACE, key, _IDENTITY.pack(*identity))])
            return identity


class ClusterProducerIds(_Blocks):
    """A clustered node's producer ids, from the controller."""

    def __init__(self, proposer: ControlProposer) -> None:
        super().__init__()
        self._proposer = proposer

    async def refill(self) -> tuple[int, int]:
        result = await self._proposer.propose(AllocateProducerIds(PRODUCER_ID_BLOCK))
        assert isinstance(result, ProducerIdBlock), result
        return result.first, result.count

    async def init(self, producer_name: str) -> tuple[int, int]:
        if not producer_name:
            return await self.take(), 0
        problem = check_producer_name(producer_name)
        if problem is not None:
            raise invalid("INVALID_PRODUCER_NAME", problem)
        result = await self._proposer.propose(InitNamedProducer(producer_name))
        assert isinstance(result, ProducerIdentity), result
        return result.producer_id, result.epoch


async def serve_init_producer(
    ids: ProducerIds, request: broker_pb2.InitProducerRequest, context: Any
) -> broker_pb2.InitProducerResponse:
    """The InitProducer method: every failure is a status with an ErrorInfo reason."""
    try:
        producer_id, epoch = await ids.init(request.producer_name)
    except BrokerError as error:
        await abort(context, error)
    except StorageError as exc:
        await abort(context, storage_error(exc, "the producer id"))
    return broker_pb2.InitProducerResponse(producer_id=producer_id, producer_epoch=epoch)


__all__ = [
    "PRODUCER_ID_BLOCK",
    "ClusterProducerIds",
    "LocalProducerIds",
    "ProducerIds",
    "serve_init_producer",
]
