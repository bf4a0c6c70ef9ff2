"""Queue mode in the asyncio consumer: its option checks, and settling deliveries.

In queue mode (`CONSUME_MODE_QUEUE`) every record comes with an ack id, and
the application settles each one: `Ack` (done), `Nack` (failed: deliver it
again later, or dead-letter it) or `ExtendDeadline` (more time). Each is a
request with a request id on the Consume stream, answered by an
`AckResult` that lists the ack ids refused.

`Settler` gathers the calls made in one turn of the event loop into one
request per kind (and per nack delay and error, per extension): calls
that arrive while a request is gathered join it, and one task sends it on
the next turn, at most `ACK_IDS_PER_REQUEST_MAX` ids each. Each call waits
for the answer to the requests that carry its ids and raises the typed
error of its first refused id (`UnknownAckIdError`, `NotInFlightError`).

Ack ids are valid on any stream of the group, so a request goes on
whatever stream is current when it is sent: after a reconnect, records the
application took from the old stream are settled on the new one. An `Ack`
whose stream ended before its answer is sent again on the next stream
(acking twice is harmless); a `Nack` or `ExtendDeadline` then raises the
stream's (retriable) error, since the broker gives the records of a closed
stream back to the queue anyway.

Bounds: at most `ACK_IDS_OUTSTANDING_MAX` ids are gathered or waiting for
their answer; a call beyond that waits for room (within the request
timeout), so a loop that settles faster than the broker answers slows down
instead of growing memory.

`ack_nowait()` joins the same requests without waiting for their answer:
no future, no task of its own. Nobody hears its outcome, so refused ids and
failed requests among its ids are logged (a warning with the count and
the first error, at most one per `UNSETTLED_WARNING_INTERVAL_S`: the ids
in between are counted into the next) and their records come back as any
unacked record does. The same bound holds: a call that would take the outstanding
ids over `ACK_IDS_OUTSTANDING_MAX` raises `BufferFullError` and sends none
of its ids. `close()` waits for the requests that carry such ids (each
ends within the request timeout) before it ends the stream.

Cost: an application that acks each record on its own makes one call per
record, so a call that fits one request and finds room costs a future and
nothing else: no timer of its own (the request's sending task has the
request timeout, and every waiter hears when it ends) and no
`asyncio.shield` (each caller waits on its own future, so a caller
cancelled leaves the request and the other callers alone). Timers and
shields cost more than the rest of such a call together (profiled: about
40 of 47 µs of consumer CPU per record). `ack()` hands back that future
itself (`settle_soon`), not a coroutine: awaiting many of them together
(`asyncio.gather`) then needs no task per call.
"""

from __future__ import annotations

import asyncio
import collections.abc
import contextlib
import logging
import time
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from weir.errors import (
    BufferFullError,
    ClosedError,
    WeirError,
    WeirTimeoutError,
    from_error_proto,
)
from weir.types import ConsumedRecord, StartSpec, start_position
from weir.v1 import broker_pb2

if TYPE_CHECKING:
    from weir.aio.consumer import Consumer

# The broker's bounds (proto/weir/v1/broker.proto), checked before any I/O.
ACK_DEADLINE_MS_MIN = 1_000
ACK_DEADLINE_MS_MAX = 600_000
NACK_DELAY_MS_MAX = 86_400_000
NACK_ERROR_BYTES_MAX = 1024
ACK_IDS_PER_REQUEST_MAX = 10_000
# Ack ids gathered or waiting for their `AckResult`, over all requests.
ACK_IDS_OUTSTANDING_MAX = 50_000
# An `Ack` whose stream ended before its answer is sent this many times more.
ACK_RESENDS_MAX = 2

_log = logging.getLogger("weir.consumer")
# At most one warning about unsettled `ack_nowait()` ids per this many
# seconds: an outage fails every request, and each would otherwise log.
UNSETTLED_WARNING_INTERVAL_S = 10.0


