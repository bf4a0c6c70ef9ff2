"""The blocking producer: `weir.aio.Producer` driven from a background loop thread.

with weir.Producer("127.0.0.1:7070") as producer:
    fut = producer.send("orders", b"payload", key=b"customer-42")
    print(fut.result().offset)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from weir._sync import LoopThread
from weir.aio.producer import Producer as AsyncProducer
from weir.types import RecordMetadata

__all__ = ["Producer"]


class Producer:
    """Blocking twin of `weir.aio.Producer`; takes the same arguments.

    `send()` blocks only while the buffer is full (up to
    `buffer_wait_timeout_ms`) and returns a `concurrent.futures.Future`.
    """

    def __init__(self, bootstrap: str, **options: Any) -> None:
        self._thread = LoopThread("weir-producer")
        try:
            self._producer = self._thread.run(self._make(bootstrap, options))
        except BaseException:
            self._thread.close()
            raise

    @staticmethod
    async def _make(bootstrap: str, options: dict[str, Any]) -> AsyncProducer:
        producer = AsyncProducer(bootstrap, **options)
        await producer.start()
        return producer

    def __enter__(self) -> Producer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def send(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: Mapping[str, bytes] | None = None,
        partition: int | None = None,
        timestamp_ms: int = 0,
    ) -> concurrent.futures.Future[RecordMetadata]:
        """Buffer a record; the future resolves to its `RecordMetadata`."""
        result: concurrent.futures.Future[RecordMetadata] = concurrent.futures.Future()

        async def _send() -> None:
            inner = await self._producer.send(
                topic,
                value,
                key=key,
                headers=headers,
                partition=partition,
                timestamp_ms=timestamp_ms,
            )
            inner.add_done_callback(lambda f: _chain(f, result))

        self._thread.run(_send())
        return result

    def flush(self, timeout_s: float | None = None) -> None:
        """Send everything buffered and wait until all of it is answered."""
        self._thread.run(self._producer.flush(timeout_s))

    def partitions_for(self, topic: str) -> int:
        """The topic's partition count."""
        return self._thread.run(self._producer.partitions_for(topic))

    def close(self, timeout_s: float | None = None) -> None:
        """Flush, stop the sender, close the channel and stop the thread."""
        try:
            self._thread.run(self._producer.close(timeout_s))
        finally:
            self._thread.close()


def _chain(
    source: asyncio.Future[RecordMetadata], target: concurrent.futures.Future[RecordMetadata]
) -> None:
    if source.cancelled():
        target.cancel()
    elif (exc := source.exception()) is not None:
        target.set_exception(exc)
    else:
        target.set_result(source.result())