def check_queue_options(
    mode: str,
    start: StartSpec,
    ack_deadline_ms: int | None,
    ordered_keys: bool,
    auto_commit: bool | None,
) -> None:
    """Check queue mode's options (and that the others do not use them) before any I/O."""
    if mode != "queue":
        if ack_deadline_ms is not None or ordered_keys:
            raise ValueError("ack_deadline_ms and ordered_keys only apply with mode='queue'")
        return
    if ack_deadline_ms is not None and not (
        ACK_DEADLINE_MS_MIN <= ack_deadline_ms <= ACK_DEADLINE_MS_MAX
    ):
        raise ValueError(
            f"ack_deadline_ms must be between {ACK_DEADLINE_MS_MIN} and {ACK_DEADLINE_MS_MAX}"
        )
    if auto_commit:
        raise ValueError("auto_commit does not apply with mode='queue': ack() each record")
    kind = start_position(start).kind
    if kind not in (broker_pb2.START_KIND_EARLIEST, broker_pb2.START_KIND_LATEST):
        raise ValueError(
            "mode='queue' starts at 'earliest' or 'latest' (where a new queue group begins)"
        )


def check_extension(extension_ms: int) -> None:
    if not ACK_DEADLINE_MS_MIN <= extension_ms <= ACK_DEADLINE_MS_MAX:
        raise ValueError(
            f"extension_ms must be between {ACK_DEADLINE_MS_MIN} and {ACK_DEADLINE_MS_MAX}"
        )


def check_nack(delay_ms: int | None, error: str) -> None:
    if delay_ms is not None and not 0 <= delay_ms <= NACK_DELAY_MS_MAX:
        raise ValueError(f"delay_ms must be between 0 and {NACK_DELAY_MS_MAX}")
    if len(error.encode()) > NACK_ERROR_BYTES_MAX:
        raise ValueError(f"error must be at most {NACK_ERROR_BYTES_MAX} bytes (UTF-8)")


def ack_ids(records: ConsumedRecord | Iterable[ConsumedRecord]) -> list[bytes]:
    """The ack ids of `records` (one record or several); ValueError for a record without one."""
    if isinstance(records, ConsumedRecord):
        records = (records,)
    ids = []
    for record in records:
        if record.ack_id is None:
            raise ValueError(
                f"record {record.partition}/{record.offset} has no ack id: "
                "only records of a queue-mode consumer can be settled"
            )
        ids.append(record.ack_id)
    return ids


@dataclass(frozen=True, slots=True)
class Kind:
    """What a request does with its ids; calls of one kind in a turn share a request."""

    name: str  # "ack", "nack" or "extend"
    delay_ms: int | None = None  # nack
    error: str = ""  # nack
    extension_ms: int = 0  # extend


ACK = Kind("ack")


class SettleFuture(asyncio.Future[None]):
    """What `ack()` returns: a future that is also accepted where a coroutine is.

    `asyncio.gather` takes a future as it is (no task per call, the point of
    returning one), while `asyncio.create_task(consumer.ack(r))`, natural
    when `ack()` was a coroutine, still works: a task drives it like a
    coroutine that awaits the future.
    """

    _awaiter: Generator[Any, None, None] | None = None

    def send(self, value: None) -> Any:
        if self._awaiter is None:
            self._awaiter = self.__await__()
        return self._awaiter.send(value)

    def throw(self, *args: Any) -> Any:
        if self._awaiter is None:
            self._awaiter = self.__await__()
        return self._awaiter.throw(*args)

    def close(self) -> None:
        if self._awaiter is not None:
            self._awaiter.close()


collections.abc.Coroutine.register(SettleFuture)


@dataclass(eq=False)
class _Gathering:
    """One request being gathered, then sent; its answer (or failure) in `done`.

    `waiters` are the callers' own futures, resolved with `done` (`_resolve`).
    """

    kind: Kind
    ack_ids: list[bytes] = field(default_factory=list)
    done: asyncio.Future[broker_pb2.AckResult] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    # (future, first index, count): resolved with None, or the first refusal
    # of the caller's own ids.
    waiters: list[tuple[asyncio.Future[None], int, int]] = field(default_factory=list)
    # (first index, count) of the ids of `ack_nowait` calls: nobody waits for them.
    unwaited: list[tuple[int, int]] = field(default_factory=list)


class Settler:
    """Queue mode's `ack()`, `nack()` and `extend()` for one consumer; see the module doc."""

    def __init__(self, consumer: Consumer) -> None:
        self._consumer = consumer
        # Requests still open for more ids, by kind (sent on the next turn).
        self._open: dict[Kind, _Gathering] = {}
        self._next_request_id = 1
        # Ids gathered or waiting for their answer (ACK_IDS_OUTSTANDING_MAX).
        self.outstanding = 0
        self._room = asyncio.Event()
        # The sending tasks, each with its request; cancelled on close.
        self._sending: dict[asyncio.Task[None], _Gathering] = {}
        self._unsettled = _UnsettledLog()

    def settle_soon(self, kind: Kind, ids: list[bytes]) -> SettleFuture:
        """`settle` as a future, the ids gathered now: ids that fit one request
        with room need no coroutine and no task (an `ack()` per record awaited
        together cost a task each); the others go through `settle` in a task."""
        loop = asyncio.get_running_loop()
        if (
            ids
            and len(ids) <= ACK_IDS_PER_REQUEST_MAX
            and (self.outstanding == 0 or self.outstanding + len(ids) <= ACK_IDS_OUTSTANDING_MAX)
        ):
            self.outstanding += len(ids)
            gathering, first = self._gather(kind, ids)
            waiter = SettleFuture(loop=loop)
            gathering.waiters.append((waiter, first, len(ids)))
            return waiter
        settled = SettleFuture(loop=loop)
        task = asyncio.ensure_future(self.settle(kind, ids))
        task.add_done_callback(lambda done: _chain(done, settled))
        return settled

    async def settle(self, kind: Kind, ids: list[bytes]) -> None:
        """Send `ids` under `kind` (joining a request of this turn) and wait for the answer."""
        if not ids:
            return
        if len(ids) <= ACK_IDS_PER_REQUEST_MAX and (
            self.outstanding == 0 or self.outstanding + len(ids) <= ACK_IDS_OUTSTANDING_MAX
        ):
            await self.settle_soon(kind, ids)
            return
        timeout_s = self._consumer._request_timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                parts = []
                for start in range(0, len(ids), ACK_IDS_PER_REQUEST_MAX):
                    chunk = ids[start : start + ACK_IDS_PER_REQUEST_MAX]
                    await self._wait_for_room(len(chunk))
                    parts.append((start, *self._gather(kind, chunk)))
                failures: list[tuple[int, WeirError]] = []
                for start, gathering, first in parts:
                    result = await asyncio.shield(gathering.done)
                    count = min(ACK_IDS_PER_REQUEST_MAX, len(ids) - start)
                    for failure in result.failures:
                        if first <= failure.index < first + count:
                            error = from_error_proto(failure.error)
                            failures.append((start + failure.index - first, error))
        except TimeoutError:
            raise WeirTimeoutError(
                f"no answer to {kind.name} within {timeout_s:.3f}s (it may have been applied)"
            ) from None
        _raise_first(failures)

    def settle_nowait(self, kind: Kind, ids: list[bytes]) -> None:
        """`ids` join this turn's request of `kind`; nobody waits for the answer (module doc)."""
        if not ids:
            return
        asyncio.get_running_loop()  # RuntimeError off the loop, before anything changes
        if self.outstanding + len(ids) > ACK_IDS_OUTSTANDING_MAX:
            raise BufferFullError(
                f"{self.outstanding} ack ids are waiting for their answer and this call "
                f"adds {len(ids)}, over the {ACK_IDS_OUTSTANDING_MAX} a consumer keeps; "
                "none was sent: await ack() to wait for room"
            )
        self.outstanding += len(ids)
        for start in range(0, len(ids), ACK_IDS_PER_REQUEST_MAX):
            chunk = (
                ids
                if len(ids) <= ACK_IDS_PER_REQUEST_MAX
                else ids[start : start + ACK_IDS_PER_REQUEST_MAX]
            )
            gathering, first = self._gather(kind, chunk)
            # Calls in a row are one range (a request of 10,000 single-record
            # calls keeps one pair, and finding its refused ids stays linear).
            unwaited = gathering.unwaited
            if unwaited and sum(unwaited[-1]) == first:
                unwaited[-1] = (unwaited[-1][0], unwaited[-1][1] + len(chunk))
            else:
                unwaited.append((first, len(chunk)))

    def _resolved(self, gathering: _Gathering, done: asyncio.Future[broker_pb2.AckResult]) -> None:
        if gathering.unwaited:
            unsettled = _unsettled(gathering, done)
            if unsettled is not None:
                self._unsettled.add(*unsettled)
        _resolve(gathering, done)

    async def flush_unwaited(self) -> None:
        """Wait until every request carrying `ack_nowait` ids has ended (each is time-bounded)."""
        tasks = [task for task, gathering in self._sending.items() if gathering.unwaited]
        if tasks:
            await asyncio.wait(tasks)

    async def _wait_for_room(self, count: int) -> None:
        while self.outstanding and self.outstanding + count > ACK_IDS_OUTSTANDING_MAX:
            self._room.clear()
            await self._room.wait()
        self.outstanding += count

    def _gather(self, kind: Kind, ids: list[bytes]) -> tuple[_Gathering, int]:
        """Add `ids` to the open request of `kind` (a new one if none has room)."""
        gathering = self._open.get(kind)
        if gathering is None or len(gathering.ack_ids) + len(ids) > ACK_IDS_PER_REQUEST_MAX:
            gathering = self._open[kind] = _Gathering(kind)
            task = asyncio.create_task(self._send(gathering), name="weir-consumer-settle")
            self._sending[task] = gathering
            # A callback, not a `finally` in `_send`: a task cancelled before
            # its first step never runs its body.
            task.add_done_callback(lambda done: self._sent(done, gathering))
            # Nobody may be left to look at the outcome (their deadlines passed).
            gathering.done.add_done_callback(_retrieve)
            gathering.done.add_done_callback(lambda done: self._resolved(gathering, done))
        first = len(gathering.ack_ids)
        gathering.ack_ids.extend(ids)
        return gathering, first

    async def _send(self, gathering: _Gathering) -> None:
        """Runs one turn after the request opened: closes it to new ids, sends it, waits."""
        if self._open.get(gathering.kind) is gathering:
            del self._open[gathering.kind]
        consumer = self._consumer
        try:
            async with asyncio.timeout(consumer._request_timeout_s):
                resends = ACK_RESENDS_MAX if gathering.kind.name == "ack" else 0
                while True:
                    try:
                        result = await self._send_once(gathering)
                    except WeirError as exc:
                        if not exc.retriable or resends == 0:
                            raise
                        resends -= 1
                        continue
                    gathering.done.set_result(result)
                    return
        except TimeoutError:
            _fail(gathering, WeirTimeoutError(f"no answer to {gathering.kind.name} in time"))
        except WeirError as exc:
            _fail(gathering, exc)

    def _sent(self, task: asyncio.Task[None], gathering: _Gathering) -> None:
        """A sending task ended: its ids leave the bound; its callers hear at last now."""
        self._sending.pop(task, None)
        if self._open.get(gathering.kind) is gathering:
            del self._open[gathering.kind]  # cancelled before it ran
        failure = None if task.cancelled() else task.exception()
        if failure is not None:
            _fail(gathering, ClosedError(f"the consumer's settling task died: {failure!r}"))
        _fail(gathering, ClosedError("the consumer is closed"))
        self.outstanding -= len(gathering.ack_ids)
        self._room.set()

    async def _send_once(self, gathering: _Gathering) -> broker_pb2.AckResult:
        consumer = self._consumer
        sub = await consumer._live_sub()
        request_id = self._next_request_id
        self._next_request_id += 1
        answer: asyncio.Future[broker_pb2.AckResult] = asyncio.get_running_loop().create_future()
        sub.acks[request_id] = answer
        try:
            await consumer._writer.write(sub, _request(gathering, request_id))
            return await answer
        finally:
            sub.acks.pop(request_id, None)

    async def close(self) -> None:
        """Stop every request still on its way; their callers get `ClosedError`."""
        tasks = list(self._sending)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _request(gathering: _Gathering, request_id: int) -> broker_pb2.ConsumeRequest:
    kind = gathering.kind
    ids = gathering.ack_ids
    if kind.name == "ack":
        return broker_pb2.ConsumeRequest(ack=broker_pb2.Ack(request_id=request_id, ack_ids=ids))
    if kind.name == "nack":
        nack = broker_pb2.Nack(request_id=request_id, ack_ids=ids, error=kind.error)
        if kind.delay_ms is not None:
            nack.delay_ms = kind.delay_ms
        return broker_pb2.ConsumeRequest(nack=nack)
    assert kind.name == "extend", kind
    extend = broker_pb2.ExtendDeadline(
        request_id=request_id, ack_ids=ids, extension_ms=kind.extension_ms
    )
    return broker_pb2.ConsumeRequest(extend_deadline=extend)


def _chain(done: asyncio.Future[None], settled: asyncio.Future[None]) -> None:
    """Hands a settling task's outcome to the future its caller holds."""
    if settled.done():
        if not done.cancelled():
            done.exception()  # retrieved: the caller gave up on it
        return
    if done.cancelled():
        settled.cancel()
    elif (error := done.exception()) is not None:
        settled.set_exception(error)
    else:
        settled.set_result(None)


def _raise_first(failures: list[tuple[int, WeirError]]) -> None:
    """Raises the error of the first refused id (by its index in the call), if any."""
    error = _first_error(failures)
    if error is not None:
        raise error


def _first_error(failures: list[tuple[int, WeirError]]) -> WeirError | None:
    """The error of the first refused id (by its index in the call), with where it was."""
    if not failures:
        return None
    failures.sort(key=lambda f: f[0])
    index, error = failures[0]
    error.metadata["ack_index"] = str(index)
    error.metadata["ack_failures"] = str(len(failures))
    return error


def _resolve(gathering: _Gathering, done: asyncio.Future[broker_pb2.AckResult]) -> None:
    """Hands the request's outcome to every caller still waiting on its own future:
    None, the first refusal of its own ids, or the request's failure."""
    failure = ClosedError("the consumer is closed") if done.cancelled() else done.exception()
    refused = [] if failure is not None else done.result().failures
    for waiter, first, count in gathering.waiters:
        if waiter.done():
            continue  # its caller was cancelled
        if failure is not None:
            waiter.set_exception(failure)
            continue
        error = _first_error(
            [
                (f.index - first, from_error_proto(f.error))
                for f in refused
                if first <= f.index < first + count
            ]
        )
        if error is None:
            waiter.set_result(None)
        else:
            waiter.set_exception(error)
    gathering.waiters.clear()


def _unsettled(
    gathering: _Gathering, done: asyncio.Future[broker_pb2.AckResult]
) -> tuple[int, str] | None:
    """How many of a request's `ack_nowait` ids were not settled, and what to say; None: all were."""
    kind = gathering.kind.name
    failure = ClosedError("the consumer is closed") if done.cancelled() else done.exception()
    if failure is not None:
        count = sum(n for _, n in gathering.unwaited)
        return count, (
            f"{count} ids of {kind}_nowait() calls were not settled ({failure}); "
            "their records will be delivered again"
        )
    refused = [
        refusal
        for refusal in done.result().failures
        if any(first <= refusal.index < first + n for first, n in gathering.unwaited)
    ]
    if not refused:
        return None
    first = from_error_proto(refused[0].error)
    return len(
        refused
    ), f"{len(refused)} ids of {kind}_nowait() calls were refused, the first with {first}"


class _UnsettledLog:
    """Warnings about unsettled `ack_nowait` ids, at most one per interval; the rest counted."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last: float | None = None
        self._held = 0

    def add(self, count: int, message: str) -> None:
        now = self._clock()
        if self._last is not None and now - self._last < UNSETTLED_WARNING_INTERVAL_S:
            self._held += count
            return
        self._last = now
        held, self._held = self._held, 0
        more = f" (and {held} more unsettled since the last warning)" if held else ""
        _log.warning("%s%s", message, more)


def _fail(gathering: _Gathering, error: WeirError) -> None:
    if not gathering.done.done():
        gathering.done.set_exception(error)


def _retrieve(fut: asyncio.Future[broker_pb2.AckResult]) -> None:
    if not fut.cancelled():
        fut.exception()
